//! `mesh shell` and `mesh exec`: connect to a host, open a session with a grant, and behave
//! like ssh: raw terminal for a PTY, window changes forwarded, `~.` to disconnect, the remote
//! exit code passed through, 255 for mesh's own failures.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mesh_node::control::{Enrollment, follow_relay, request as control_request, session_net};
use mesh_node::grant_cache;
use mesh_node::path::dial::TcpConnector;
use mesh_node::path::net::{NodeNet, RelayContact};
use mesh_node::rendezvous::{connect_checking_nat, keep_direct, offer, punch_toward_host};
use mesh_node::session::client::{
    ClientEvent, SessionInput, SessionOutcome, SessionRequest, open_session,
};
use mesh_node::tasks::AbortOnDrop;
use mesh_proto::UnixTime;
use mesh_proto::grant_file::{grant_from_text, grant_unverified};
use mesh_proto::messages::SESSION_ALPN;
use mesh_proto::messages::control::{ControlMessage, SessionGrantRequest};
use mesh_proto::messages::session::{EnvVar, LoginRequest, PtyRequest};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::args::Target;
use crate::exit::Failure;
use crate::terminal::{RawMode, stdin_is_terminal, window_size};

/// Size of each read from stdin.
const STDIN_CHUNK: usize = 32 * 1024;
/// Stdin chunks read ahead of the network (bounds the client's memory).
const STDIN_CHUNKS_IN_FLIGHT: usize = 4;

/// What the user asked for.
pub(crate) struct Request {
    pub(crate) target: Target,
    /// `None`: an interactive shell.
    pub(crate) command: Option<String>,
    /// `-t`: a PTY even for a command.
    pub(crate) force_pty: bool,
}

/// Runs the session and returns the exit code to end with.
pub(crate) fn run(home: &Path, request: Request) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Session(format!("cannot start the runtime: {e}")))?;
    let code = runtime.block_on(session(home, request));
    // Stdin's reader thread may be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    code
}

