//! The real `mesh` binary in the kernel NAT lab (issue 8, "relay and the path socket"): a
//! coordinator (with its embedded relay) on a public host, an agent and a user's device each in
//! its own network namespace behind Linux NATs (`mesh_netsim::lab`).
//!
//! - Host and client each behind `masquerade random` (symmetric NATs, random ports): no direct
//!   path exists, yet `mesh exec` works, through the relay, and `mesh path` says so.
//! - The positive control: a host behind a full-cone NAT, a public client: `mesh path` says
//!   direct, at the NAT's external address and the agent's port.
//! - The same NATs with a standalone relay (`mesh relay`) on a public host of its own: the
//!   coordinator names it, agent and client move there, and `mesh exec` goes through it.
//! - A client whose router drops all UDP (`block_udp`): `mesh login`, `mesh hosts` and
//!   `mesh exec` work over TLS-over-TCP to the coordinator and its relay. The router's drop
//!   counter grows at each step (each dial tried UDP first) and, during a session, the laptop
//!   and the hub each show the TCP connection.
//! - Hole punching between two port-restricted cones (host and client each behind its own plain
//!   `masquerade`): `mesh path` says direct at the host NAT's address and both NATs
//!   endpoint-independent, after a rendezvous; a 3 MB session whose output starts after the
//!   upgrade moves under 100 kB through the coordinator's port (nftables counters on the hub)
//!   and its relay (the totals `mesh coordinator serve` logs when stopped with SIGTERM).
//! - Birthday probing: the host behind `masquerade fully-random` (symmetric, random ports; on
//!   this kernel `masquerade random` picks ports the same way), the client behind a plain
//!   `masquerade`: `mesh path` says direct at one of the host NAT's random ports.
//! - Keeping a path (issue 10): host and client each behind a plain `masquerade`, a session
//!   printing a numbered line every 100 ms goes direct; the client's router flushes its
//!   conntrack table (`conntrack -F`), which `masquerade` answers with the same ports, and
//!   then flushes it again with the session's sockets masqueraded to new ports, so its
//!   address really changes: every line arrives once and in order, the client logs the failed
//!   path and its new rendezvous, and the session's packets (nftables counters in the client's
//!   router) come through the relay, then directly again, from the new port (conntrack in both
//!   routers).
//!
//! These tests need root, iproute2, nftables (and conntrack, for the flush) and skip (saying
//! why) without them, except under `CI`, where a skip fails. Their `namespace_` names put them
//! in nextest's serial `namespace-and-users` group (`.config/nextest.toml`).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_netsim::lab::{self, Lab};
use mesh_netsim::topology::Topology;
use mesh_tests::fleet::{Daemon, text};
use mesh_tests::{mesh_bin, skip_test};
use tempfile::TempDir;

/// The coordinator's port on the hub.
const COORDINATOR_PORT: u16 = 7400;
/// The port every agent listens on (`config.toml`'s `listen`).
const AGENT_PORT: u16 = 7422;
/// The port a standalone relay listens on (`mesh relay`'s default).
const RELAY_PORT: u16 = 7402;
/// How long any one `mesh` command may run before it is killed and the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Two sites: a host `edge` behind the NAT `site` of kind `site_kind`, a client `laptop`
/// behind the NAT `home` (of kind `home_kind`, dropping all UDP it would forward if
/// `block_udp`), the coordinator on `hub`, and `extra` public hosts.
fn two_sites(
    site_kind: &str,
    home: &str,
    home_kind: &str,
    block_udp: bool,
    extra: &[&str],
) -> String {
    let mut toml = format!(
        "[[nat]]\nname = \"site\"\nkind = \"{site_kind}\"\n\n\
         [[nat]]\nname = \"{home}\"\nkind = \"{home_kind}\"\nblock_udp = {block_udp}\n\n\
         [[host]]\nname = \"hub\"\n\n"
    );
    for host in extra {
        toml.push_str(&format!("[[host]]\nname = \"{host}\"\n\n"));
    }
    toml.push_str(&format!(
        "[[host]]\nname = \"edge\"\nbehind = \"site\"\n\n\
         [[host]]\nname = \"laptop\"\nbehind = \"{home}\"\n"
    ));
    toml
}

/// The relay case: host and client each behind `masquerade random`.
fn relay_topology() -> String {
    two_sites("symmetric-random", "home", "symmetric-random", false, &[])
}

/// The relay case with a standalone relay on a public host of its own.
fn standalone_relay_topology() -> String {
    two_sites(
        "symmetric-random",
        "home",
        "symmetric-random",
        false,
        &["relay"],
    )
}

/// The direct case: a host behind a full-cone NAT, a public client.
const DIRECT_TOPOLOGY: &str = r#"
[[nat]]
name = "cone"
kind = "full-cone"

[[host]]
name = "hub"

[[host]]
name = "edge2"
behind = "cone"

[[host]]
name = "pub"
"#;

/// The TCP case: a host behind a port-restricted NAT, the admin's device behind one that drops
/// all UDP it would forward (TCP passes).
fn udp_blocked_topology() -> String {
    two_sites("port-restricted", "firewall", "port-restricted", true, &[])
}

/// Hole punching between two port-restricted cones: host and client each behind its own plain
/// `masquerade` (endpoint-independent mapping with the port kept, address-and-port-dependent
/// filtering).
fn two_masquerades_topology() -> String {
    two_sites("port-restricted", "home", "port-restricted", false, &[])
}

/// Birthday probing: the host behind a symmetric NAT with random ports (`masquerade
/// fully-random`), the client behind a plain `masquerade`.
fn birthday_topology() -> String {
    two_sites("symmetric-random", "home", "port-restricted", false, &[])
}

/// Skips (or fails under CI) when the lab cannot run here.
fn lab_unsupported() -> bool {
    if let Some(why) = lab::unsupported() {
        skip_test(&why);
        return true;
    }
    false
}

/// A lab with a serving coordinator on host `hub` and its first admin logged in on one device.
struct LabMesh {
    // Dropped in order: the processes, then the lab (which kills anything left inside its
    // namespaces), then the homes.
    daemons: Vec<(String, Daemon)>,
    lab: Lab,
    homes: TempDir,
    /// The host the admin's device runs in.
    admin_host: &'static str,
}

impl LabMesh {
    /// Builds `topology`, runs `mesh coordinator init` and `serve` on `hub`, and
    /// `mesh login` of the first admin on `admin_host`.
    fn start(topology: &str, admin_host: &'static str) -> Self {
        let (mesh, token) = Self::serve(topology, admin_host);
        mesh.run(admin_host, "admin", &["login", "-"], Some(&token));
        mesh
    }

    /// Builds `topology` and runs `mesh coordinator init` and `serve` on `hub`; returns the
    /// first admin's token, for `mesh login -` on `admin_host`.
    fn serve(topology: &str, admin_host: &'static str) -> (Self, String) {
        let network = Topology::from_toml(topology).unwrap().resolve().unwrap();
        let lab = Lab::build(&network).unwrap();
        let homes = tempfile::Builder::new()
            .prefix("mesh-kernel-")
            .tempdir()
            .unwrap();
        let mut mesh = Self {
            daemons: Vec::new(),
            lab,
            homes,
            admin_host,
        };
        let addr = mesh.coordinator_addr();
        let out = mesh.run(
            "hub",
            "hub",
            &["coordinator", "init", "--addr", &addr],
            None,
        );
        let token = text(&out.stdout).trim().to_owned();
        let serve = mesh.command("hub", "hub", &["coordinator", "serve"]);
        mesh.daemons
            .push(("coordinator".into(), Daemon::spawn(serve, "listening on")));
        (mesh, token)
    }

