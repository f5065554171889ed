//! `mesh demo [--exec CMD]`: a whole mesh on loopback in a temporary home — a coordinator, a
//! host agent and an enrolled admin device — then `mesh shell` to the host (or CMD, exiting
//! with its status), and everything torn down afterwards, Ctrl-C included. It needs no root:
//! an agent that is not root runs sessions as the invoking user.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_coordinator::home;
use mesh_coordinator::model::InviteFor;
use mesh_coordinator::reflector::{ReflectingSocket, Reflector, serve_check_port};
use mesh_node::control::{Enrollment, connect_from_home, directory, enroll};
use mesh_node::endpoint::Endpoint;
use mesh_node::path::dial::TcpConnector;
use mesh_node::session::host::SessionProgram;
use mesh_proto::token::TokenKind;
use mesh_proto::{SecretKey, SystemClock, UnixTime};

use crate::args::Target;
use crate::exit::Failure;
use crate::remote;

/// The demo host's name.
const HOST: &str = "demo-host";
/// How long the host may take to come online.
const HOST_ONLINE: Duration = Duration::from_secs(20);

fn failed(what: &str) -> impl Fn(String) -> Failure + '_ {
    move |e| Failure::Session(format!("demo: {what}: {e}"))
}

/// Runs the demo; returns the exit code of the shell or command.
pub(crate) fn run(exec: Option<String>) -> Result<u8, Failure> {
    let dir = tempfile::Builder::new()
        .prefix("mesh-demo-")
        .tempdir()
        .map_err(|e| failed("cannot create a temporary home")(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed("runtime")(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let result = runtime.block_on(async {
        let user_home = start_mesh(dir.path(), stop_rx).await?;
        eprintln!(
            "mesh demo: coordinator, host {HOST} and your admin device are up on loopback \
             (home {}); {}",
            dir.path().display(),
            if exec.is_some() {
                "running the command"
            } else {
                "opening a shell (exit it to end the demo)"
            }
        );
        // The client builds its own runtime, as `mesh shell` does; give it its own thread.
        let request = remote::Request {
            target: Target {
                host: HOST.into(),
                login: None,
                temp: false,
                direct: None,
                grant: None,
            },
            command: exec,
            force_pty: false,
        };
        tokio::task::spawn_blocking(move || remote::run(&user_home, request))
            .await
            .map_err(|e| failed("client")(e.to_string()))?
    });
    // Stop the agent and coordinator, then drop every task; the agent's session processes see
    // their sockets close and hang their sessions up.
    let _ = stop_tx.send(true);
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(dir);
    result
}

/// Starts the coordinator and the host in `dir`, enrolls the admin device, waits until the host
/// is online, and returns the admin device's home.
async fn start_mesh(
    dir: &Path,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<PathBuf, Failure> {
    let clock = Arc::new(SystemClock);
    let coordinator_home = dir.join("coordinator");
    let host_home = dir.join("host");
    let user_home = dir.join("admin");
    // The coordinator's address must be known before init, since tokens carry it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| failed("no free port")(e.to_string()))?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let admin_token = home::init(&coordinator_home, &addr, clock.clone())
        .await
        .map_err(|e| failed("coordinator init")(e.to_string()))?;
    let (coordinator, key, _) = home::open(&coordinator_home, clock.clone())
        .await
        .map_err(|e| failed("coordinator")(e.to_string()))?;
    let socket = mesh_node::udp::UdpSocket::bind(([127, 0, 0, 1], port).into())
        .map_err(|e| failed("coordinator socket")(e.to_string()))?;
    // NAT checks, as `mesh coordinator serve` answers them (on loopback: no NAT). The check
    // port may be taken; the demo then goes on without, as the coordinator would.
    let reflector = Reflector::new(key.clone(), clock.clone());
    let check = ([127, 0, 0, 1], mesh_proto::nat::check_port(port)).into();
    if let Ok(check) = mesh_node::udp::UdpSocket::bind(check) {
        tokio::spawn(serve_check_port(
            Arc::new(check),
            reflector.clone(),
            stopped(stop.clone()),
        ));
    }
    let endpoint = Endpoint::with_options(
        key,
        ReflectingSocket::new(Arc::new(socket), reflector),
        mesh_coordinator::server::COORDINATOR_ALPNS,
        mesh_coordinator::server::endpoint_options(),
    )
    .map_err(|e| failed("coordinator endpoint")(e.to_string()))?;
    let (host_invite, _) = {
        let what = InviteFor::Host {
            name: HOST.into(),
            labels: [("purpose".to_owned(), "demo".to_owned())].into(),
        };
        let (_, token, _) = coordinator
            .create_invite(what, TokenKind::Host, "mesh demo")
            .await
            .map_err(failed("host invite"))?;
        (token, ())
    };
    tokio::spawn(coordinator.serve(endpoint, stopped(stop.clone())));

    enroll_home(&user_home, &admin_token).await?;
    enroll_home(&host_home, &host_invite).await?;
    std::fs::write(
        host_home.join(mesh_node::agent::CONFIG_FILE),
        "listen = \"127.0.0.1:0\"\n",
    )
    .map_err(|e| failed("host config")(e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| failed("mesh binary")(e.to_string()))?;
    let program = SessionProgram {
        program: exe,
        args: vec!["session-process".into()],
    };
    let agent_home = host_home.clone();
    tokio::spawn(async move {
        if let Err(e) = mesh_node::agent::run(&agent_home, program, clock, stopped(stop)).await {
            eprintln!("mesh demo: the host agent stopped: {e}");
        }
    });
    wait_until_online(&user_home).await?;
    Ok(user_home)
}

async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Creates a key in `home` and enrolls it with `token`.
async fn enroll_home(home: &Path, token: &str) -> Result<(), Failure> {
    std::fs::create_dir_all(home).map_err(|e| failed("home")(e.to_string()))?;
    let key = SecretKey::generate().map_err(|e| failed("key")(e.to_string()))?;
    mesh_node::keyfile::write_secret_key(&home.join(mesh_node::agent::KEY_FILE), &key)
        .map_err(|e| failed("key")(e.to_string()))?;
    let socket = mesh_node::udp::UdpSocket::bind(([127, 0, 0, 1], 0).into())
        .map_err(|e| failed("socket")(e.to_string()))?;
    let endpoint =
        Endpoint::new(key, Arc::new(socket), &[]).map_err(|e| failed("endpoint")(e.to_string()))?;
    let now = UnixTime::from_system_time(SystemTime::now());
    let enrollment: Enrollment = enroll(&endpoint, &TcpConnector, token, None, now)
        .await
        .map_err(|e| failed("enroll")(e.to_string()))?;
    enrollment
        .save(home)
        .map_err(|e| failed("enroll")(e.to_string()))?;
    endpoint.close_and_flush(Duration::from_millis(100)).await;
    Ok(())
}

/// Polls the directory until the demo host is online.
async fn wait_until_online(user_home: &Path) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + HOST_ONLINE;
    let link = connect_from_home(user_home)
        .await
        .map_err(|e| failed("connect")(e.to_string()))?;
    loop {
        let hosts = directory(&link.conn)
            .await
            .map_err(|e| failed("directory")(e.to_string()))?;
        if hosts.iter().any(|h| h.name == HOST && h.online) {
            link.conn.quic().close(0u32.into(), b"ready");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::Session(format!(
                "demo: the host did not come online within {HOST_ONLINE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