async fn session(home: &Path, request: Request) -> Result<u8, Failure> {
    let target = &request.target;
    // `None`: a temporary account the host makes for this session.
    let login = match (&target.login, target.temp) {
        (_, true) => None,
        (Some(login), false) => Some(login.clone()),
        (None, false) => Some(local_user_name()?),
    };
    let fail = |e: mesh_node::Error| Failure::Session(e.to_string());
    let (net, grant, host_key, addrs) = match (target.direct, target.grant.as_ref()) {
        (direct, Some(grant_path)) => {
            // A grant file works without the coordinator, so without its relay too.
            let net = session_net(home, None).map_err(fail)?;
            let (grant, host_key) = read_grant(grant_path, net.endpoint.node_id())?;
            let addrs = match direct {
                Some(addr) => vec![addr],
                None => grant_cache::addrs_for(home, host_key),
            };
            if addrs.is_empty() {
                return Err(Failure::Session(format!(
                    "no address is known for the host of {}; pass --direct ADDR",
                    grant_path.display()
                )));
            }
            (net, grant, host_key, addrs)
        }
        (Some(_), None) => {
            return Err(Failure::Session(
                "--direct ADDR needs --grant FILE; without both, mesh asks the coordinator".into(),
            ));
        }
        (None, None) => {
            by_name(
                home,
                &target.host,
                login.as_deref(),
                request.command.is_some(),
            )
            .await?
        }
    };

    let tty = stdin_is_terminal();
    let want_pty = request.force_pty || (request.command.is_none() && tty);
    if request.command.is_none() && !tty {
        eprintln!("mesh: pseudo-terminal will not be allocated because stdin is not a terminal");
    }
    let pty = want_pty.then(|| PtyRequest {
        term: std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
        size: window_size(),
    });

    let conn = connect(&net, &addrs, host_key, &target.host).await?;
    // A session by name keeps its path direct: should the direct path fail (this device
    // moved, its NAT forgot the mapping), it asks the coordinator for another rendezvous.
    let _keeper = match (&target.grant, Enrollment::load(home)) {
        (None, Ok(Some(enrollment))) => Some(AbortOnDrop(tokio::spawn(keep_direct(
            net.clone(),
            mesh_node::path::dial::tcp(),
            enrollment,
            target.host.clone(),
            host_key,
        )))),
        _ => None,
    };
    let (send, recv) = conn
        .quic()
        .open_bi()
        .await
        .map_err(|e| Failure::Session(format!("{}: {e}", target.host)))?;
    let session_request = SessionRequest {
        grant,
        login: login.map_or(LoginRequest::Temporary, LoginRequest::Named),
        command: request.command.clone(),
        pty,
        env: locale_environment(),
    };
    let session = open_session(send, recv, session_request)
        .await
        .map_err(|e| Failure::Session(format!("{}: {e}", target.host)))?;

    // From here on the terminal is raw (for a PTY on a terminal) until `raw` is dropped.
    let raw = if want_pty && tty {
        Some(RawMode::enable().map_err(|e| Failure::Session(format!("terminal: {e}")))?)
    } else {
        None
    };
    let (events_tx, events_rx) = mpsc::channel(16);
    let input = SessionInput {
        stdin: spawn_stdin_reader(),
        events: events_rx,
        escapes: raw.is_some(),
    };
    if want_pty {
        tokio::spawn(forward_window_changes(events_tx));
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let ended = tokio::select! {
        outcome = session.run(input, &mut stdout, &mut stderr) => Ended::Session(outcome),
        signal = terminating_signal() => Ended::Signal(signal),
    };
    drop(raw);
    match ended {
        Ended::Signal(number) => {
            // Tell the host at once rather than letting it wait out the idle timeout.
            conn.quic().close(0u32.into(), b"client interrupted");
            eprintln!("mesh: interrupted by signal {number}; the session was hung up");
            Ok(128 + number as u8)
        }
        Ended::Session(Ok(outcome)) => {
            conn.quic().close(0u32.into(), b"session over");
            match &outcome {
                SessionOutcome::Exited(_) => {}
                SessionOutcome::Closed(reason) => eprintln!("mesh: {reason}"),
                SessionOutcome::Disconnected => eprintln!("mesh: disconnected"),
                SessionOutcome::Lost => {
                    eprintln!("mesh: connection to {} lost", target.host);
                }
            }
            Ok(outcome.exit_code())
        }
        Ended::Session(Err(e)) => Err(Failure::Session(format!("{}: {e}", target.host))),
    }
}

enum Ended {
    Session(Result<SessionOutcome, mesh_node::Error>),
    Signal(i32),
}

/// Reads a grant file (one grant per line, one per device of the user) and returns the grant
/// for this device's key `me`, with the host key it names. With no grant for this device the
/// first is presented anyway: the host is the one that decides, and its refusal says why.
fn read_grant(
    path: &PathBuf,
    me: mesh_proto::NodeId,
) -> Result<(Vec<u8>, mesh_proto::NodeId), Failure> {
    let bad = |e: String| Failure::Session(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Session(format!("cannot read grant file {}: {e}", path.display())))?;
    let mut first = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let grant = grant_from_text(line).map_err(|e| bad(e.to_string()))?;
        let content = grant_unverified(&grant).map_err(|e| bad(e.to_string()))?;
        if content.client == me {
            return Ok((grant, content.host));
        }
        first.get_or_insert((grant, content.host));
    }
    first.ok_or_else(|| bad("holds no grant".into()))
}

fn local_user_name() -> Result<String, Failure> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .ok_or_else(|| Failure::Session("cannot tell your user name; pass --login USER".into()))
}