    /// Where the coordinator (and its relay) is reached.
    fn coordinator_addr(&self) -> String {
        format!("{}:{COORDINATOR_PORT}", self.lab.host_ip("hub").unwrap())
    }

    fn home(&self, name: &str) -> PathBuf {
        self.homes.path().join(name)
    }

    /// `mesh --home HOME ARGS...` inside `host`'s namespace, with a clean environment and
    /// closed stdin, not yet run.
    fn command(&self, host: &str, home: &str, args: &[&str]) -> Command {
        let mut command = self
            .lab
            .host_command(host, mesh_bin().to_str().unwrap())
            .unwrap();
        command
            .arg("--home")
            .arg(self.home(home))
            .args(args)
            .env_remove("MESH_HOME")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs `mesh --home HOME ARGS...` in `host` (with `input` on stdin), at most
    /// [`COMMAND_LIMIT`], and requires it to succeed.
    fn run(&self, host: &str, home: &str, args: &[&str], input: Option<&str>) -> Output {
        let out = self.try_run(host, home, args, input);
        assert!(
            out.status.success(),
            "`mesh {}` in {host} exited {:?}\nstdout:\n{}\nstderr:\n{}\n{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr),
            self.daemon_logs()
        );
        out
    }

    /// Runs `mesh --home HOME ARGS...` in `host` (with `input` on stdin) to completion; kills
    /// it and fails the test after [`COMMAND_LIMIT`].
    fn try_run(&self, host: &str, home: &str, args: &[&str], input: Option<&str>) -> Output {
        let mut command = self.command(host, home, args);
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Written (then closed) on its own thread, so a child that does not read cannot
        // block the test past its deadline.
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            let input = input.to_owned();
            std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`mesh {}` in {host} still running after {COMMAND_LIMIT:?}, killed\n\
                     stdout:\n{}\nstderr:\n{}\n{}",
                    args.join(" "),
                    text(&stdout.join().unwrap()),
                    text(&stderr.join().unwrap()),
                    self.daemon_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// `mesh ARGS...` as the admin, on the admin's device.
    fn admin(&self, args: &[&str]) -> Output {
        self.try_run(self.admin_host, "admin", args, None)
    }

    /// `mesh ARGS... --json` as the admin, required to succeed, parsed.
    fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(self.admin_host, "admin", args, None);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
    }

    /// Invites host `name`, enrolls it in its namespace (home `name`, listening on every
    /// address at [`AGENT_PORT`]) and starts its agent.
    fn add_host(&mut self, name: &str) {
        let out = self.run(
            self.admin_host,
            "admin",
            &["invite", "host", "--name", name],
            None,
        );
        let token = text(&out.stdout).trim().to_owned();
        let home = self.home(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(
            home.join("config.toml"),
            format!("listen = \"0.0.0.0:{AGENT_PORT}\"\n"),
        )
        .unwrap();
        self.run(name, name, &["node", "join", "-"], Some(&token));
        let agent = self.command(name, name, &["node", "run"]);
        self.daemons.push((
            format!("agent {name}"),
            Daemon::spawn(agent, "connected to the coordinator"),
        ));
    }

    /// Invites relay `name`, enrolls it on lab host `host` (home `name`) and starts it there on
    /// [`RELAY_PORT`], its relay server logging each peer that connects; returns once it has
    /// its first allowed keys.
    fn add_relay(&mut self, host: &str, name: &str) {
        let out = self.run(
            self.admin_host,
            "admin",
            &["invite", "relay", "--name", name],
            None,
        );
        let token = text(&out.stdout).trim().to_owned();
        std::fs::create_dir_all(self.home(name)).unwrap();
        self.run(host, name, &["relay", "join", "-"], Some(&token));
        let mut relay = self.command(host, name, &["relay"]);
        relay.env("RUST_LOG", "info,mesh_coordinator::relay=debug");
        self.daemons.push((
            format!("relay {name}"),
            Daemon::spawn(relay, "connected to the coordinator"),
        ));
    }

    /// Stops the daemon called `name` as a service manager would (SIGTERM: `ip netns exec`
    /// runs `mesh` in its own place, so the signal reaches it) and waits for it to exit, which
    /// it must do successfully. Its last lines may reach [`daemon_log`](Self::daemon_log) a
    /// moment later.
    fn stop(&mut self, name: &str) {
        let daemon = self
            .daemons
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, daemon)| daemon)
            .unwrap_or_else(|| panic!("no daemon {name}"));
        let status = daemon.stop();
        assert!(
            status.success(),
            "{name} exited {status:?} on SIGTERM:\n{}",
            daemon.log()
        );
    }

