//! A test CA, host and client homes, grant files, and a running `mesh node run` agent: the
//! fixtures of end-to-end session tests. Everything lives in temporary directories, and the
//! agent is stopped when its handle is dropped, even when the test fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::grant::DEFAULT_MAX_SESSION;
use mesh_proto::grant_file::grant_to_text;
use mesh_proto::{
    CaSigner, Grant, GrantId, GrantKind, NodeId, Permissions, SecretKey, UnixTime, UserId,
};
use tempfile::TempDir;

use crate::mesh_bin;

/// A certificate authority that signs grants, as the coordinator will.
#[derive(Debug)]
pub struct TestCa {
    signer: CaSigner,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA with a random key.
    pub fn new() -> Self {
        Self {
            signer: CaSigner::new(SecretKey::generate().expect("random key")),
        }
    }

    /// The CA's public key, as `trusted_ca_keys` lists it.
    pub fn public_key(&self) -> NodeId {
        self.signer.public_key()
    }

    /// A grant for `client` on `host` as `login` (shell and exec, valid from a minute ago for
    /// `ttl`), ready to be adjusted and [signed](Self::grant_file).
    pub fn grant(&self, client: NodeId, host: NodeId, login: &str, ttl: Duration) -> Grant {
        let now = UnixTime::from_system_time(std::time::SystemTime::now());
        let mut id = [0u8; 16];
        id.copy_from_slice(&SecretKey::generate().expect("random").seed()[..16]);
        Grant {
            id: GrantId::from_bytes(id),
            user_id: UserId(1),
            user_name: "tester".into(),
            client,
            host,
            login: login.into(),
            permissions: Permissions::SHELL.union(Permissions::EXEC),
            temporary: false,
            kind: GrantKind::Online,
            not_before: now.saturating_sub(Duration::from_secs(60)),
            not_after: now.saturating_add(ttl),
            max_session_secs: DEFAULT_MAX_SESSION.as_secs(),
        }
    }

    /// Signs `grant` and writes it as a grant file in `dir`.
    pub fn grant_file(&self, grant: &Grant, dir: &Path) -> PathBuf {
        let signed = self.signer.sign_grant(grant).expect("sign grant");
        let path = dir.join(format!("grant-{}", grant.id));
        std::fs::write(&path, grant_to_text(&signed)).expect("write grant file");
        path
    }
}

/// A home directory (`--home`) with its own key.
#[derive(Debug)]
pub struct Home {
    dir: TempDir,
    key: SecretKey,
}

impl Home {
    /// A new home whose key file is written (0600) already.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mesh-e2e-")
            .tempdir()
            .expect("temp home");
        let key = SecretKey::generate().expect("random key");
        mesh_node::keyfile::write_secret_key(&dir.path().join(mesh_node::agent::KEY_FILE), &key)
            .expect("write key");
        Self { dir, key }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// This identity's public key.
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// Writes `config.toml`.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path().join(mesh_node::agent::CONFIG_FILE), text).expect("config");
    }
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `mesh node run`; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent of `home` (whose config must trust a CA and should listen on
    /// `127.0.0.1:0`) and waits until it listens.
    pub fn start(home: &Home) -> Self {
        let mut command = Command::new(mesh_bin());
        command.arg("--home").arg(home.path()).args(["node", "run"]);
        Self::start_with(command)
    }

    /// Starts `command` and waits until it reports listening, as [`start`](Self::start) does.
    /// `command` is `mesh --home H node run` itself or a wrapper that ends by `exec`ing it (in a
    /// private mount namespace, say): the process it starts is the one stopped on drop, and its
    /// stderr is the agent's log. Its stdio and `MESH_HOME`/`RUST_LOG` are set here.
    pub fn start_with(mut command: Command) -> Self {
        let mut child = command
            .env_remove("MESH_HOME")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mesh node run");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = addr_tx.send(addr);
                }
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut agent = Self {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            log,
        };
        match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => agent.addr = addr,
            Err(_) => panic!("the agent did not start listening:\n{}", agent.log()),
        }
        agent
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host home trusting `ca`, listening on loopback, with `extra` appended to its config.
pub fn host_home(ca: &TestCa, extra: &str) -> Home {
    let home = Home::new();
    home.write_config(&format!(
        "listen = \"127.0.0.1:0\"\ntrusted_ca_keys = [\"{}\"]\n{extra}",
        ca.public_key()
    ));
    home
}

/// The name of the user running the tests.
pub fn current_login() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .expect("current user")
}

/// `mesh --home CLIENT exec --direct ADDR --grant FILE HOST [args] -- command...`, not yet run.
pub fn exec_command(
    client: &Home,
    agent: &Agent,
    grant: &Path,
    extra: &[&str],
    command: &[&str],
) -> Command {
    let mut cmd = Command::new(mesh_bin());
    cmd.arg("--home")
        .arg(client.path())
        .arg("exec")
        .arg("--direct")
        .arg(agent.addr().to_string())
        .arg("--grant")
        .arg(grant)
        .args(extra)
        .arg("edge")
        .arg("--")
        .args(command)
        .env_remove("MESH_HOME");
    cmd
}
