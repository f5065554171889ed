//! A standalone relay (`mesh invite relay`, `mesh relay join`, `mesh relay`) end to end with
//! real processes on loopback: the coordinator names it, the agent and clients move their relay
//! connections there, it follows the allowed keys (closing a revoked device's connection), and
//! when it stops the coordinator names its own relay again. (Relayed sessions through it between
//! real NATs are in `kernel_mesh.rs`; the path choice through it is simulated in netsim.)

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::fleet::{Daemon, Fleet, mesh_in, run_with_stdin, text};
use mesh_tests::hosts::current_login;

/// What the agent and clients log when they move their relay connection.
const MOVED: &str = "the coordinator names another relay";
/// How long anything logged or pushed may take to show.
const WAIT: Duration = Duration::from_secs(15);

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The node id of the key in `home` (a device's, a relay's or the coordinator's `key`).
fn key_in(home: &Path) -> String {
    mesh_node::keyfile::read_secret_key(&home.join("key"))
        .unwrap()
        .node_id()
        .to_string()
}

/// The short form of a node id, as logs show it.
fn short(id: &str) -> String {
    id.parse::<mesh_proto::NodeId>().unwrap().short()
}

/// Polls `done` until it holds, at most [`WAIT`]; panics with `context()` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running standalone relay, its address and its node id.
struct Relay {
    daemon: Daemon,
    addr: String,
    node_id: String,
}

impl Relay {
    fn log(&self) -> String {
        self.daemon.log()
    }
}

/// `mesh invite relay --name NAME` as the admin, `mesh relay join -` in home `NAME`, then
/// `mesh relay --listen 127.0.0.1:0` until it has its first allowed keys. Its relay server logs
/// at debug level, so each peer's connection shows.
fn start_relay(fleet: &Fleet, name: &str) -> Relay {
    let token = fleet.invite(&["invite", "relay", "--name", name]);
    let home = fleet.home(name);
    std::fs::create_dir_all(&home).unwrap();
    let out = run_with_stdin(&home, &["relay", "join", "-"], &token);
    assert!(out.status.success(), "relay join: {}", text(&out.stderr));
    let command = {
        let mut command = mesh_in(&home, &["relay", "--listen", "127.0.0.1:0"]);
        command.env("RUST_LOG", "info,mesh_coordinator::relay=debug");
        command
    };
    let daemon = Daemon::spawn(command, "connected to the coordinator");
    let addr = daemon.listening_addr();
    Relay {
        daemon,
        addr,
        node_id: key_in(&home),
    }
}

/// `(keys, closed)` of each "allowed keys updated keys=K closed=C" line in a relay's log.
fn allowed_updates(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("allowed keys updated"))
        .map(|l| (field(l, "keys"), field(l, "closed")))
        .collect()
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let at = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&at))
        .unwrap_or_else(|| panic!("no {at} in {line:?}"))
        .parse()
        .unwrap()
}