    /// The stderr of the daemon called `name` so far.
    fn daemon_log(&self, name: &str) -> String {
        self.daemons
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, daemon)| daemon.log())
            .unwrap_or_else(|| panic!("no daemon {name}"))
    }

    /// Every daemon's stderr so far, for failure messages.
    fn daemon_logs(&self) -> String {
        self.daemons
            .iter()
            .map(|(name, daemon)| format!("--- {name} stderr:\n{}", daemon.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
fn namespace_exec_works_through_the_relay_between_two_symmetric_nats_and_path_says_relay() {
    if lab_unsupported() {
        return;
    }
    let started = Instant::now();
    let mut mesh = LabMesh::start(&relay_topology(), "laptop");
    mesh.add_host("edge");
    let ready = started.elapsed();
    let coordinator = mesh.coordinator_addr();
    let site = mesh.lab.nat_external_ip("site").unwrap().to_string();

    let exec_started = Instant::now();
    let out = mesh.admin(&["exec", "edge", "--login", "root", "--", "echo", "hello"]);
    let exec_took = exec_started.elapsed();
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello\n"),
        "mesh exec edge\nstderr:\n{}\n{}",
        text(&out.stderr),
        mesh.daemon_logs()
    );

    let report = mesh.admin_json(&["path", "edge", "--json"]);
    eprintln!("mesh path edge --json: {report:#}");
    let context = || format!("{report:#}\n{}", mesh.daemon_logs());
    assert_eq!(report["host"], "edge", "{}", context());
    assert_eq!(report["path"], "relay", "{}", context());
    assert_eq!(report["remote_addr"], coordinator.as_str(), "{}", context());
    assert_eq!(
        report["relay"]["addr"],
        coordinator.as_str(),
        "{}",
        context()
    );
    assert!(
        report["relay"]["node_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{}",
        context()
    );
    assert!(
        report["bytes_sent"]["relay"].as_u64().unwrap() > 0,
        "{}",
        context()
    );
    // The coordinator listed the host where it saw it (the site NAT's address) and the direct
    // probes went there; nothing answered through the symmetric NATs.
    let candidates = report["candidates"].as_array().unwrap();
    assert!(
        candidates
            .iter()
            .any(|c| c["addr"].as_str().unwrap().starts_with(&format!("{site}:"))),
        "no candidate at the site NAT's address {site}: {}",
        context()
    );
    for candidate in candidates {
        assert_eq!(candidate["confirmed"], false, "{}", context());
        assert!(candidate["pings"].as_u64().unwrap() >= 1, "{}", context());
    }

    // `mesh hosts` agrees.
    let hosts = mesh.admin_json(&["hosts", "--json"]);
    let edge = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "edge")
        .unwrap_or_else(|| panic!("edge not listed: {hosts}"));
    assert_eq!(edge["online"], true, "{hosts}");
    assert_eq!(edge["path"], "relay", "{hosts}");

    eprintln!(
        "lab, coordinator and agent ready in {ready:?}; exec through the relay took \
         {exec_took:?}; whole test {:?}",
        started.elapsed()
    );
}

/// The node id of the key in `home`.
fn key_in(home: &std::path::Path) -> String {
    mesh_node::keyfile::read_secret_key(&home.join("key"))
        .unwrap()
        .node_id()
        .to_string()
}

/// Polls `done` until it holds, at most [`COMMAND_LIMIT`]; panics with `context()` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + COMMAND_LIMIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {COMMAND_LIMIT:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn namespace_exec_between_two_symmetric_nats_goes_through_the_standalone_relay_the_coordinator_names()
 {
    if lab_unsupported() {
        return;
    }
    let started = Instant::now();
    let mut mesh = LabMesh::start(&standalone_relay_topology(), "laptop");
    mesh.add_host("edge");
    mesh.add_relay("relay", "relay-eu");
    let ready = started.elapsed();
    let relay_addr = format!("{}:{RELAY_PORT}", mesh.lab.host_ip("relay").unwrap());
    let relay_key = key_in(&mesh.home("relay-eu"));
    let coordinator_key = key_in(&mesh.home("hub"));
    assert_ne!(relay_key, coordinator_key);
    let connected = |home: &str| {
        format!(
            "relay peer connected peer={}",
            key_in(&mesh.home(home))
                .parse::<mesh_proto::NodeId>()
                .unwrap()
                .short()
        )
    };

    // The agent is told to use the standalone relay and connects there.
    wait_until(
        "the agent connects to the standalone relay",
        || {
            mesh.daemon_log("relay relay-eu")
                .contains(&connected("edge"))
        },
        || mesh.daemon_logs(),
    );
    assert!(
        mesh.daemon_log("agent edge")
            .lines()
            .any(|l| l.contains("the coordinator names another relay") && l.contains("relay-eu")),
        "{}",
        mesh.daemon_logs()
    );

    let exec_started = Instant::now();
    let out = mesh.admin(&["exec", "edge", "--login", "root", "--", "echo", "hello"]);
    let exec_took = exec_started.elapsed();
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello\n"),
        "mesh exec edge\nstderr:\n{}\n{}",
        text(&out.stderr),
        mesh.daemon_logs()
    );
    // The client followed too: its key connected to the standalone relay.
    assert!(
        mesh.daemon_log("relay relay-eu")
            .contains(&connected("admin")),
        "{}",
        mesh.daemon_logs()
    );

    let report = mesh.admin_json(&["path", "edge", "--json"]);
    eprintln!("mesh path edge --json: {report:#}");
    let context = || format!("{report:#}\n{}", mesh.daemon_logs());
    assert_eq!(report["path"], "relay", "{}", context());
    assert_eq!(report["remote_addr"], relay_addr.as_str(), "{}", context());
    assert_eq!(
        report["relay"]["addr"],
        relay_addr.as_str(),
        "{}",
        context()
    );
    assert_eq!(
        report["relay"]["node_id"],
        relay_key.as_str(),
        "{}",
        context()
    );
    assert!(
        report["bytes_sent"]["relay"].as_u64().unwrap() > 0,
        "{}",
        context()
    );
    for candidate in report["candidates"].as_array().unwrap() {
        assert_eq!(candidate["confirmed"], false, "{}", context());
    }

    eprintln!(
        "lab, coordinator, agent and relay ready in {ready:?}; exec through the standalone relay \
         took {exec_took:?}; whole test {:?}\n{}",
        started.elapsed(),
        mesh.daemon_logs()
    );
}

#[test]
fn namespace_a_host_behind_a_full_cone_nat_is_reached_directly_and_path_says_direct() {
    if lab_unsupported() {
        return;
    }
    let started = Instant::now();
    let mut mesh = LabMesh::start(DIRECT_TOPOLOGY, "pub");
    mesh.add_host("edge2");
    let coordinator = mesh.coordinator_addr();
    let mapped = format!("{}:{AGENT_PORT}", mesh.lab.nat_external_ip("cone").unwrap());

    let out = mesh.admin(&["exec", "edge2", "--login", "root", "--", "echo", "hello"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello\n"),
        "mesh exec edge2\nstderr:\n{}\n{}",
        text(&out.stderr),
        mesh.daemon_logs()
    );

    let report = mesh.admin_json(&["path", "edge2", "--json"]);
    eprintln!("mesh path edge2 --json: {report:#}");
    let context = || format!("{report:#}\n{}", mesh.daemon_logs());
    assert_eq!(report["path"], "direct", "{}", context());
    assert_eq!(report["remote_addr"], mapped.as_str(), "{}", context());
    assert_eq!(
        report["relay"]["addr"],
        coordinator.as_str(),
        "{}",
        context()
    );
    // The handshake starts on the relay and `mesh path` reports as soon as the direct address
    // is confirmed, so the bytes may all be the relay's (as on loopback, `path.rs`).
    let sent = &report["bytes_sent"];
    assert!(
        sent["direct"].as_u64().unwrap() + sent["relay"].as_u64().unwrap() > 0,
        "{}",
        context()
    );
    let candidates = report["candidates"].as_array().unwrap();
    let at_nat = candidates
        .iter()
        .find(|c| c["addr"] == mapped.as_str())
        .unwrap_or_else(|| panic!("{mapped} not a candidate: {}", context()));
    assert_eq!(at_nat["confirmed"], true, "{}", context());

    let hosts = mesh.admin_json(&["hosts", "--json"]);
    let edge2 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "edge2")
        .unwrap_or_else(|| panic!("edge2 not listed: {hosts}"));
    assert_eq!(edge2["online"], true, "{hosts}");
    assert_eq!(edge2["path"], "direct", "{hosts}");
    assert_eq!(edge2["remote_addr"], mapped.as_str(), "{hosts}");

    eprintln!("whole test {:?}", started.elapsed());
}

/// How many packets NAT `nat`'s `block_udp` rule has dropped (its nftables counter).
fn udp_drops(lab: &Lab, nat: &str) -> u64 {
    let out = lab
        .nat_command(nat, "nft")
        .unwrap()
        .args(["list", "chain", "ip", "meshlab", "forward"])
        .output()
        .unwrap();
    let rules = text(&out.stdout);
    assert!(out.status.success(), "nft: {}", text(&out.stderr));
    // `meta l4proto udp counter packets N bytes M drop`
    let line = rules
        .lines()
        .find(|l| l.contains("meta l4proto udp counter packets") && l.ends_with("drop"))
        .unwrap_or_else(|| panic!("no UDP drop rule with a counter in {nat}:\n{rules}"));
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets").unwrap();
    words.next().unwrap().parse().unwrap()
}

/// Appends the firewall's drop count now to `drops` and requires it to have grown since the
/// last: the step before tried UDP (first, as every dial does), and none of it got through.
fn more_drops(lab: &Lab, drops: &mut Vec<(&'static str, u64)>, label: &'static str) {
    let now = udp_drops(lab, "firewall");
    let before = drops.last().unwrap().1;
    drops.push((label, now));
    assert!(
        now > before,
        "the firewall dropped no UDP {label} (the step succeeded all the same): {drops:?}"
    );
}

/// The established TCP connections in host `host`'s namespace, as (local, peer) addresses.
fn established_tcp(lab: &Lab, host: &str) -> Vec<(String, String)> {
    let out = lab
        .host_command(host, "ss")
        .unwrap()
        .args(["-tnH", "state", "established"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ss: {}", text(&out.stderr));
    // Recv-Q Send-Q Local Peer (no State column with a state filter).
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.len() >= 4).then(|| (words[2].to_owned(), words[3].to_owned()))
        })
        .collect()
}

/// `mesh exec`'s output on success: exit 0, `stdout` exactly, nothing on stderr.
fn assert_exec(mesh: &LabMesh, what: &str, out: &Output, stdout: &[u8]) {
    assert!(
        out.status.code() == Some(0) && out.stdout == stdout && out.stderr.is_empty(),
        "{what}: exit {:?}, {} bytes of stdout (want {}){}\nstderr:\n{}\n{}",
        out.status.code(),
        out.stdout.len(),
        stdout.len(),
        if out.stdout.len() < 200 {
            format!(": {:?}", text(&out.stdout))
        } else {
            String::new()
        },
        text(&out.stderr),
        mesh.daemon_logs()
    );
}

#[test]
fn namespace_a_client_whose_router_drops_all_udp_enrolls_lists_hosts_and_execs_over_tcp() {
    if lab_unsupported() {
        return;
    }
    let started = Instant::now();
    let (mut mesh, token) = LabMesh::serve(&udp_blocked_topology(), "laptop");
    let coordinator = mesh.coordinator_addr();
    let firewall = mesh.lab.nat_external_ip("firewall").unwrap().to_string();
    let site = mesh.lab.nat_external_ip("site").unwrap().to_string();
    let mut drops = vec![("before login", udp_drops(&mesh.lab, "firewall"))];

    // Enrollment itself: QUIC over UDP is dropped at the firewall, so it must go over TCP.
    let login = mesh.run("laptop", "admin", &["login", "-"], Some(&token));
    eprintln!(
        "mesh login - on the laptop: stdout {:?}, stderr {:?}",
        text(&login.stdout),
        text(&login.stderr)
    );
    more_drops(&mesh.lab, &mut drops, "after login");

    // The invitation is made on the laptop (over TCP); the host enrolls and runs over UDP.
    mesh.add_host("edge");
    more_drops(&mesh.lab, &mut drops, "after invite host");

    let hosts_out = mesh.run("laptop", "admin", &["hosts", "--json"], None);
    assert!(
        hosts_out.stderr.is_empty(),
        "mesh hosts --json stderr:\n{}",
        text(&hosts_out.stderr)
    );
    let hosts: serde_json::Value = serde_json::from_slice(&hosts_out.stdout).unwrap();
    eprintln!("mesh hosts --json: {hosts}");
    let edge = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "edge")
        .unwrap_or_else(|| panic!("edge not listed: {hosts}"));
    assert_eq!(edge["online"], true, "{hosts}\n{}", mesh.daemon_logs());
    assert_eq!(edge["path"], "relay", "{hosts}\n{}", mesh.daemon_logs());
    more_drops(&mesh.lab, &mut drops, "after hosts");

    let out = mesh.admin(&["exec", "edge", "--login", "root", "--", "echo", "hello"]);
    assert_exec(&mesh, "mesh exec edge -- echo hello", &out, b"hello\n");
    more_drops(&mesh.lab, &mut drops, "after exec");

    // More data each way: 405 kB of base64 down, 289 kB of numbers up and back.
    let out = mesh.admin(&[
        "exec",
        "edge",
        "--login",
        "root",
        "--",
        // As with ssh, the words are joined for the remote shell's `-c`.
        "head -c 300000 /dev/zero | base64",
    ]);
    let mut base64 = String::new();
    let encoded = "A".repeat(400_000);
    for line in encoded.as_bytes().chunks(76) {
        base64.push_str(std::str::from_utf8(line).unwrap());
        base64.push('\n');
    }
    assert_exec(&mesh, "mesh exec edge -- base64", &out, base64.as_bytes());
    let numbers: String = (1..=50_000).map(|n| format!("{n}\n")).collect();
    let out = mesh.try_run(
        "laptop",
        "admin",
        &["exec", "edge", "--login", "root", "--", "cat"],
        Some(&numbers),
    );
    assert_exec(
        &mesh,
        "mesh exec edge -- cat < seq 50000",
        &out,
        numbers.as_bytes(),
    );

    // While a session is open: the laptop holds a TCP connection to the coordinator's port,
    // and the hub sees it from the firewall's address.
    let mut child = mesh
        .command(
            "laptop",
            "admin",
            &["exec", "edge", "--login", "root", "--", "cat"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    let (echoed_tx, echoed) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
            if all == b"ping\n" {
                let _ = echoed_tx.send(());
            }
        }
        all
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    if echoed.recv_timeout(COMMAND_LIMIT).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "mesh exec edge -- cat: no echo within {COMMAND_LIMIT:?}\nstdout: {:?}\nstderr:\n{}\n{}",
            text(&reader.join().unwrap()),
            text(&stderr.join().unwrap()),
            mesh.daemon_logs()
        );
    }
    let laptop_tcp = established_tcp(&mesh.lab, "laptop");
    let hub_tcp = established_tcp(&mesh.lab, "hub");
    eprintln!("laptop's established TCP: {laptop_tcp:?}\nhub's established TCP: {hub_tcp:?}");
    drop(stdin);
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mesh exec edge -- cat did not end after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert_exec(&mesh, "mesh exec edge -- cat (held open)", &out, b"ping\n");
    assert!(
        laptop_tcp.iter().any(|(_, peer)| *peer == coordinator),
        "no TCP connection from the laptop to {coordinator} during the session: {laptop_tcp:?}"
    );
    let coordinator_port = format!(":{COORDINATOR_PORT}");
    assert!(
        hub_tcp
            .iter()
            .any(|(local, peer)| local.ends_with(&coordinator_port)
                && peer.starts_with(&format!("{firewall}:"))),
        "no TCP connection from the firewall ({firewall}) to the coordinator: {hub_tcp:?}"
    );
    let from_site = hub_tcp
        .iter()
        .filter(|(_, peer)| peer.starts_with(&format!("{site}:")))
        .count();
    eprintln!("TCP connections at the hub from the site NAT (UDP works there): {from_site}");

    let report = mesh.admin_json(&["path", "edge", "--json"]);
    eprintln!("mesh path edge --json: {report:#}");
    let context = || format!("{report:#}\n{}", mesh.daemon_logs());
    assert_eq!(report["host"], "edge", "{}", context());
    assert_eq!(report["path"], "relay", "{}", context());
    assert_eq!(report["remote_addr"], coordinator.as_str(), "{}", context());
    assert_eq!(
        report["relay"]["addr"],
        coordinator.as_str(),
        "{}",
        context()
    );
    assert!(
        report["bytes_sent"]["relay"].as_u64().unwrap() > 0,
        "{}",
        context()
    );
    drops.push(("at the end", udp_drops(&mesh.lab, "firewall")));

    eprintln!(
        "UDP packets dropped by the firewall: {drops:?}\ndaemons:\n{}\nwhole test {:?}",
        mesh.daemon_logs(),
        started.elapsed()
    );
}

