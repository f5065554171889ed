//! Commands that talk to the coordinator or are the coordinator: `coordinator init|serve`,
//! `node join`, `login`, `invite`, `hosts`, `host set`. Tokens and other machine-readable
//! results go alone to stdout; explanations go to stderr.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_coordinator::home::{self, DEFAULT_PORT};
use mesh_coordinator::reflector::{ReflectingSocket, Reflector, serve_check_port};
use mesh_node::control::{ClientLink, EnrolledAs, Enrollment, connect_from_home, enroll, request};
use mesh_node::path::dial::{TcpAcceptor, TcpConnector};
use mesh_proto::messages::control::{
    ContactRequest, ControlMessage, HostSet, InviteCreate, InviteListRequest, InviteRevoke,
    InviteTarget, Label, RoleListRequest, RoleSpec, UserListRequest,
};
use mesh_proto::{SystemClock, UnixTime};
use serde_json::json;

use crate::exit::Failure;

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))
}

pub(crate) fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::Failed(e.to_string())
}

/// `mesh coordinator init [--addr HOST:PORT]`.
pub(crate) fn coordinator_init(home: &Path, addr: Option<String>) -> Result<ExitCode, Failure> {
    let addr = addr.unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
    let token = runtime()?
        .block_on(home::init(home, &addr, Arc::new(SystemClock)))
        .map_err(failed)?;
    eprintln!(
        "mesh: coordinator created in {} (CA key, database); tokens send nodes to {addr}.\n\
         mesh: start it with `mesh coordinator serve`, then enroll your device as the first \
         admin with `mesh login -` and the token below.",
        home.display()
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `mesh coordinator serve [--listen ADDR]`.
pub(crate) fn coordinator_serve(
    home: &Path,
    listen: Option<std::net::SocketAddr>,
) -> Result<ExitCode, Failure> {
    runtime()?.block_on(async {
        let (coordinator, key, addr) = home::open(home, Arc::new(SystemClock))
            .await
            .map_err(failed)?;
        let listen = match listen {
            Some(listen) => listen,
            None => home::default_listen(&addr).map_err(failed)?,
        };
        let socket = mesh_node::udp::UdpSocket::bind(listen).map_err(|e| {
            failed(format!(
                "cannot listen on {listen}: {e} (is another coordinator running? use --listen)"
            ))
        })?;
        // NAT checks: pings answered on this port and on the next (`mesh_proto::nat`).
        let reflector = Reflector::new(key.clone(), Arc::new(SystemClock));
        let check_addr = std::net::SocketAddr::new(
            listen.ip(),
            mesh_proto::nat::check_port(
                mesh_proto::socket::DatagramSocket::local_addr(&socket)
                    .map_or(listen.port(), |a| a.port()),
            ),
        );
        match mesh_node::udp::UdpSocket::bind(check_addr) {
            Ok(check) => {
                tokio::spawn(serve_check_port(
                    Arc::new(check),
                    reflector.clone(),
                    std::future::pending(),
                ));
            }
            Err(e) => tracing::warn!(
                "cannot listen for NAT checks on {check_addr}: {e}; nodes will not learn how \
                 their NATs map, and hole punching through per-destination NATs is off"
            ),
        }
        let socket = ReflectingSocket::new(Arc::new(socket), reflector);
        let endpoint = mesh_node::endpoint::Endpoint::with_options(
            key.clone(),
            socket,
            mesh_coordinator::server::COORDINATOR_ALPNS,
            mesh_node::endpoint::EndpointOptions {
                restart_keys: Some("coordinator"),
                ..mesh_coordinator::server::endpoint_options()
            },
        )
        .map_err(failed)?;
        let local = endpoint.local_addr().map_err(failed)?;
        // The same port over TCP, for sites that let only outbound TCP through: the control
        // protocol and the relay over TLS-over-TCP streams.
        let tcp = tokio::net::TcpListener::bind(local).await.map_err(|e| {
            failed(format!(
                "cannot listen on {local}/tcp: {e} (is another coordinator running? use --listen)"
            ))
        })?;
        tracing::info!(
            "mesh coordinator listening on {local} (UDP and TCP; NAT checks on UDP {}; tokens \
             say {addr})",
            check_addr.port()
        );
        let relay = coordinator.relay().clone();
        let served = coordinator
            .serve_with_streams(
                key,
                endpoint,
                Some(TcpAcceptor(tcp)),
                mesh_coordinator::server::endpoint_options(),
                crate::shutdown_signal(),
            )
            .await;
        // One line with what the embedded relay carried in this run, for operators and for
        // tests that check how much of a session went through it.
        let counters = relay.counters();
        let count = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        tracing::info!(
            packets = count(&counters.forwarded),
            bytes = count(&counters.forwarded_bytes),
            unreachable = count(&counters.unreachable),
            over_limit = count(&counters.over_limit),
            malformed = count(&counters.malformed),
            refused = count(&counters.refused),
            "coordinator stopped; the embedded relay's totals for this run"
        );
        served.map_err(failed)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `mesh coordinator grant --user U --host H --login L|--temp --ttl DUR`: an offline grant
/// file on stdout, one line per device of the user. No login means a temporary account.
pub(crate) fn coordinator_grant(
    home: &Path,
    user: &str,
    host: &str,
    login: Option<&str>,
    ttl: &str,
) -> Result<ExitCode, Failure> {
    let ttl = humantime::parse_duration(ttl)
        .map_err(|e| Failure::Usage(format!("--ttl {ttl:?}: {e} (for example 8h or 2d)")))?;
    let text = runtime()?
        .block_on(home::mint_grant_file(
            home,
            user,
            host,
            login,
            ttl,
            Arc::new(SystemClock),
        ))
        .map_err(failed)?;
    let (as_whom, temp_flag) = match login {
        Some(login) => (login.to_owned(), ""),
        None => ("a temporary account".to_owned(), " --temp"),
    };
    eprintln!(
        "mesh: offline grant for {user} as {as_whom} on {host}, valid for {} ({} device(s)); \
         use it with `mesh shell {host}{temp_flag} --grant FILE --direct ADDR`",
        humantime::format_duration(ttl),
        text.lines().count()
    );
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Reads a token argument, or stdin for `-`.
fn token_text(token: &str) -> Result<String, Failure> {
    if token != "-" {
        return Ok(token.to_owned());
    }
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| failed(format!("cannot read the token from stdin: {e}")))?;
    Ok(text.trim().to_owned())
}

/// What an enrollment command enrolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnrollAs {
    /// `mesh node join`.
    Host,
    /// `mesh login`.
    User,
    /// `mesh relay join`.
    Relay,
}

impl EnrollAs {
    fn command(self) -> &'static str {
        match self {
            Self::Host => "mesh node join",
            Self::User => "mesh login",
            Self::Relay => "mesh relay join",
        }
    }

    fn of(enrolled: &EnrolledAs) -> Self {
        match enrolled {
            EnrolledAs::Host { .. } => Self::Host,
            EnrolledAs::User { .. } => Self::User,
            EnrolledAs::Relay { .. } => Self::Relay,
        }
    }
}

/// `mesh node join`, `mesh login` and `mesh relay join`: enroll this home's key.
pub(crate) fn enroll_home(
    home: &Path,
    token: &str,
    coordinator: Option<String>,
    wanted: EnrollAs,
) -> Result<ExitCode, Failure> {
    let text = token_text(token)?;
    if Enrollment::load(home).map_err(failed)?.is_some() {
        return Err(failed(format!(
            "{} is already enrolled; use another --home for another identity",
            home.display()
        )));
    }
    std::fs::create_dir_all(home).map_err(|e| failed(format!("{}: {e}", home.display())))?;
    let key = mesh_node::keyfile::load_or_create_secret_key(&home.join(mesh_node::agent::KEY_FILE))
        .map_err(failed)?;
    let enrollment = runtime()?.block_on(async {
        let socket = mesh_node::udp::UdpSocket::bind(([0, 0, 0, 0], 0).into()).map_err(failed)?;
        let endpoint =
            mesh_node::endpoint::Endpoint::new(key, Arc::new(socket), &[]).map_err(failed)?;
        let now = UnixTime::from_system_time(SystemTime::now());
        enroll(&endpoint, &TcpConnector, &text, coordinator, now)
            .await
            .map_err(failed)
    })?;
    let got = EnrollAs::of(&enrollment.enrolled_as);
    if got != wanted {
        // The coordinator already enrolled the key; say how to use it rather than hide it.
        eprintln!(
            "mesh: note: this token was for `{}`; enrolled accordingly",
            got.command()
        );
    }
    enrollment.save(home).map_err(failed)?;
    match &enrollment.enrolled_as {
        EnrolledAs::Host { name } => eprintln!(
            "mesh: enrolled as host {name}; start the agent with `mesh --home {} node run`",
            home.display()
        ),
        EnrolledAs::User { name } => {
            eprintln!("mesh: enrolled this device for {name}; try `mesh hosts`");
        }
        EnrolledAs::Relay { name } => eprintln!(
            "mesh: enrolled as relay {name}; start it with `mesh --home {} relay`",
            home.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends one request to the coordinator from this device's home and returns the reply.
pub(crate) fn ask(home: &Path, message: ControlMessage) -> Result<ControlMessage, Failure> {
    with_coordinator(home, async |link| {
        request(&link.conn, &message).await.map_err(failed)
    })
}

/// Runs `f` with a connection to the coordinator from this device's home.
fn with_coordinator<T>(
    home: &Path,
    f: impl AsyncFnOnce(&ClientLink) -> Result<T, Failure>,
) -> Result<T, Failure> {
    runtime()?.block_on(async {
        let link = connect_from_home(home).await.map_err(failed)?;
        let result = f(&link).await;
        link.conn.quic().close(0u32.into(), b"done");
        link.endpoint
            .close_and_flush(std::time::Duration::from_millis(200))
            .await;
        result
    })
}

/// `mesh invite host|user|relay`.
pub(crate) fn invite(home: &Path, target: InviteTarget) -> Result<ExitCode, Failure> {
    let what = match &target {
        InviteTarget::Host { name, .. } => format!("host {name}: on it run `mesh node join -`"),
        InviteTarget::User { name, role } => {
            format!("user {name} ({role}): on their device run `mesh login -`")
        }
        InviteTarget::Relay { name } => format!("relay {name}: on it run `mesh relay join -`"),
    };
    let reply = ask(home, ControlMessage::InviteCreate(InviteCreate { target }))?;
    let ControlMessage::Invited(invited) = reply else {
        return Err(failed(format!("unexpected reply {reply:?}")));
    };
    eprintln!(
        "mesh: invite {} for {what} with this token; valid until {}",
        invited.id,
        rfc3339(invited.expires_at)
    );
    println!("{}", invited.token);
    Ok(ExitCode::SUCCESS)
}

/// Parses `--label k=v` arguments.
pub(crate) fn labels(args: &[String]) -> Result<Vec<Label>, Failure> {
    args.iter()
        .map(|arg| {
            arg.split_once('=')
                .map(|(key, value)| Label {
                    key: key.to_owned(),
                    value: value.to_owned(),
                })
                .ok_or_else(|| Failure::Usage(format!("--label {arg:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// `mesh invite list [--json]`.
pub(crate) fn invite_list(home: &Path, json_out: bool) -> Result<ExitCode, Failure> {
    let reply = ask(home, ControlMessage::InviteListRequest(InviteListRequest))?;
    let ControlMessage::InviteList(list) = reply else {
        return Err(failed(format!("unexpected reply {reply:?}")));
    };
    if json_out {
        let items: Vec<_> = list
            .invites
            .iter()
            .map(|i| {
                let (kind, name, extra) = describe_target(&i.target);
                json!({"id": i.id, "kind": kind, "name": name, "detail": extra,
                       "created_by": i.created_by, "expires_at": rfc3339(i.expires_at)})
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        println!(
            "{:<14} {:<5} {:<20} {:<24} EXPIRES",
            "ID", "KIND", "NAME", "DETAIL"
        );
        for i in &list.invites {
            let (kind, name, extra) = describe_target(&i.target);
            println!(
                "{:<14} {:<5} {:<20} {:<24} {}",
                i.id,
                kind,
                name,
                extra,
                rfc3339(i.expires_at)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_target(target: &InviteTarget) -> (&'static str, String, String) {
    match target {
        InviteTarget::Host { name, labels } => (
            "host",
            name.clone(),
            labels
                .iter()
                .map(|l| format!("{}={}", l.key, l.value))
                .collect::<Vec<_>>()
                .join(","),
        ),
        InviteTarget::User { name, role } => ("user", name.clone(), format!("role={role}")),
        InviteTarget::Relay { name } => ("relay", name.clone(), String::new()),
    }
}

/// `mesh invite revoke ID`.
pub(crate) fn invite_revoke(home: &Path, id: String) -> Result<ExitCode, Failure> {
    done(home, ControlMessage::InviteRevoke(InviteRevoke { id }))
}

/// Sends a request whose answer is `Done`, and prints its message.
fn done(home: &Path, message: ControlMessage) -> Result<ExitCode, Failure> {
    let reply = ask(home, message)?;
    match reply {
        ControlMessage::Done(done) => {
            println!("{}", done.message);
            Ok(ExitCode::SUCCESS)
        }
        other => Err(failed(format!("unexpected reply {other:?}"))),
    }
}

/// `mesh host set HOST key=on|off...`.
pub(crate) fn host_set(
    home: &Path,
    host: String,
    settings: &[String],
) -> Result<ExitCode, Failure> {
    let mut set = HostSet {
        host,
        remote_shell: None,
        temp_users: None,
    };
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("{setting:?}: expected KEY=on|off")))?;
        let on = match value {
            "on" => true,
            "off" => false,
            _ => {
                return Err(Failure::Usage(format!(
                    "{setting:?}: the value must be on or off"
                )));
            }
        };
        match key {
            "remote-shell" => set.remote_shell = Some(on),
            "temp-users" => set.temp_users = Some(on),
            _ => {
                return Err(Failure::Usage(format!(
                    "unknown setting {key:?}: use remote-shell or temp-users"
                )));
            }
        }
    }
    done(home, ControlMessage::HostSet(set))
}

/// `mesh hosts [--json]`.
pub(crate) fn hosts(home: &Path, json_out: bool) -> Result<ExitCode, Failure> {
    let (hosts, paths) = with_coordinator(home, async |link| {
        let hosts = mesh_node::control::directory(&link.conn)
            .await
            .map_err(failed)?;
        // Where each online host is, asked all at once (a host the role does not cover has
        // no path to show and is left out).
        let mut asks = tokio::task::JoinSet::new();
        for h in hosts.iter().filter(|h| h.online) {
            let ask = ControlMessage::ContactRequest(ContactRequest {
                host: h.name.clone(),
                // Only to show the path: no host is asked to punch.
                punch: None,
            });
            let conn = link.conn.clone();
            asks.spawn(async move {
                match request(&conn, &ask).await {
                    Ok(ControlMessage::Contact(contact)) => Some(contact),
                    _ => None,
                }
            });
        }
        let mut contacts = Vec::new();
        while let Some(done) = asks.join_next().await {
            contacts.extend(done.ok().flatten());
        }
        let paths = crate::path::probe_hosts(home, &contacts).await?;
        Ok((hosts, paths))
    })?;
    let path_of =
        |h: &mesh_proto::messages::control::HostEntry| paths.get(&h.name).filter(|_| h.online);
    if json_out {
        let items: Vec<_> = hosts
            .iter()
            .map(|h| {
                let labels: serde_json::Map<_, _> = h
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), json!(l.value)))
                    .collect();
                let path = path_of(h);
                json!({
                    "name": h.name,
                    "node_id": h.key.to_string(),
                    "online": h.online,
                    "last_seen": h.last_seen.map(rfc3339),
                    "path": path.map(|p| p.path),
                    "remote_addr": path.and_then(|p| p.remote_addr).map(|a| a.to_string()),
                    "rtt_ms": path.and_then(|p| p.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    "labels": labels,
                    "remote_shell": h.settings.remote_shell,
                    "temp_users": h.settings.temp_users,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(ExitCode::SUCCESS);
    }
    let onoff = |b: bool| if b { "on" } else { "off" };
    println!(
        "{:<20} {:<7} {:<21} {:<28} {:<12} {:<5} {:<24} NODE",
        "NAME", "ONLINE", "LAST SEEN", "PATH", "REMOTE-SHELL", "TEMP", "LABELS"
    );
    for h in &hosts {
        let labels: Vec<String> = h
            .labels
            .iter()
            .map(|l| format!("{}={}", l.key, l.value))
            .collect();
        let path = path_of(h).map_or_else(
            || "-".to_owned(),
            |p| match p.remote_addr {
                Some(addr) => format!("{} {addr}", p.path),
                None => p.path.to_owned(),
            },
        );
        println!(
            "{:<20} {:<7} {:<21} {:<28} {:<12} {:<5} {:<24} {}",
            h.name,
            if h.online { "yes" } else { "no" },
            h.last_seen.map_or_else(|| "never".to_owned(), rfc3339),
            path,
            onoff(h.settings.remote_shell),
            onoff(h.settings.temp_users),
            labels.join(","),
            h.key.short()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mesh user list [--json]`.
pub(crate) fn user_list(home: &Path, json_out: bool) -> Result<ExitCode, Failure> {
    let reply = ask(home, ControlMessage::UserListRequest(UserListRequest))?;
    let ControlMessage::UserList(list) = reply else {
        return Err(failed(format!("unexpected reply {reply:?}")));
    };
    if json_out {
        let items: Vec<_> = list
            .users
            .iter()
            .map(|u| {
                json!({"name": u.name, "role": u.role, "devices": u.devices,
                       "created_at": rfc3339(u.created_at)})
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        println!("{:<24} {:<16} {:<8} ADDED", "NAME", "ROLE", "DEVICES");
        for u in &list.users {
            println!(
                "{:<24} {:<16} {:<8} {}",
                u.name,
                u.role,
                u.devices,
                rfc3339(u.created_at)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mesh user add|remove|set-role` and `mesh role remove`: requests answered by `Done`.
pub(crate) fn admin_change(home: &Path, message: ControlMessage) -> Result<ExitCode, Failure> {
    done(home, message)
}

/// `mesh role add NAME --permission P... --hosts SEL... --login L...`.
pub(crate) fn role_add(
    home: &Path,
    name: String,
    permissions: Vec<String>,
    hosts: &[String],
    logins: Vec<String>,
) -> Result<ExitCode, Failure> {
    let mut spec = RoleSpec {
        name,
        permissions,
        all_hosts: false,
        host_names: Vec::new(),
        host_labels: Vec::new(),
        logins,
        max_session_secs: mesh_proto::grant::DEFAULT_MAX_SESSION.as_secs(),
    };
    for selector in hosts {
        match selector.split_once('=') {
            _ if selector == "*" || selector == "all" => spec.all_hosts = true,
            Some((key, value)) => spec.host_labels.push(Label {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            None => spec.host_names.push(selector.clone()),
        }
    }
    done(home, ControlMessage::RolePut(spec))
}

/// `mesh role list [--json]`.
pub(crate) fn role_list(home: &Path, json_out: bool) -> Result<ExitCode, Failure> {
    let reply = ask(home, ControlMessage::RoleListRequest(RoleListRequest))?;
    let ControlMessage::RoleList(list) = reply else {
        return Err(failed(format!("unexpected reply {reply:?}")));
    };
    let hosts_of = |r: &RoleSpec| {
        let mut parts = Vec::new();
        if r.all_hosts {
            parts.push("*".to_owned());
        }
        parts.extend(r.host_names.iter().cloned());
        parts.extend(
            r.host_labels
                .iter()
                .map(|l| format!("{}={}", l.key, l.value)),
        );
        parts
    };
    if json_out {
        let items: Vec<_> = list
            .roles
            .iter()
            .map(|r| {
                json!({"name": r.name, "permissions": r.permissions, "hosts": hosts_of(r),
                       "logins": r.logins, "max_session_secs": r.max_session_secs})
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        println!(
            "{:<16} {:<40} {:<20} LOGINS",
            "NAME", "PERMISSIONS", "HOSTS"
        );
        for r in &list.roles {
            println!(
                "{:<16} {:<40} {:<20} {}",
                r.name,
                r.permissions.join(","),
                hosts_of(r).join(","),
                r.logins.join(",")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rfc3339(t: UnixTime) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}