/// A role that may run commands as the test's own account on every host.
fn add_ops_role(fleet: &Fleet) {
    let out = fleet.admin(&[
        "role",
        "add",
        "ops",
        "--permission",
        "exec",
        "--hosts",
        "*",
        "--login",
        &current_login(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `mesh exec edge-01` as `user` running a command that stays up; returns once it runs.
fn open_session(fleet: &Fleet, user: &str) -> Child {
    let mut session = mesh_in(
        &fleet.home(user),
        &[
            "exec",
            "edge-01",
            "--login",
            &current_login(),
            "--",
            "echo ready; exec sleep 300",
        ],
    )
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(session.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    session
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Kills the child when dropped (the test failed before it ended).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        // SIGKILL ends it even while it is stopped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_standalone_relay_is_named_by_the_coordinator_followed_by_host_and_clients_and_drops_a_revoked_device()
 {
    let started = Instant::now();
    let fleet = Fleet::start();
    let host = fleet.add_host("edge-01");
    let host_key = key_in(&fleet.home("edge-01"));
    let admin_key = key_in(&fleet.home("admin"));
    let coordinator_key = key_in(&fleet.coordinator.home());
    let relay = start_relay(&fleet, "relay-eu");
    let logs = || {
        format!(
            "--- coordinator:\n{}\n--- agent edge-01:\n{}\n--- relay-eu:\n{}",
            fleet.coordinator.log(),
            host.log(),
            relay.log()
        )
    };
    assert_ne!(relay.node_id, coordinator_key);
    // The coordinator enrolled it under its key, and its first set is the host and the admin's
    // device.
    let coordinator_log = fleet.coordinator.log();
    assert!(
        coordinator_log.lines().any(|l| l.contains("relay enrolled")
            && l.contains("relay-eu")
            && l.contains(&short(&relay.node_id))),
        "{}",
        logs()
    );
    let first = relay
        .log()
        .lines()
        .find(|l| l.contains("connected to the coordinator"))
        .map(|l| field(l, "keys"))
        .unwrap();
    assert_eq!(first, 2, "{}", logs());

    // The agent is told and moves its relay connection there.
    wait_until(
        "the agent moves to the standalone relay",
        || host.log().contains(MOVED),
        logs,
    );
    assert!(
        host.log()
            .lines()
            .any(|l| l.contains(MOVED) && l.contains("relay-eu")),
        "{}",
        logs()
    );
    let connected = |key: &str| format!("relay peer connected peer={}", short(key));
    wait_until(
        "the agent's key connects to the standalone relay",
        || relay.log().contains(&connected(&host_key)),
        logs,
    );

    // A client asks which relay to use beside its contact and reports the one it used.
    let report = json(&fleet.admin(&["path", "edge-01", "--json"]));
    eprintln!("mesh path edge-01 --json: {report:#}");
    assert_eq!(
        report["relay"]["addr"],
        relay.addr.as_str(),
        "{report}\n{}",
        logs()
    );
    assert_eq!(
        report["relay"]["node_id"],
        relay.node_id.as_str(),
        "{report}\n{}",
        logs()
    );
    // Loopback: the host answers directly all the same.
    assert_eq!(report["path"], "direct", "{report}");
    assert!(relay.log().contains(&connected(&admin_key)), "{}", logs());

    // A second user's device is allowed as soon as it enrolls.
    add_ops_role(&fleet);
    fleet.add_user("dave", "ops");
    let dave_key = key_in(&fleet.home("dave"));
    wait_until(
        "the relay hears of dave's device",
        || allowed_updates(&relay.log()).last() == Some(&(3, 0)),
        logs,
    );

    // dave holds a session open, so his client holds a connection to the standalone relay.
    let mut session = Reaper(open_session(&fleet, "dave"));
    wait_until(
        "dave's key connects to the standalone relay",
        || relay.log().contains(&connected(&dave_key)),
        logs,
    );
    // Frozen, dave's client cannot hang up on the relay itself when the host ends its session:
    // the relay has to close that connection (within the 6 s idle timeout, so at once).
    signal(&session.0, nix::sys::signal::Signal::SIGSTOP);
    let before = allowed_updates(&relay.log()).len();
    let out = fleet.admin(&["revoke", "device", &dave_key]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    wait_until(
        "the relay hears of the revocation",
        || allowed_updates(&relay.log()).len() > before,
        logs,
    );
    let heard_after = revoked_at.elapsed();
    let (keys, closed) = allowed_updates(&relay.log())[before];
    assert_eq!(keys, 2, "dave's key is no longer allowed\n{}", logs());
    assert!(
        closed >= 1,
        "the relay closed none of dave's connections\n{}",
        logs()
    );
    signal(&session.0, nix::sys::signal::Signal::SIGCONT);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = session.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dave's session still runs");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut session.0.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("dave's session ended {status:?}:\n{stderr}");
    assert!(stderr.contains(MOVED), "{stderr}");
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");

    eprintln!("{}", logs());
    eprintln!(
        "the relay had the new set {heard_after:?} after `mesh revoke` returned; whole test {:?}",
        started.elapsed()
    );
}

#[test]
fn when_the_standalone_relay_stops_the_coordinator_names_its_own_relay_again() {
    let started = Instant::now();
    let fleet = Fleet::start();
    let host = fleet.add_host("edge-01");
    let coordinator_addr = fleet.coordinator.addr();
    let coordinator_key = key_in(&fleet.coordinator.home());
    let mut relay = start_relay(&fleet, "relay-eu");
    let logs = |relay: &Relay| {
        format!(
            "--- coordinator:\n{}\n--- agent edge-01:\n{}\n--- relay-eu:\n{}",
            fleet.coordinator.log(),
            host.log(),
            relay.log()
        )
    };
    let moves = || host.log().matches(MOVED).count();
    wait_until(
        "the agent moves to the standalone relay",
        || moves() == 1,
        || logs(&relay),
    );
    let report = json(&fleet.admin(&["path", "edge-01", "--json"]));
    assert_eq!(
        report["relay"]["addr"],
        relay.addr.as_str(),
        "{report}\n{}",
        logs(&relay)
    );

    let status = relay.daemon.stop();
    let stopped_at = Instant::now();
    assert!(
        status.success(),
        "relay exited {status:?}\n{}",
        logs(&relay)
    );
    let offline = || fleet.coordinator.log().contains("relay offline");
    wait_until("the coordinator sees the relay go", offline, || {
        logs(&relay)
    });
    let noticed = stopped_at.elapsed();
    // The agent is told to use the coordinator's relay again.
    wait_until("the agent moves back", || moves() == 2, || logs(&relay));
    let moved_back = stopped_at.elapsed();

    let report = json(&fleet.admin(&["path", "edge-01", "--json"]));
    eprintln!("mesh path edge-01 --json after the relay stopped: {report:#}");
    assert_eq!(
        report["relay"]["addr"],
        coordinator_addr.as_str(),
        "{report}\n{}",
        logs(&relay)
    );
    assert_eq!(
        report["relay"]["node_id"],
        coordinator_key.as_str(),
        "{report}\n{}",
        logs(&relay)
    );
    let out = fleet.admin(&[
        "exec",
        "edge-01",
        "--login",
        &current_login(),
        "--",
        "echo",
        "ok",
    ]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "ok\n"),
        "stderr:\n{}\n{}",
        text(&out.stderr),
        logs(&relay)
    );
    eprintln!(
        "the coordinator saw the relay go {noticed:?} after SIGTERM, the agent moved back after \
         {moved_back:?}; whole test {:?}\n{}",
        started.elapsed(),
        logs(&relay)
    );
}