/// Counts, with named nftables counters in the hub's namespace, every byte that crosses the
/// coordinator's port (UDP and TCP, both ways) from or to `peers` (the NATs' external
/// addresses): what the coordinator, and so its embedded relay, carried for them.
fn count_coordinator_traffic(lab: &Lab, peers: &[std::net::Ipv4Addr]) {
    let peers = peers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let ruleset = format!(
        "table ip meshcount {{\n  \
         counter to_coordinator {{ }}\n  \
         counter from_coordinator {{ }}\n  \
         chain input {{ type filter hook input priority filter; policy accept;\n    \
         meta l4proto {{ tcp, udp }} th dport {COORDINATOR_PORT} ip saddr {{ {peers} }} \
         counter name to_coordinator\n  }}\n  \
         chain output {{ type filter hook output priority filter; policy accept;\n    \
         meta l4proto {{ tcp, udp }} th sport {COORDINATOR_PORT} ip daddr {{ {peers} }} \
         counter name from_coordinator\n  }}\n}}\n"
    );
    load_ruleset(lab.host_command("hub", "nft").unwrap(), "hub", &ruleset);
}

/// Bytes counted so far by [`count_coordinator_traffic`]'s counters: (to the coordinator's
/// port, from it).
fn coordinator_traffic(lab: &Lab) -> (u64, u64) {
    let bytes = |counter: &str| -> u64 {
        let out = lab
            .host_command("hub", "nft")
            .unwrap()
            .args(["list", "counter", "ip", "meshcount", counter])
            .output()
            .unwrap();
        let listing = text(&out.stdout);
        assert!(out.status.success(), "nft: {}", text(&out.stderr));
        // `packets N bytes M`
        let mut words = listing.split_whitespace();
        words
            .find(|w| *w == "bytes")
            .and_then(|_| words.next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no byte count in {listing}"))
    };
    (bytes("to_coordinator"), bytes("from_coordinator"))
}

/// The embedded relay's totals from the coordinator's last line (`mesh coordinator serve`
/// logs them once it has stopped): (packets, bytes) forwarded.
fn relay_totals(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("the embedded relay's totals"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
    };
    Some((field("packets")?, field("bytes")?))
}

/// Stops the coordinator (SIGTERM) and returns its embedded relay's totals, from its log.
fn stop_coordinator(mesh: &mut LabMesh) -> (u64, u64) {
    mesh.stop("coordinator");
    let mut totals = None;
    wait_until(
        "the coordinator logs its relay's totals when it stops",
        || {
            totals = relay_totals(&mesh.daemon_log("coordinator"));
            totals.is_some()
        },
        || mesh.daemon_logs(),
    );
    let log = mesh.daemon_log("coordinator");
    eprintln!(
        "the coordinator's last line: {}",
        log.lines().last().unwrap_or_default()
    );
    totals.unwrap()
}

/// What the session moves once the path is direct: a second's pause (the punch is over by
/// then), then this many bytes of zeros.
const SESSION_BYTES: usize = 3_000_000;
/// How much may cross the coordinator's port, both ways and for both NATs together, while that
/// session runs: its keep-alives, the agent's presence, the session's opening on the relay.
const COORDINATOR_BUDGET: u64 = 100_000;

#[test]
fn namespace_two_hosts_behind_their_own_masquerade_nats_go_direct_and_the_relay_carries_no_session_bytes()
 {
    if lab_unsupported() {
        return;
    }
    let started = Instant::now();
    let mut mesh = LabMesh::start(&two_masquerades_topology(), "laptop");
    let site = mesh.lab.nat_external_ip("site").unwrap();
    let home = mesh.lab.nat_external_ip("home").unwrap();
    count_coordinator_traffic(&mesh.lab, &[site, home]);
    mesh.add_host("edge");
    let coordinator = mesh.coordinator_addr();
    // Plain `masquerade` keeps the agent's port.
    let mapped = format!("{site}:{AGENT_PORT}");

    let out = mesh.admin(&["exec", "edge", "--login", "root", "--", "echo", "hello"]);
    assert_exec(&mesh, "mesh exec edge -- echo hello", &out, b"hello\n");

    let report = mesh.admin_json(&["path", "edge", "--json"]);
    eprintln!("mesh path edge --json: {report:#}");
    let context = || format!("{report:#}\n{}", mesh.daemon_logs());
    assert_eq!(report["path"], "direct", "{}", context());
    assert_eq!(report["remote_addr"], mapped.as_str(), "{}", context());
    assert_eq!(
        report["relay"]["addr"],
        coordinator.as_str(),
        "{}",
        context()
    );
    assert_eq!(
        report["nat"]["this_device"],
        "endpoint-independent",
        "{}",
        context()
    );
    assert_eq!(
        report["nat"]["host"],
        "endpoint-independent",
        "{}",
        context()
    );
    assert_eq!(report["punch"]["rendezvous"], true, "{}", context());
    let to_direct = report["punch"]["time_to_direct_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no time to direct: {}", context()));
    let at_nat = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["addr"] == mapped.as_str())
        .unwrap_or_else(|| panic!("{mapped} not a candidate: {}", context()));
    assert_eq!(at_nat["confirmed"], true, "{}", context());

    // A session whose output starts a second in, after the path has gone direct: its bytes
    // do not cross the coordinator.
    let (to_before, from_before) = coordinator_traffic(&mesh.lab);
    let session_started = Instant::now();
    let out = mesh.admin(&[
        "exec",
        "edge",
        "--login",
        "root",
        "--",
        &format!("sleep 1; head -c {SESSION_BYTES} /dev/zero"),
    ]);
    let session_took = session_started.elapsed();
    let (to_after, from_after) = coordinator_traffic(&mesh.lab);
    assert_exec(
        &mesh,
        "mesh exec edge -- 'sleep 1; head -c 3000000 /dev/zero'",
        &out,
        &vec![0u8; SESSION_BYTES],
    );
    let crossed = (to_after - to_before) + (from_after - from_before);
    eprintln!(
        "during the {SESSION_BYTES}-byte session ({session_took:?}), the coordinator's port \
         saw {} bytes from the NATs and sent {} to them",
        to_after - to_before,
        from_after - from_before
    );
    assert!(
        crossed < COORDINATOR_BUDGET,
        "{crossed} bytes crossed the coordinator's port during a {SESSION_BYTES}-byte session \
         (at most {COORDINATOR_BUDGET}): to it {to_before} -> {to_after}, from it \
         {from_before} -> {from_after}\n{}",
        mesh.daemon_logs()
    );
    // The counters count: the agent's presence and the client's requests went through them.
    assert!(
        to_before > 0 && from_before > 0,
        "{to_before} {from_before}"
    );

    // The relay's own count over the whole run (both execs and `mesh path`): the handshakes
    // it carried before the path went direct, nothing like the session's size.
    let (packets, bytes) = stop_coordinator(&mut mesh);
    eprintln!(
        "the embedded relay forwarded {packets} packets, {bytes} bytes in the whole run; \
         nft counted {to_after} bytes to the coordinator's port and {from_after} from it; \
         time to direct in mesh path {to_direct} ms; whole test {:?}",
        started.elapsed()
    );
    assert!(
        bytes < COORDINATOR_BUDGET,
        "the embedded relay forwarded {bytes} bytes ({packets} packets) in a run with a \
         {SESSION_BYTES}-byte session\n{}",
        mesh.daemon_logs()
    );
}