/// Asks the coordinator for a grant for `host`; keeps the offline grant that may come with it;
/// when the coordinator cannot be reached, falls back to a kept offline grant and says so.
async fn by_name(
    home: &Path,
    host: &str,
    login: Option<&str>,
    command: bool,
) -> Result<(NodeNet, Vec<u8>, mesh_proto::NodeId, Vec<SocketAddr>), Failure> {
    let fail = |e: mesh_node::Error| Failure::Session(e.to_string());
    let enrollment = Enrollment::load(home).map_err(fail)?.ok_or_else(|| {
        Failure::Session(format!(
            "{} is not enrolled: run `mesh login TOKEN`, or use --direct ADDR --grant FILE",
            home.display()
        ))
    })?;
    // The coordinator's embedded relay carries the session until a direct path is confirmed;
    // its connection comes up while the grant is asked for.
    let net = session_net(
        home,
        Some(RelayContact {
            key: enrollment.coordinator_key,
            addrs: enrollment.coordinator_addrs.clone(),
        }),
    )
    .map_err(fail)?;
    // The NAT check runs beside the connection: its verdict goes with the grant request, so
    // the host knows how to punch toward us.
    let conn = match connect_checking_nat(&net, &TcpConnector, &enrollment).await {
        Ok(conn) => conn,
        Err(unreachable) => {
            let Some(login) = login else {
                return Err(Failure::Session(format!(
                    "cannot reach the coordinator ({unreachable}); a temporary account needs a \
                     fresh grant from it (or an admin's `mesh coordinator grant --temp` file \
                     with --grant FILE --direct ADDR)"
                )));
            };
            let now = UnixTime::from_system_time(std::time::SystemTime::now());
            let Some(kept) = grant_cache::find(home, host, login, now) else {
                return Err(Failure::Session(format!(
                    "cannot reach the coordinator ({unreachable}) and this device holds no \
                     offline grant for {login} on {host}"
                )));
            };
            eprintln!(
                "mesh: coordinator unreachable; offline: using the kept grant for {login} on \
                 {host} (valid until {})",
                humantime::format_rfc3339_seconds(kept.not_after.to_system_time())
            );
            return Ok((net, kept.grant, kept.key, kept.addrs));
        }
    };
    let ask = ControlMessage::GrantRequest(SessionGrantRequest {
        host: host.to_owned(),
        login: login.map(str::to_owned),
        command,
        punch: Some(offer(&net, conn.quic().remote_address())),
    });
    // Which relay the coordinator names, asked beside the grant: the relay connection moves
    // there while the grant comes back.
    let (reply, relay) = tokio::join!(
        control_request(&conn, &ask),
        follow_relay(&conn, &net, &enrollment)
    );
    if let Err(e) = relay {
        tracing::warn!("cannot learn which relay to use: {e}");
    }
    let reply = reply.map_err(fail)?;
    let rtt = conn.quic().rtt();
    conn.quic().close(0u32.into(), b"granted");
    let ControlMessage::Granted(granted) = reply else {
        return Err(Failure::Session(format!("unexpected reply {reply:?}")));
    };
    // The host starts probing us at the time the coordinator set; so do we.
    punch_toward_host(&net.socket, &granted.host, rtt);
    if granted.host.addrs.is_empty() {
        return Err(Failure::Session(format!(
            "{host} has never connected to the coordinator, so its address is unknown"
        )));
    }
    if let (Some(offline), Some(login)) = (&granted.offline_grant, login) {
        // Only a convenience for later: a failure to keep it must not stop this session.
        if let Err(e) = grant_cache::save(
            home,
            host,
            login,
            granted.host.key,
            &granted.host.addrs,
            offline,
        ) {
            tracing::warn!("cannot keep the offline grant: {e}");
        }
    }
    Ok((net, granted.grant, granted.host.key, granted.host.addrs))
}

/// How long a session waits for the relay connection (started with the grant request) before
/// it goes ahead without it.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Connects to the host `host_key` through the path socket: its first packets go through the
/// relay (or, without one, to the likeliest of `addrs`) while probes look for a direct path to
/// any of `addrs`, which the connection moves to once confirmed.
async fn connect(
    net: &NodeNet,
    addrs: &[SocketAddr],
    host_key: mesh_proto::NodeId,
    host: &str,
) -> Result<mesh_node::endpoint::Connection, Failure> {
    let mapped = net.socket.peer_addr(host_key, addrs);
    if net.has_relay() {
        net.socket.wait_for_relay(RELAY_WAIT).await;
    }
    let listed = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match net.endpoint.connect(mapped, host_key, SESSION_ALPN).await {
        Ok(conn) => Ok(conn),
        Err(mesh_node::Error::WrongHostKey {
            expected,
            presented,
        }) => Err(Failure::Session(format!(
            "the host at {listed} is not the host this grant is for (the grant names \
             {expected}; it presented {presented})"
        ))),
        Err(e) => Err(Failure::Session(format!(
            "cannot reach {host} at {listed} (directly or through the relay): {e}"
        ))),
    }
}

/// The locale variables, which the host passes through (as ssh's `SendEnv LANG LC_*`).
fn locale_environment() -> Vec<EnvVar> {
    std::env::vars()
        .filter(|(name, _)| name == "LANG" || name.starts_with("LC_"))
        .map(|(name, value)| EnvVar { name, value })
        .collect()
}

/// Reads stdin on its own thread (a blocking read of a terminal cannot be cancelled), a few
/// chunks ahead at most; the channel closes at EOF.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(STDIN_CHUNKS_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

async fn forward_window_changes(events: mpsc::Sender<ClientEvent>) {
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        if events
            .send(ClientEvent::Resize(window_size()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Completes with the number of the first SIGTERM, SIGHUP or SIGINT (raw mode turns ^C into
/// a byte for the remote, so SIGINT arrives only when there is no PTY).
async fn terminating_signal() -> i32 {
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default actions apply; nothing to wait for here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => SignalKind::terminate().as_raw_value(),
        _ = hup.recv() => SignalKind::hangup().as_raw_value(),
        _ = int.recv() => SignalKind::interrupt().as_raw_value(),
    }
}
