//! A whole mesh on loopback for end-to-end tests: a coordinator (`mesh coordinator init` and
//! `serve`, restartable on the same address), its first admin's device, and helpers to run
//! `mesh` from any home. Every process is stopped when its handle is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tempfile::TempDir;

use crate::mesh_bin;

/// `mesh --home HOME ARGS...` with a clean environment and closed stdin, not yet run.
pub fn mesh_in(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(mesh_bin());
    command
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("MESH_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs `mesh --home HOME ARGS...` to completion.
pub fn run_in(home: &Path, args: &[&str]) -> Output {
    mesh_in(home, args).output().expect("run mesh")
}

/// Runs `mesh --home HOME ARGS...` with `input` on stdin.
pub fn run_with_stdin(home: &Path, args: &[&str], input: &str) -> Output {
    let mut child = mesh_in(home, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for mesh")
}

/// Text of an output stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running daemon (`mesh ... serve` or `node run`) whose stderr is collected; SIGKILLed when
/// dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Spawns `command` and waits until its stderr has a line containing `ready`. It logs at
    /// `RUST_LOG=info` unless `command` sets a `RUST_LOG` of its own, without terminal colors
    /// (which would split `field=value` in the log).
    pub fn spawn(mut command: Command, ready: &str) -> Self {
        let own_level = command
            .get_envs()
            .any(|(name, value)| name == "RUST_LOG" && value.is_some());
        if !own_level {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = log.clone();
        let marker = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = line.contains(&marker);
                {
                    let mut log = sink.lock().expect("log");
                    log.push_str(&line);
                    log.push('\n');
                }
                // Only once the line is in the log: a caller reads it right after `spawn`.
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
        let daemon = Self { child, log };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("the daemon never said {ready:?}:\n{}", daemon.log());
        }
        daemon
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// The address an agent said it listens on (its latest "listening on ADDR" line).
    pub fn listening_addr(&self) -> String {
        self.log()
            .rsplit("listening on ")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the agent says where it listens")
            .to_owned()
    }

    /// Stops the daemon as a service manager would (SIGTERM) and waits for it to exit, at
    /// most 30 s (then SIGKILL and a panic).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator in its own home on a fixed loopback port, so it can be killed and restarted
/// at the address its tokens carry.
#[derive(Debug)]
pub struct TestCoordinator {
    home: TempDir,
    serve: Option<Daemon>,
}

impl TestCoordinator {
    /// Runs `mesh coordinator init` on a free loopback port and returns the coordinator (not
    /// yet serving) and the first admin's token.
    pub fn init() -> (Self, String) {
        let home = tempfile::Builder::new()
            .prefix("mesh-coord-")
            .tempdir()
            .expect("temp home");
        let port = coordinator_port();
        let addr = format!("127.0.0.1:{port}");
        let out = run_in(
            &home.path().join("c"),
            &["coordinator", "init", "--addr", &addr],
        );
        assert!(out.status.success(), "init: {}", text(&out.stderr));
        let token = text(&out.stdout);
        assert_eq!(
            token.lines().count(),
            1,
            "the token alone on stdout: {token:?}"
        );
        (Self { home, serve: None }, token.trim().to_owned())
    }

    /// The coordinator's home.
    pub fn home(&self) -> PathBuf {
        self.home.path().join("c")
    }

    /// Starts `mesh coordinator serve` and waits until it listens.
    pub fn start(&mut self) {
        let command = mesh_in(&self.home(), &["coordinator", "serve"]);
        self.serve = Some(Daemon::spawn(command, "listening on"));
    }

    /// The address it serves on (once started).
    pub fn addr(&self) -> String {
        self.serve
            .as_ref()
            .map(Daemon::listening_addr)
            .unwrap_or_default()
    }

    /// Kills it (SIGKILL: no goodbye to anyone).
    pub fn kill(&mut self) {
        self.serve = None;
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.serve.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

/// A loopback port a coordinator can serve on: UDP and TCP on it and UDP on the next (its NAT
/// check port) all free now. Taken from below the kernel's ephemeral range (32,768 and up),
/// where other tests' connections take their ports, so a port free now stays free until the
/// coordinator binds it (barring another test picking the same one, which the random start
/// makes unlikely).
fn coordinator_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = hasher.finish();
    for attempt in 0..2000u64 {
        let port = 20_000 + u16::try_from((start + attempt * 7) % 10_000).unwrap_or(0);
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free loopback port for a coordinator in 20000-29999");
}

/// A serving coordinator with its first admin's device enrolled.
#[derive(Debug)]
pub struct Fleet {
    /// The coordinator.
    pub coordinator: TestCoordinator,
    /// Homes of devices and hosts (each identity in its own directory).
    homes: TempDir,
}

impl Fleet {
    /// init → serve → `mesh login` of the first admin (home `admin`).
    pub fn start() -> Self {
        let (mut coordinator, token) = TestCoordinator::init();
        coordinator.start();
        let homes = tempfile::Builder::new()
            .prefix("mesh-fleet-")
            .tempdir()
            .expect("temp homes");
        let fleet = Self { coordinator, homes };
        let out = run_with_stdin(&fleet.home("admin"), &["login", "-"], &token);
        assert!(out.status.success(), "admin login: {}", text(&out.stderr));
        fleet
    }

    /// The home directory of identity `name`.
    pub fn home(&self, name: &str) -> PathBuf {
        self.homes.path().join(name)
    }

    /// `mesh --home <admin> ARGS...`.
    pub fn admin(&self, args: &[&str]) -> Output {
        run_in(&self.home("admin"), args)
    }

    /// Invites and enrolls host `name` (home of the same name, listening on loopback), then
    /// starts its agent.
    pub fn add_host(&self, name: &str) -> Daemon {
        let home = self.enroll_host(name);
        Daemon::spawn(
            mesh_in(&home, &["node", "run"]),
            "connected to the coordinator",
        )
    }

    /// Invites and enrolls host `name` in home `name` (listening on loopback) without starting
    /// its agent; returns the home.
    pub fn enroll_host(&self, name: &str) -> PathBuf {
        let token = self.invite(&["invite", "host", "--name", name]);
        let home = self.home(name);
        std::fs::create_dir_all(&home).expect("host home");
        std::fs::write(home.join("config.toml"), "listen = \"127.0.0.1:0\"\n").expect("config");
        let out = run_with_stdin(&home, &["node", "join", "-"], &token);
        assert!(out.status.success(), "join {name}: {}", text(&out.stderr));
        home
    }

    /// Invites and enrolls user `name` with `role` from home `name`.
    pub fn add_user(&self, name: &str, role: &str) {
        let token = self.invite(&["invite", "user", name, "--role", role]);
        let out = run_with_stdin(&self.home(name), &["login", "-"], &token);
        assert!(out.status.success(), "login {name}: {}", text(&out.stderr));
    }

    /// Runs an invite command as the admin and returns the token it printed.
    pub fn invite(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }
}