#[test]
fn namespace_a_port_restricted_client_reaches_a_host_behind_masquerade_random_by_birthday_probing()
{
    if lab_unsupported() {
        return;
    }
    let started = Instant::now();
    let mut mesh = LabMesh::start(&birthday_topology(), "laptop");
    mesh.add_host("edge");
    let site = mesh.lab.nat_external_ip("site").unwrap().to_string();

    let report = mesh.admin_json(&["path", "edge", "--json"]);
    eprintln!("mesh path edge --json: {report:#}");
    let context = || format!("{report:#}\n{}", mesh.daemon_logs());
    assert_eq!(
        report["nat"]["this_device"],
        "endpoint-independent",
        "{}",
        context()
    );
    assert_eq!(
        report["nat"]["host"],
        "per-destination, random",
        "{}",
        context()
    );
    assert_eq!(report["punch"]["rendezvous"], true, "{}", context());
    assert_eq!(report["path"], "direct", "{}", context());
    // One of the site NAT's random ports: a mapping of one of the agent's extra sockets.
    let remote: std::net::SocketAddr = report["remote_addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(remote.ip().to_string(), site, "{}", context());
    assert_ne!(remote.port(), AGENT_PORT, "{}", context());
    let to_direct = report["punch"]["time_to_direct_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no time to direct: {}", context()));

    let out = mesh.admin(&["exec", "edge", "--login", "root", "--", "echo", "hello"]);
    assert_exec(&mesh, "mesh exec edge -- echo hello", &out, b"hello\n");
    let numbers: String = (1..=20_000).map(|n| format!("{n}\n")).collect();
    let out = mesh.try_run(
        "laptop",
        "admin",
        &["exec", "edge", "--login", "root", "--", "cat"],
        Some(&numbers),
    );
    assert_exec(
        &mesh,
        "mesh exec edge -- cat < seq 20000",
        &out,
        numbers.as_bytes(),
    );

    eprintln!(
        "direct at {remote} after {to_direct} ms ({} probes, {} rounds); whole test {:?}",
        report["punch"]["probes_sent"],
        report["punch"]["punch_rounds"],
        started.elapsed()
    );
}

