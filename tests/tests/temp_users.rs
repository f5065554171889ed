//! Temporary root accounts end to end (`mesh exec HOST --temp`): a real coordinator, a real
//! agent running as root inside a private mount namespace whose `/etc` and `/home` are
//! overlays ([`MountNamespace`]), real `useradd`, sudoers drop-ins and `sudo`.
//!
//! Each test checks what a fleet admin relies on: the session runs as a fresh account that
//! has root through sudo; when it must end (temporary users turned off, the grant expired
//! with the coordinator gone, the agent killed and restarted) the account, its home, its
//! drop-in and its processes are gone; a refusal creates nothing; and an account the agent
//! did not make is never touched.
//!
//! They run in nextest's serial `namespace-and-users` group, and need root, util-linux,
//! passwd and sudo (installed by `.ci/run`).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mesh_node::temp_accounts::system::processes_of;
use mesh_tests::fleet::{Daemon, Fleet, mesh_in, run_in, text};
use mesh_tests::namespace::{MountNamespace, unsupported};

/// What the issue promises for ending a temporary session while the host is connected.
const PROMISED: Duration = Duration::from_secs(5);

/// Skips the calling test (returning from it) when the machine cannot run it.
macro_rules! require_namespaces {
    () => {
        if let Some(why) = unsupported() {
            mesh_tests::skip_test(&why);
            return;
        }
    };
}

/// A fleet whose host `edge` runs in a mount namespace of its own, with the role `temp-ops`
/// (exec, shell, temp-users on every host) and the user `olga` in it.
struct TempHost {
    // Dropped before the namespace, which dies with its last process.
    agent: Option<Daemon>,
    ns: MountNamespace,
    host_home: PathBuf,
    fleet: Fleet,
}

impl TempHost {
    fn start() -> Self {
        let fleet = Fleet::start();
        let ns = MountNamespace::create();
        let host_home = fleet.enroll_host("edge");
        let mut host = Self {
            agent: None,
            ns,
            host_home,
            fleet,
        };
        host.start_agent();
        host.role("temp-ops", &["exec", "shell", "temp-users"]);
        host.fleet.add_user("olga", "temp-ops");
        host
    }

    fn start_agent(&mut self) {
        let command = self.ns.enter(&mesh_in(&self.host_home, &["node", "run"]));
        self.agent = Some(Daemon::spawn(command, "connected to the coordinator"));
    }

    fn agent(&self) -> &Daemon {
        self.agent.as_ref().unwrap()
    }

    fn role(&self, name: &str, permissions: &[&str]) {
        self.role_with_login(name, permissions, "nobody");
    }