/// Lines the flushed session prints: one every 100 ms, 20 s in all.
const FLUSH_LINES: u32 = 200;
/// How long the flushed session may run before it is killed and the test fails.
const FLUSH_SESSION_LIMIT: Duration = Duration::from_secs(60);
/// The session's direct path is back once, over [`DIRECT_WINDOW`], at least this many of its
/// packets arrived directly from the host's NAT...
const DIRECT_PACKETS: u64 = 5;
/// ...and at most this many from the relay (its connection's keep-alives, not the session).
const RELAY_PACKETS_WHEN_DIRECT: u64 = 3;
/// The window [`DIRECT_PACKETS`] is counted over.
const DIRECT_WINDOW: Duration = Duration::from_secs(1);
/// The longest the session's output may stall when its mapping moves: the path is declared
/// failed 2.5 s after it goes silent, and the session's idle timeout is 20 s.
const FLUSH_STALL_LIMIT: Duration = Duration::from_secs(8);
/// How soon after its mapping moved the session must be direct again (a full
/// [`DIRECT_WINDOW`] of it): failure, a rendezvous, two round trips.
const BACK_TO_DIRECT_LIMIT: Duration = Duration::from_secs(12);

/// Where a conntrack entry's two tuples point, from one line of `conntrack -L`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Flow {
    /// The original direction: source, destination (ip:port).
    original: (String, String),
    /// The reply direction: source, destination (ip:port).
    reply: (String, String),
}

/// Every UDP entry of NAT `nat`'s conntrack table (`conntrack -L -p udp` in its namespace).
fn udp_flows(lab: &Lab, nat: &str) -> Vec<Flow> {
    let out = lab
        .nat_command(nat, "conntrack")
        .unwrap()
        .args(["-L", "-p", "udp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "conntrack -L: {}", text(&out.stderr));
    // `udp 17 29 src=A dst=B sport=1 dport=2 [UNREPLIED] src=B dst=C sport=2 dport=3 ...`
    text(&out.stdout)
        .lines()
        .filter_map(|line| {
            let field = |name: &str, nth: usize| {
                line.split_whitespace()
                    .filter_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                    .nth(nth)
                    .map(str::to_owned)
            };
            let end = |ip: &str, port: &str, nth| {
                Some(format!("{}:{}", field(ip, nth)?, field(port, nth)?))
            };
            Some(Flow {
                original: (end("src", "sport", 0)?, end("dst", "dport", 0)?),
                reply: (end("src", "sport", 1)?, end("dst", "dport", 1)?),
            })
        })
        .collect()
}

/// Flushes NAT `nat`'s conntrack table: it forgets every mapping.
fn flush_conntrack(lab: &Lab, nat: &str) {
    let out = lab
        .nat_command(nat, "conntrack")
        .unwrap()
        .arg("-F")
        .output()
        .unwrap();
    assert!(out.status.success(), "conntrack -F: {}", text(&out.stderr));
}

/// Loads `ruleset` (nftables text) into NAT `nat`'s namespace.
fn nft_in_nat(lab: &Lab, nat: &str, ruleset: &str) {
    load_ruleset(lab.nat_command(nat, "nft").unwrap(), nat, ruleset);
}

/// Runs `nft` (a command already placed in a namespace, named `place` in errors) with
/// `ruleset` on its stdin; the test fails if nft refuses it.
fn load_ruleset(mut nft: Command, place: &str, ruleset: &str) {
    let mut nft = nft
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let out = nft.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f in {place}: {}\n{ruleset}",
        text(&out.stderr)
    );
}

/// The UDP ports process `pid` has open in host `host`'s namespace (`ss -uanp`).
fn udp_ports_of(lab: &Lab, host: &str, pid: u32) -> Vec<u16> {
    let out = lab
        .host_command(host, "ss")
        .unwrap()
        .args(["-uanpH"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ss: {}", text(&out.stderr));
    let owner = format!("pid={pid},");
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains(&owner))
        .filter_map(|l| {
            // State Recv-Q Send-Q Local Peer Process
            let local = l.split_whitespace().nth(3)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

/// Packets of the client's sockets, counted in its NAT's forward hook (so inside addresses,
/// before masquerade and after its reversal): to and from the host's NAT (the direct path),
/// to and from the coordinator's port (its embedded relay, and the client's requests).
#[derive(Clone, Copy, Debug, Default)]
struct PathCounts {
    direct_out: u64,
    direct_in: u64,
    relay_out: u64,
    relay_in: u64,
}

/// The counters' names in [`PathCounts`]' order.
const PATH_COUNTERS: [&str; 4] = ["direct_out", "direct_in", "relay_out", "relay_in"];

/// Installs [`PathCounts`]' counters (table `meshwatch`) in NAT `nat`'s namespace for the
/// client's sockets (inside address `ip`, `ports`), the host's NAT `peer_nat` and the
/// coordinator `coordinator`.
fn watch_paths(
    lab: &Lab,
    nat: &str,
    ip: std::net::Ipv4Addr,
    ports: &[u16],
    peer_nat: std::net::Ipv4Addr,
    coordinator: std::net::Ipv4Addr,
) {
    let port = format!(
        "{{ {} }}",
        ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    nft_in_nat(
        lab,
        nat,
        &format!(
            "table ip meshwatch {{\n  \
             counter direct_out {{ }}\n  counter direct_in {{ }}\n  \
             counter relay_out {{ }}\n  counter relay_in {{ }}\n  \
             chain forward {{ type filter hook forward priority filter - 1; policy accept;\n    \
             ip saddr {ip} udp sport {port} ip daddr {peer_nat} counter name direct_out\n    \
             ip daddr {ip} udp dport {port} ip saddr {peer_nat} counter name direct_in\n    \
             ip saddr {ip} udp sport {port} ip daddr {coordinator} udp dport {COORDINATOR_PORT} \
             counter name relay_out\n    \
             ip daddr {ip} udp dport {port} ip saddr {coordinator} udp sport {COORDINATOR_PORT} \
             counter name relay_in\n  }}\n}}\n"
        ),
    );
}

/// [`watch_paths`]' counters now, or `None` once the namespace is gone.
fn path_counts(namespace: &str) -> Option<PathCounts> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", namespace, "nft", "-j", "list", "counters", "table", "ip",
        ])
        .arg("meshwatch")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut counts = [0u64; 4];
    for item in listing["nftables"].as_array()? {
        let counter = &item["counter"];
        if let Some(at) = PATH_COUNTERS.iter().position(|n| counter["name"] == *n) {
            counts[at] = counter["packets"].as_u64()?;
        }
    }
    let [direct_out, direct_in, relay_out, relay_in] = counts;
    Some(PathCounts {
        direct_out,
        direct_in,
        relay_out,
        relay_in,
    })
}

/// Samples [`path_counts`] every 100 ms on a thread of its own until dropped.
struct PathSampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(Instant, PathCounts)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PathSampler {
    fn start(namespace: &str) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, stopped, namespace) = (samples.clone(), stop.clone(), namespace.to_owned());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                // Stamped before the read: the counts hold every packet up to then.
                let at = Instant::now();
                let Some(counts) = path_counts(&namespace) else {
                    return;
                };
                sink.lock().unwrap().push((at, counts));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { samples, stop }
    }

    fn samples(&self) -> Vec<(Instant, PathCounts)> {
        self.samples.lock().unwrap().clone()
    }

    /// The first moment at or after `from` + [`DIRECT_WINDOW`] at which the session's last
    /// [`DIRECT_WINDOW`] (all after `from`) was direct: [`DIRECT_PACKETS`] or more from the
    /// host's NAT, at most [`RELAY_PACKETS_WHEN_DIRECT`] from the relay.
    fn direct_since(&self, from: Instant) -> Option<Instant> {
        let samples = self.samples();
        let after: Vec<_> = samples.iter().filter(|(t, _)| *t >= from).collect();
        after.iter().enumerate().find_map(|(j, (t, now))| {
            let (_, then) = after[..j]
                .iter()
                .rev()
                .find(|(s, _)| t.duration_since(*s) >= DIRECT_WINDOW)?;
            (now.direct_in - then.direct_in >= DIRECT_PACKETS
                && now.relay_in - then.relay_in <= RELAY_PACKETS_WHEN_DIRECT)
                .then_some(*t)
        })
    }

    /// By when (as sampled) the first packet after `from` arrived directly from the host's
    /// NAT.
    fn first_direct_after(&self, from: Instant) -> Option<Instant> {
        let samples = self.samples();
        let mut after = samples.iter().filter(|(t, _)| *t >= from);
        let base = after.next()?.1.direct_in;
        after.find(|(_, c)| c.direct_in > base).map(|(t, _)| *t)
    }

    /// Packets from the relay to the client's sockets between `from` and `to`.
    fn relay_in_between(&self, from: Instant, to: Instant) -> u64 {
        let samples = self.samples();
        let at = |when: Instant| {
            samples
                .iter()
                .rev()
                .find(|(t, _)| *t <= when)
                .or(samples.first())
                .map_or(0, |(_, c)| c.relay_in)
        };
        at(to).saturating_sub(at(from))
    }

    /// Half-second buckets from `from` to `to`: (seconds since `origin` at the bucket's end,
    /// packets in and out on the direct path, in and out through the coordinator's port).
    fn timeline(&self, origin: Instant, from: Instant, to: Instant) -> Vec<String> {
        let samples = self.samples();
        let mut buckets = Vec::new();
        let mut start = from;
        while start < to {
            let end = start + Duration::from_millis(500);
            let at = |when: Instant| {
                samples
                    .iter()
                    .rev()
                    .find(|(t, _)| *t <= when)
                    .map(|(_, c)| *c)
                    .unwrap_or_default()
            };
            let (a, b) = (at(start), at(end));
            buckets.push(format!(
                "{:5.1}: direct {}/{} relay {}/{}",
                end.duration_since(origin).as_secs_f64(),
                b.direct_in - a.direct_in,
                b.direct_out - a.direct_out,
                b.relay_in - a.relay_in,
                b.relay_out - a.relay_out,
            ));
            start = end;
        }
        buckets
    }
}

impl Drop for PathSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a pipe as they arrive, each with when it was read.
type Stamped = std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>;

fn read_stamped(pipe: impl Read + Send + 'static) -> Stamped {
    let lines: Stamped = std::sync::Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    lines
}

/// The longest wait between two lines read in `[from, to]` (counting from the last line
/// before `from`), and the line it ended at.
fn longest_gap(lines: &[(Instant, String)], from: Instant, to: Instant) -> (Duration, String) {
    let mut gap = (Duration::ZERO, String::new());
    for pair in lines.windows(2) {
        let ((before, _), (after, line)) = (&pair[0], &pair[1]);
        if *after >= from && *before <= to && after.duration_since(*before) > gap.0 {
            gap = (after.duration_since(*before), line.clone());
        }
    }
    gap
}

#[test]
fn namespace_a_direct_session_survives_the_clients_router_flushing_conntrack_and_goes_direct_again()
{
    if lab_unsupported() {
        return;
    }
    if Command::new("conntrack").arg("--version").output().is_err() {
        skip_test("`conntrack` is not installed (the conntrack package)");
        return;
    }
    let started = Instant::now();
    let mut mesh = LabMesh::start(&two_masquerades_topology(), "laptop");
    mesh.add_host("edge");
    let site = mesh.lab.nat_external_ip("site").unwrap();
    let home = mesh.lab.nat_external_ip("home").unwrap();
    let laptop = mesh.lab.host_ip("laptop").unwrap();
    let hub = mesh.lab.host_ip("hub").unwrap();
    let at_site = format!("{site}:{AGENT_PORT}");

    // The sites reach each other directly.
    let out = mesh.admin(&["exec", "edge", "--login", "root", "--", "echo", "hello"]);
    assert_exec(&mesh, "mesh exec edge -- echo hello", &out, b"hello\n");
    let report = mesh.admin_json(&["path", "edge", "--json"]);
    assert_eq!(
        report["path"],
        "direct",
        "{report:#}\n{}",
        mesh.daemon_logs()
    );

    // The session: a numbered line every 100 ms.
    let script = format!("for i in $(seq 1 {FLUSH_LINES}); do echo $i; sleep 0.1; done");
    let mut command = mesh.command(
        "laptop",
        "admin",
        &["exec", "edge", "--login", "root", "--", &script],
    );
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let session_started = Instant::now();
    let mut session = KillOnDrop(command.spawn().unwrap());
    let lines = read_stamped(session.0.stdout.take().unwrap());
    let log = read_stamped(session.0.stderr.take().unwrap());
    let since = |t: Instant| t.duration_since(session_started).as_secs_f64();
    let context = |what: &str| {
        let stamped = |lines: &Stamped| {
            lines
                .lock()
                .unwrap()
                .iter()
                .map(|(t, l)| format!("{:7.3} {l}", since(*t)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "{what}\n--- session stdout (seconds since start):\n{}\n--- session stderr:\n{}\n{}",
            stamped(&lines),
            stamped(&log),
            mesh.daemon_logs()
        )
    };

    // The session's UDP sockets: its path socket (the direct path, and its requests to the
    // coordinator), which has a flow to the host's NAT, and its relay connection's.
    let mut ports = Vec::new();
    let mut port = None;
    wait_until(
        "the session's path socket",
        || {
            let flows = udp_flows(&mesh.lab, "home");
            ports = udp_ports_of(&mesh.lab, "laptop", session.0.id());
            port = ports.iter().copied().find(|p| {
                let from = format!("{laptop}:{p}");
                flows
                    .iter()
                    .any(|f| f.original == (from.clone(), at_site.clone()))
            });
            port.is_some()
        },
        || context("no UDP socket of the session sends to the host's NAT"),
    );
    let port = port.unwrap();
    eprintln!("the session's UDP sockets: {ports:?}; the path socket's port {port}");
    watch_paths(&mesh.lab, "home", laptop, &ports, site, hub);
    let sampler = PathSampler::start(mesh.lab.nat_namespace("home").unwrap());
    let socket = std::net::SocketAddrV4::new(laptop, port);
    let mapping = |nat_flows: &[Flow]| {
        nat_flows
            .iter()
            .find(|f| f.original == (socket.to_string(), at_site.clone()))
            .map(|f| f.reply.1.clone())
    };

    // Direct: the host's packets reach the session's socket from the host's NAT, not the relay.
    let mut went_direct = None;
    wait_until(
        "the session goes direct",
        || {
            went_direct = sampler.direct_since(session_started);
            went_direct.is_some()
        },
        || context("the session did not go direct"),
    );
    let went_direct = went_direct.unwrap();
    let before = mapping(&udp_flows(&mesh.lab, "home"))
        .unwrap_or_else(|| panic!("{}", context("no conntrack entry for the direct path")));
    assert_eq!(before, format!("{home}:{port}"), "{}", context("mapping"));

    // 1. A plain flush: `masquerade` keeps the port, so the mapping comes back as it was.
    let flushed = Instant::now();
    flush_conntrack(&mesh.lab, "home");
    let mut after_plain = None;
    wait_until(
        "the direct path's mapping is made again",
        || {
            after_plain = mapping(&udp_flows(&mesh.lab, "home"));
            after_plain.is_some()
        },
        || context("no new mapping after the plain flush"),
    );
    let after_plain = after_plain.unwrap();
    let mut direct_after_plain = None;
    wait_until(
        "the session is direct after the plain flush",
        || {
            direct_after_plain = sampler.direct_since(flushed);
            direct_after_plain.is_some()
        },
        || context("not direct after the plain flush"),
    );
    let direct_after_plain = direct_after_plain.unwrap();
    // Two more seconds of output before the next flush.
    std::thread::sleep(Duration::from_secs(2));

    // 2. The mapping really changes: each of the session's sockets is masqueraded to a port
    // of its own outside the kernel's ephemeral range from now on (so each still maps
    // endpoint-independently), and the table is flushed again.
    let moves: Vec<(u16, u16)> = ports.iter().zip(20_000..).map(|(p, q)| (*p, q)).collect();
    let new_port = moves.iter().find(|(p, _)| *p == port).unwrap().1;
    let rules: String = moves
        .iter()
        .map(|(from, to)| {
            format!(
                "insert rule ip meshlab postrouting oifname \"wan\" ip saddr {laptop} udp \
                 sport {from} masquerade to :{to}\n"
            )
        })
        .collect();
    nft_in_nat(&mesh.lab, "home", &rules);
    let moved = Instant::now();
    let log_before_move = log.lock().unwrap().len();
    flush_conntrack(&mesh.lab, "home");
    let mut back_direct = None;
    wait_until(
        "the session is direct again after its mapping moved",
        || {
            back_direct = sampler.direct_since(moved);
            back_direct.is_some()
        },
        || context("not direct again after the mapping moved"),
    );
    let back_direct = back_direct.unwrap();
    let moved_to = mapping(&udp_flows(&mesh.lab, "home"));
    assert_eq!(
        moved_to,
        Some(format!("{home}:{new_port}")),
        "{}",
        context("the direct path's mapping after the move")
    );
    // Every flow of the session's sockets left from its new port.
    let home_flows = udp_flows(&mesh.lab, "home");
    for (from, to) in &moves {
        let inside = format!("{laptop}:{from}");
        let outside = format!("{home}:{to}");
        let flows: Vec<&Flow> = home_flows
            .iter()
            .filter(|f| f.original.0 == inside)
            .collect();
        assert!(
            !flows.is_empty() && flows.iter().all(|f| f.reply.1 == outside),
            "{}",
            context(&format!("{inside} is not mapped to {outside}: {flows:?}"))
        );
    }
    // The host's NAT sees the session at its new address.
    let site_flows = udp_flows(&mesh.lab, "site");
    let new_addr = format!("{home}:{new_port}");
    assert!(
        site_flows
            .iter()
            .any(|f| f.original.1 == new_addr || f.original.0 == new_addr),
        "{}",
        context(&format!(
            "the host's NAT never saw {new_addr}: {site_flows:?}"
        ))
    );
    let relayed_meanwhile = sampler.relay_in_between(moved, back_direct);
    let first_direct = sampler.first_direct_after(moved).unwrap();

    // The whole stream arrives, once each and in order.
    let deadline = session_started + FLUSH_SESSION_LIMIT;
    let status = loop {
        if let Some(status) = session.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            context(&format!(
                "the session still runs after {FLUSH_SESSION_LIMIT:?}"
            ))
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The readers see the pipes close once the process has gone.
    std::thread::sleep(Duration::from_millis(200));
    let ended = Instant::now();
    let numbers: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| l.clone())
        .collect();
    let want: Vec<String> = (1..=FLUSH_LINES).map(|n| n.to_string()).collect();
    assert!(
        status.success() && numbers == want,
        "{}",
        context(&format!("exit {status:?}, {} lines", numbers.len()))
    );

    // Still direct between the sites, and the session's client said what happened.
    let report = mesh.admin_json(&["path", "edge", "--json"]);
    assert_eq!(report["path"], "direct", "{report:#}\n{}", context(""));
    assert_eq!(report["remote_addr"], at_site.as_str(), "{report:#}");
    let moved_log: Vec<(Instant, String)> = log.lock().unwrap()[log_before_move..].to_vec();
    let logged = |what: &str| {
        moved_log
            .iter()
            .find(|(_, l)| l.contains(what))
            .map(|(t, _)| t.duration_since(moved).as_secs_f64())
    };
    let failed_at = logged("a direct path failed; the relay takes over");
    let asked_at = logged("asked for another rendezvous");
    assert!(
        failed_at.is_some() && asked_at.is_some(),
        "{}",
        context("the client did not log the failure and the new rendezvous")
    );
    assert!(
        relayed_meanwhile >= DIRECT_PACKETS,
        "{}",
        context(&format!(
            "only {relayed_meanwhile} packets came through the relay while the path was down"
        ))
    );

    let stamped = lines.lock().unwrap().clone();
    let stall_plain = longest_gap(&stamped, flushed, direct_after_plain);
    let stall_moved = longest_gap(&stamped, moved, back_direct);
    assert!(
        stall_plain.0.max(stall_moved.0) < FLUSH_STALL_LIMIT,
        "{}",
        context(&format!(
            "the output stalled {:?} at the plain flush, {:?} when the mapping moved",
            stall_plain.0, stall_moved.0
        ))
    );
    assert!(
        back_direct.duration_since(moved) < BACK_TO_DIRECT_LIMIT,
        "{}",
        context(&format!(
            "direct again only {:?} after the mapping moved",
            back_direct.duration_since(moved)
        ))
    );
    let agent_log = mesh.daemon_log("agent edge");
    let agent_failed: Vec<&str> = agent_log
        .lines()
        .filter(|l| l.contains("a direct path failed"))
        .collect();
    eprintln!(
        "session direct at {:.2} s\n\
         plain flush at {:.2} s: the mapping {before} came back as {after_plain}; direct (a \
         full window) again {:.2} s later; longest wait between lines {:?} (line {})\n\
         moved flush at {:.2} s: the mapping went to {moved_to:?}; the client logged the \
         failure {failed_at:?} s and the rendezvous {asked_at:?} s after it; the first packet \
         directly from the host {:.2} s after it, direct for a full window {:.2} s after it \
         ({relayed_meanwhile} packets from the relay meanwhile); longest wait between lines \
         {:?} (line {})\n\
         session's whole output in {:.2} s; whole test {:?}\n\
         timeline (packets in/out per half second):\n{}\n\
         the agent's failures: {agent_failed:#?}\n\
         session stderr:\n{}",
        since(went_direct),
        since(flushed),
        direct_after_plain.duration_since(flushed).as_secs_f64(),
        stall_plain.0,
        stall_plain.1,
        since(moved),
        first_direct.duration_since(moved).as_secs_f64(),
        back_direct.duration_since(moved).as_secs_f64(),
        stall_moved.0,
        stall_moved.1,
        since(ended),
        started.elapsed(),
        sampler
            .timeline(
                session_started,
                flushed - Duration::from_secs(1),
                back_direct + Duration::from_secs(1)
            )
            .join("\n"),
        log.lock()
            .unwrap()
            .iter()
            .map(|(t, l)| format!("{:7.3} {l}", since(*t)))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}