    /// The role `name` on every host with `permissions` and the one login `login`.
    fn role_with_login(&self, name: &str, permissions: &[&str], login: &str) {
        let mut args = vec!["role", "add", name, "--hosts", "*", "--login", login];
        for p in permissions {
            args.extend(["--permission", p]);
        }
        let out = self.fleet.admin(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// `mesh host set edge temp-users=on|off`, and waits until the agent has heard it.
    fn temp_users(&self, on: bool) {
        let value = if on { "on" } else { "off" };
        let before = self.settings_heard();
        let out = self
            .fleet
            .admin(&["host", "set", "edge", &format!("temp-users={value}")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        eventually("the agent hears the setting", || {
            self.settings_heard() > before
        });
    }

    fn settings_heard(&self) -> usize {
        self.agent()
            .log()
            .matches("settings changed by the coordinator")
            .count()
    }

    /// `mesh exec edge --temp ... -- SCRIPT` as `user`, running in the background with
    /// its output piped; `extra` goes before `--`.
    fn spawn_temp(&self, user: &str, extra: &[&str], script: &str) -> Child {
        let mut args = vec!["exec", "edge", "--temp"];
        args.extend(extra);
        // Like ssh, the host runs the command line under the account's shell.
        args.extend(["--", script]);
        mesh_in(&self.fleet.home(user), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A temporary grant for `user` on `edge` lasting `ttl`, minted offline by the coordinator's
    /// CA (`mesh coordinator grant --temp`), saved in the user's home; its path.
    fn mint_temp_grant(&self, user: &str, ttl: &str) -> PathBuf {
        let out = run_in(
            &self.fleet.coordinator.home(),
            &[
                "coordinator",
                "grant",
                "--user",
                user,
                "--host",
                "edge",
                "--temp",
                "--ttl",
                ttl,
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let grant = self.fleet.home(user).join("temp.grant");
        std::fs::write(&grant, &out.stdout).unwrap();
        grant
    }

    /// The agent's ledger of temporary accounts.
    fn ledger(&self) -> String {
        std::fs::read_to_string(self.host_home.join("temp-accounts.toml")).unwrap_or_default()
    }

    /// Every account whose name looks temporary, inside the namespace.
    fn temp_like_accounts(&self) -> Vec<String> {
        let out = self.ns.run("getent", &["passwd"]);
        text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("mesh-tmp-"))
            .map(str::to_owned)
            .collect()
    }
}

/// One temporary account as seen from inside its session and in the namespace.
#[derive(Debug)]
struct Seen {
    name: String,
    uid: u32,
    home: PathBuf,
}

impl Seen {
    /// Reads `id -un` from the first line of `child`'s stdout, then waits for `ready`, and
    /// looks the account up. Returns the other lines read.
    fn from_session(host: &TempHost, child: &mut Child) -> (Self, Vec<String>) {
        let stdout = child.stdout.as_mut().unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "ready" {
                break;
            }
            lines.push(line);
        }
        assert!(!lines.is_empty(), "the session printed nothing");
        let name = lines.remove(0);
        assert!(
            name.starts_with("mesh-tmp-"),
            "id -un in the session: {name:?}"
        );
        let entry = host
            .ns
            .passwd(&name)
            .unwrap_or_else(|| panic!("{name} is not in the namespace's user database"));
        let fields: Vec<&str> = entry.split(':').collect();
        assert!(
            fields[4].starts_with("mesh temporary account for "),
            "the GECOS mark: {entry}"
        );
        assert_eq!(
            fields[2], fields[3],
            "the account's group has the same never-reused id as its uid: {entry}"
        );
        let seen = Self {
            name,
            uid: fields[2].parse().unwrap(),
            home: PathBuf::from(fields[5]),
        };
        (seen, lines)
    }

    fn drop_in(&self) -> PathBuf {
        Path::new("/etc/sudoers.d").join(&self.name)
    }

    /// Whether anything of the account is left: its user database entry, home, drop-in or
    /// processes.
    fn leftovers(&self, ns: &MountNamespace) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(entry) = ns.passwd(&self.name) {
            left.push(format!("account: {entry}"));
        }
        let group = ns.run("getent", &["group", &self.name]);
        if group.status.success() {
            left.push(format!("group: {}", text(&group.stdout).trim()));
        }
        if ns.exists(&self.home) {
            left.push(format!("home {}", self.home.display()));
        }
        if ns.exists(&self.drop_in()) {
            left.push(format!("drop-in {}", self.drop_in().display()));
        }
        let pids = processes_of(self.uid);
        if !pids.is_empty() {
            left.push(format!("processes {pids:?}"));
        }
        left
    }

    fn assert_exists(&self, ns: &MountNamespace) {
        assert!(ns.exists(&self.home), "{} has no home", self.name);
        assert!(ns.exists(&self.drop_in()), "{} has no drop-in", self.name);
        assert!(
            !processes_of(self.uid).is_empty(),
            "{}'s session runs no process",
            self.name
        );
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits up to `limit` for `child` to exit; returns its status and when it was seen gone.
fn exited_within(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Instant)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, Instant::now()));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

/// Waits until nothing of `seen` is left, up to `limit`; returns how long it took.
fn gone_within(seen: &Seen, ns: &MountNamespace, since: Instant, limit: Duration) -> Duration {
    loop {
        let left = seen.leftovers(ns);
        if left.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{} not cleaned up within {limit:?}: {left:?}",
            seen.name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const SESSION: &str = "id -un; sudo -n id -u; echo ready; exec sleep 1000";

#[test]
fn namespace_temp_session_has_root_and_temp_users_off_removes_everything_within_five_seconds() {
    require_namespaces!();
    let host = TempHost::start();
    host.temp_users(true);
    host.fleet.add_user("pavel", "temp-ops");

    let mut olga = host.spawn_temp("olga", &[], SESSION);
    let (olga_account, rest) = Seen::from_session(&host, &mut olga);
    assert_eq!(rest, ["0"], "sudo -n id -u in the temporary session");
    olga_account.assert_exists(&host.ns);
    // One user's sessions share an account; another user's never do.
    let mut olga_again = host.spawn_temp("olga", &[], SESSION);
    let (same, _) = Seen::from_session(&host, &mut olga_again);
    assert_eq!(same.name, olga_account.name);
    assert_eq!(same.uid, olga_account.uid);
    let mut pavel = host.spawn_temp("pavel", &[], SESSION);
    let (pavel_account, _) = Seen::from_session(&host, &mut pavel);
    assert_ne!(pavel_account.name, olga_account.name);
    assert_ne!(pavel_account.uid, olga_account.uid);
    assert!(
        host.ledger().contains(&olga_account.name),
        "{}",
        host.ledger()
    );
    // A user whose role allows any login still cannot name someone's temporary account.
    host.role_with_login("any-login", &["exec"], "*");
    host.fleet.add_user("ivan", "any-login");
    let out = run_in(
        &host.fleet.home("ivan"),
        &["exec", "edge", "--login", &olga_account.name, "--", "id"],
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("is a temporary account"),
        "{}",
        text(&out.stderr)
    );

    let off = Instant::now();
    let out = host.fleet.admin(&["host", "set", "edge", "temp-users=off"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for client in [&mut olga, &mut olga_again, &mut pavel] {
        let (status, _) = exited_within(client, PROMISED)
            .unwrap_or_else(|| panic!("a temporary session outlived temp-users=off by 5 s"));
        assert_eq!(status.code(), Some(255));
        let err = stderr_of(client);
        assert!(
            err.contains("temporary users were turned off"),
            "the client says why: {err}"
        );
    }
    let olga_gone = gone_within(&olga_account, &host.ns, off, PROMISED);
    let pavel_gone = gone_within(&pavel_account, &host.ns, off, PROMISED);
    eprintln!(
        "temp-users=off → sessions ended and accounts gone: olga {olga_gone:?}, pavel {pavel_gone:?}"
    );
    assert!(
        !host.ledger().contains("mesh-tmp-"),
        "the ledger forgets deleted accounts: {}",
        host.ledger()
    );
    // The audit trail names the temporary account and why its sessions ended.
    let events = eventually_audited(&host, "olga", 4);
    let started: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "session-started")
        .collect();
    assert_eq!(started.len(), 2, "{events:#?}");
    for event in started {
        assert_eq!(event["temporary"], true, "{event:#}");
        assert_eq!(event["login"], olga_account.name.as_str(), "{event:#}");
    }
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "session-ended")
        .collect();
    assert_eq!(ended.len(), 2, "{events:#?}");
    for event in ended {
        assert!(
            event["reason"]
                .as_str()
                .is_some_and(|r| r.contains("temporary users were turned off")),
            "{event:#}"
        );
    }
}

/// `user`'s audit events on `edge` once the coordinator has at least `count` of them (the
/// host uploads in the background); fails after 10 s.
fn eventually_audited(host: &TempHost, user: &str, count: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let out = host
            .fleet
            .admin(&["audit", "--json", "--host", "edge", "--user", user]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if events.len() >= count {
            return events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{user}'s audit events never reached the coordinator: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn namespace_temp_session_ends_at_grant_expiry_with_the_coordinator_stopped() {
    require_namespaces!();
    let mut host = TempHost::start();
    host.temp_users(true);
    let ttl = Duration::from_secs(4);
    let minted = Instant::now();
    let grant = host.mint_temp_grant("olga", "4s");
    host.fleet.coordinator.kill();

    let addr = host.agent().listening_addr();
    let grant_arg = grant.to_string_lossy().into_owned();
    let mut session = host.spawn_temp(
        "olga",
        &["--grant", &grant_arg, "--direct", &addr],
        "id -un; echo ready; exec sleep 1000",
    );
    let (account, _) = Seen::from_session(&host, &mut session);
    account.assert_exists(&host.ns);
    let (status, ended) = exited_within(&mut session, ttl + PROMISED)
        .expect("the temporary session outlived its grant");
    assert_eq!(status.code(), Some(255));
    let err = stderr_of(&mut session);
    assert!(err.contains("temporary grant expired"), "{err}");
    assert!(
        ended.duration_since(minted) >= ttl - Duration::from_millis(500),
        "ended {:?} after minting, before its {ttl:?} grant expired",
        ended.duration_since(minted)
    );
    let took = gone_within(&account, &host.ns, ended, PROMISED);
    eprintln!(
        "grant expiry → session ended {:?} after minting a {ttl:?} grant; account gone {took:?} later",
        ended.duration_since(minted)
    );
}

#[test]
fn namespace_stopping_the_agent_removes_its_temporary_accounts_and_escaped_processes() {
    require_namespaces!();
    let mut host = TempHost::start();
    host.temp_users(true);
    // A process that left the session's Unix session: the session's hangup does not reach
    // it, only killing the uid does.
    let mut session = host.spawn_temp(
        "olga",
        &[],
        "id -un; setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & \
         echo ready; exec sleep 1000",
    );
    let (account, _) = Seen::from_session(&host, &mut session);
    account.assert_exists(&host.ns);
    let status = host.agent.as_mut().unwrap().stop();
    assert!(status.success(), "the agent's exit: {status}");
    let left = account.leftovers(&host.ns);
    assert!(
        left.is_empty(),
        "left after the agent stopped: {left:?}\n{}",
        host.agent().log()
    );
    assert!(!host.ledger().contains("mesh-tmp-"), "{}", host.ledger());
    let _ = session.wait();
}

#[test]
fn namespace_leftover_temp_account_of_a_killed_agent_is_removed_and_a_lookalike_survives() {
    require_namespaces!();
    let mut host = TempHost::start();
    host.temp_users(true);
    // Named like a temporary account, but not this agent's: it must survive the clean-up.
    let out = host.ns.run(
        "useradd",
        &[
            "--no-log-init",
            "--comment",
            "someone else",
            "mesh-tmp-4242",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut session = host.spawn_temp("olga", &[], SESSION);
    let (account, _) = Seen::from_session(&host, &mut session);
    host.agent = None; // SIGKILL: no chance to clean up.
    let _ = session.kill();
    let _ = session.wait();
    assert!(
        host.ns.passwd(&account.name).is_some(),
        "the killed agent could not have removed {}",
        account.name
    );

    host.start_agent();
    // The clean-up runs before the agent listens, so it is done by now.
    let left = account.leftovers(&host.ns);
    assert!(
        left.is_empty(),
        "left after the restart: {left:?}\n{}",
        host.agent().log()
    );
    assert!(
        host.agent()
            .log()
            .contains("removed leftover temporary account"),
        "{}",
        host.agent().log()
    );
    let lookalike = host.ns.passwd("mesh-tmp-4242");
    assert!(
        lookalike.is_some_and(|l| l.contains("someone else")),
        "an account the agent did not make survives"
    );
}

#[test]
fn namespace_temp_refusals_name_their_reason_and_create_nothing() {
    require_namespaces!();
    let host = TempHost::start();
    host.role("plain", &["exec", "shell"]);
    host.fleet.add_user("vera", "plain");

    // The host does not allow temporary users (the default).
    let out = run_in(
        &host.fleet.home("olga"),
        &["exec", "edge", "--temp", "--", "id"],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("temporary users are off on edge"),
        "{}",
        text(&out.stderr)
    );

    // The role lacks the permission.
    host.temp_users(true);
    let out = run_in(
        &host.fleet.home("vera"),
        &["exec", "edge", "--temp", "--", "id"],
    );
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("temporary account") && err.contains("vera"),
        "{err}"
    );

    // A grant minted while allowed, used after the host was told no: the host refuses.
    let grant = host.mint_temp_grant("olga", "1h");
    host.temp_users(false);
    let addr = host.agent().listening_addr();
    let out = run_in(
        &host.fleet.home("olga"),
        &[
            "exec",
            "edge",
            "--temp",
            "--grant",
            &grant.to_string_lossy(),
            "--direct",
            &addr,
            "--",
            "id",
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("temporary users are off on this host"),
        "{}",
        text(&out.stderr)
    );

    assert!(
        host.temp_like_accounts().is_empty(),
        "{:?}",
        host.temp_like_accounts()
    );
    assert!(!host.ledger().contains("mesh-tmp-"), "{}", host.ledger());
    // The host's refusal is in the audit trail, marked temporary, with its reason.
    let events = eventually_audited(&host, "olga", 1);
    assert_eq!(events[0]["kind"], "refused", "{events:#?}");
    assert_eq!(events[0]["temporary"], true, "{events:#?}");
    assert!(
        events[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("temporary users are off on this host")),
        "{events:#?}"
    );
}
