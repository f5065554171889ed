//! Sessions as a test-created, non-root Unix user, end to end: the agent (`mesh node run`, as
//! root) runs inside a private mount namespace whose `/etc` and `/home` are overlays, where the
//! test creates the user `meshtest` with two supplementary groups. The machine's own files never
//! see that user; the namespace dies with the agent.
//!
//! Each test proves one part of a complete privilege drop: exactly the user's ids and groups
//! with no capabilities, no file descriptor inherited from the agent or the session process,
//! and a login environment built from nothing, whatever the client sends.
//!
//! These tests need root, `unshare` and overlayfs, and skip (saying why) without them, except
//! under `CI`, where a skip fails. They run in nextest's serial `namespace-and-users` group
//! (`.config/nextest.toml`), matched by their `unix_user` names.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_proto::messages::SESSION_ALPN;
use mesh_proto::messages::session::EnvVar;
use mesh_tests::hosts::{Agent, Home, TestCa, exec_command, host_home};
use mesh_tests::mesh_bin;
use tempfile::TempDir;

/// The test user, created only inside the namespace.
const USER: &str = "meshtest";
/// Its two supplementary groups, also created only inside.
const GROUPS: [&str; 2] = ["meshtest-a", "meshtest-b"];

/// Run by `unshare --mount --propagation private sh -c SCRIPT sh WORK PROGRAM ARGS...`: overlays
/// over `/etc` and `/home` (their upper layers on a tmpfs only this namespace sees), the groups
/// and the user, what the user database says of it in `WORK/expected`, an inheritable fd 9
/// ([`CANARY_FD`]), then `exec PROGRAM`, so
/// the agent is the process the test holds and the namespace lives exactly as long as it and
/// its sessions.
const NAMESPACE_SCRIPT: &str = r#"
set -eu
work=$1
shift
mount -t tmpfs -o mode=0755 mesh-users "$work/ns"
for dir in etc home; do
    mkdir "$work/ns/$dir-upper" "$work/ns/$dir-work"
    mount -t overlay overlay \
        -o "lowerdir=/$dir,upperdir=$work/ns/$dir-upper,workdir=$work/ns/$dir-work" "/$dir"
done
groupadd meshtest-a
groupadd meshtest-b
useradd -m -s /bin/sh -G meshtest-a,meshtest-b meshtest
{
    id -u meshtest
    id -g meshtest
    id -G meshtest
    getent passwd meshtest | cut -d: -f6
} > "$work/expected.tmp"
mv "$work/expected.tmp" "$work/expected"
# A descriptor the agent inherits without close-on-exec, as from a careless supervisor or shell:
# sessions must not get it.
exec 9>>"$work/inherited-by-the-agent"
exec "$@"
"#;

/// Only overlays over `/etc` in a private mount namespace: whether this machine can run these
/// tests at all.
const PROBE_SCRIPT: &str = r#"
set -eu
mount -t tmpfs mesh-probe "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc
"#;

/// The descriptor the agent inherits from the namespace script, open on `WORK/`[`CANARY_FILE`].
const CANARY_FD: u32 = 9;
const CANARY_FILE: &str = "inherited-by-the-agent";

/// Set in the agent's own environment: it must not reach a session.
const AGENT_CANARY: &str = "MESH_AGENT_CANARY";

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    if let Some(why) =
        mesh_tests::namespace::unsupported_without(&["unshare", "useradd", "groupadd", "getent"])
    {
        return Some(why);
    }
    let dir = TempDir::new().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(PROBE_SCRIPT)
        .arg("sh")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        return Some(format!(
            "no overlay over /etc in a private mount namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    None
}

/// Skips the calling test (returning from it) when the machine cannot run it.
macro_rules! require_namespaces {
    () => {
        if let Some(why) = unsupported() {
            mesh_tests::skip_test(&why);
            return;
        }
    };
}

/// What the user database inside the namespace says of the test user.
#[derive(Debug)]
struct Expected {
    uid: u32,
    gid: u32,
    /// Primary and supplementary groups.
    groups: BTreeSet<u32>,
    home: String,
}

/// The agent in its namespace, a client home and a grant to log in as the test user. Dropping
/// it stops the agent; [`finish`](Self::finish) also checks that nothing is left behind.
struct UserHost {
    // Dropped first: the agent goes before its work directory.
    agent: Agent,
    host: Home,
    client: Home,
    grant: PathBuf,
    expected: Expected,
    /// `mnt:[inode]` of the namespace, to see it gone.
    namespace: String,
    _work: TempDir,
}

impl UserHost {
    fn start() -> Self {
        assert_machine_untouched("before the test");
        let ca = TestCa::new();
        let host = host_home(&ca, "");
        let work = tempfile::Builder::new()
            .prefix("mesh-users-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(work.path().join("ns")).unwrap();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(NAMESPACE_SCRIPT)
            .arg("sh")
            .arg(work.path())
            .arg(mesh_bin())
            .arg("--home")
            .arg(host.path())
            .args(["node", "run"])
            .env(AGENT_CANARY, "leaked-from-the-agent");
        let agent = Agent::start_with(command);
        // Written before the script exec'd the agent, which has listened since.
        let text = std::fs::read_to_string(work.path().join("expected"))
            .unwrap_or_else(|e| panic!("no expected ids ({e}):\n{}", agent.log()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "expected ids: {text:?}");
        let expected = Expected {
            uid: lines[0].parse().unwrap(),
            gid: lines[1].parse().unwrap(),
            groups: parse_ids(lines[2]),
            home: lines[3].to_owned(),
        };
        assert_ne!(expected.uid, 0, "the test user must not be root");
        assert_eq!(
            expected.groups.len(),
            3,
            "a primary and two supplementary groups: {expected:?}"
        );
        let namespace = std::fs::read_link(format!("/proc/{}/ns/mnt", agent.pid()))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        assert_ne!(
            namespace,
            own.to_string_lossy(),
            "the agent must run in a mount namespace of its own"
        );
        let client = Home::new();
        let grant = ca.grant(
            client.node_id(),
            host.node_id(),
            USER,
            Duration::from_secs(600),
        );
        let grant = ca.grant_file(&grant, client.path());
        Self {
            agent,
            host,
            client,
            grant,
            expected,
            namespace,
            _work: work,
        }
    }

    /// The agent holds an inheritable descriptor: a session that gets none proves something.
    fn assert_agent_holds_the_canary_fd(&self) {
        let target = std::fs::read_link(format!("/proc/{}/fd/{CANARY_FD}", self.agent.pid()))
            .expect("the agent holds the canary descriptor");
        assert!(
            target.ends_with(CANARY_FILE),
            "fd {CANARY_FD} is {target:?}"
        );
    }

    /// `mesh exec --login meshtest`, to completion; fails the test unless it exits 0.
    fn exec(&self, extra: &[&str], command: &str) -> String {
        let extra = [&["--login", USER], extra].concat();
        let out = exec_command(&self.client, &self.agent, &self.grant, &extra, &[command])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "`{command}` failed\nstdout: {stdout}\nstderr: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.agent.log()
        );
        stdout
    }

    /// Stops the agent, then checks that its namespace is gone and the machine's own user
    /// database and `/home` never saw the test user.
    fn finish(self) {
        let namespace = self.namespace.clone();
        drop(self);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = processes_in(&namespace);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes still in the test's namespace {namespace}: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_machine_untouched("after the test");
    }
}

/// Pids of live processes in the mount namespace `namespace` (`mnt:[inode]`).
fn processes_in(namespace: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .is_ok_and(|link| link.to_string_lossy() == namespace)
        })
        .collect()
}

/// The machine's own `/etc/passwd`, `/etc/group` and `/home` have no trace of the test user.
fn assert_machine_untouched(when: &str) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.lines().any(|l| l.starts_with(&format!("{USER}:"))),
        "{when}: {USER} is in the machine's /etc/passwd"
    );
    let group = std::fs::read_to_string("/etc/group").unwrap();
    for name in GROUPS.iter().copied().chain([USER]) {
        assert!(
            !group.lines().any(|l| l.starts_with(&format!("{name}:"))),
            "{when}: {name} is in the machine's /etc/group"
        );
    }
    assert!(
        !Path::new("/home").join(USER).exists(),
        "{when}: /home/{USER} exists on the machine"
    );
}

fn parse_ids(text: &str) -> BTreeSet<u32> {
    text.split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

/// The value of `field:` in `/proc/PID/status` text.
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
}

/// `ls -l /proc/…/fd` output as (fd, target) pairs, by fd.
fn fds(listing: &str) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = listing
        .lines()
        .filter_map(|line| {
            let (name, target) = line.split_once(" -> ")?;
            let fd = name.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.trim().to_owned()))
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn unix_user_session_has_exactly_the_users_ids_and_groups_and_no_capabilities() {
    require_namespaces!();
    let host = UserHost::start();
    let out = host.exec(&[], "id -u; id -g; id -G; cat /proc/self/status");
    let mut lines = out.lines();
    let e = &host.expected;
    assert_eq!(lines.next(), Some(e.uid.to_string().as_str()), "{out}");
    assert_eq!(lines.next(), Some(e.gid.to_string().as_str()), "{out}");
    assert_eq!(parse_ids(lines.next().unwrap()), e.groups, "{out}");

    // Real, effective, saved and filesystem ids, and the kernel's own group list.
    let status = lines.collect::<Vec<_>>().join("\n");
    for field in ["Uid", "Gid"] {
        let want = if field == "Uid" { e.uid } else { e.gid };
        let ids: Vec<u32> = status_field(&status, field)
            .split_whitespace()
            .map(|id| id.parse().unwrap())
            .collect();
        assert_eq!(
            ids, [want; 4],
            "{field}: real, effective, saved, fs\n{status}"
        );
    }
    let mut kernel_groups = parse_ids(status_field(&status, "Groups"));
    // The kernel's list holds the supplementary groups; the primary group may or may not be one.
    kernel_groups.insert(e.gid);
    assert_eq!(kernel_groups, e.groups, "{status}");
    assert!(!kernel_groups.contains(&0), "still in group 0: {status}");
    for caps in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(status_field(&status, caps), 16).unwrap(),
            0,
            "{caps} is not empty: {status}"
        );
    }
    host.finish();
}

#[test]
fn unix_user_session_inherits_no_file_descriptors() {
    require_namespaces!();
    let host = UserHost::start();
    host.assert_agent_holds_the_canary_fd();
    // The shell's own descriptors (`; true` keeps it from exec'ing `ls`), then those of a
    // program it starts, which also holds the directory it is reading.
    let out = host.exec(
        &[],
        "ls -l /proc/$$/fd; echo ---; ls -l /proc/self/fd; true",
    );
    let (shell, program) = out.split_once("---\n").unwrap();
    let shell = fds(shell);
    assert_eq!(
        shell.iter().map(|(fd, _)| *fd).collect::<Vec<_>>(),
        [0, 1, 2],
        "the shell holds more than stdin, stdout and stderr:\n{out}"
    );
    let program = fds(program);
    let extra: Vec<_> = program
        .iter()
        .filter(|(fd, target)| {
            *fd > 2 && !(target.starts_with("/proc/") && target.ends_with("/fd"))
        })
        .collect();
    assert!(extra.is_empty(), "leaked descriptors {extra:?}:\n{out}");
    assert_eq!(program.len(), 4, "0, 1, 2 and the directory:\n{out}");
    host.finish();
}

#[test]
fn unix_user_pty_session_inherits_no_file_descriptors_but_its_terminal() {
    require_namespaces!();
    let host = UserHost::start();
    host.assert_agent_holds_the_canary_fd();
    let out = host.exec(&["-t"], "ls -l /proc/$$/fd; true");
    let shell = fds(&out);
    assert_eq!(
        shell.iter().map(|(fd, _)| *fd).collect::<Vec<_>>(),
        [0, 1, 2],
        "the shell holds more than its terminal:\n{out}"
    );
    for (fd, target) in &shell {
        assert!(
            target.starts_with("/dev/pts/"),
            "fd {fd} is {target}, not the terminal:\n{out}"
        );
    }
    host.finish();
}

#[test]
fn unix_user_session_gets_a_clean_login_environment_whatever_the_client_sends() {
    require_namespaces!();
    let host = UserHost::start();
    let offered = [
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("LD_LIBRARY_PATH", "/tmp/evil"),
        ("BASH_ENV", "/tmp/x"),
        ("ENV", "/tmp/x"),
        ("PATH", "/tmp/evil:/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("USER", "root"),
        ("LANG", "C.UTF-8"),
    ];
    let grant_text = std::fs::read_to_string(&host.grant).unwrap();
    let grant = mesh_proto::grant_file::grant_from_text(grant_text.trim()).unwrap();
    let request = mesh_node::session::client::SessionRequest {
        grant,
        login: mesh_proto::messages::session::LoginRequest::Named(USER.into()),
        command: Some("env; echo \"cwd=$(pwd)\"".into()),
        pty: None,
        env: offered
            .iter()
            .map(|(name, value)| EnvVar {
                name: (*name).into(),
                value: (*value).into(),
            })
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (outcome, stdout, stderr) = runtime.block_on(async {
        let endpoint = mesh_node::control::client_endpoint(host.client.path()).unwrap();
        let conn = endpoint
            .connect(host.agent.addr(), host.host.node_id(), SESSION_ALPN)
            .await
            .unwrap();
        let (send, recv) = conn.quic().open_bi().await.unwrap();
        let session = mesh_node::session::client::open_session(send, recv, request)
            .await
            .unwrap();
        // No stdin (EOF at once), no events.
        let (_, stdin) = tokio::sync::mpsc::channel(1);
        let (_events_tx, events) = tokio::sync::mpsc::channel(1);
        let input = mesh_node::session::client::SessionInput {
            stdin,
            events,
            escapes: false,
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            session.run(input, &mut stdout, &mut stderr),
        )
        .await
        .expect("the session ended within 30 s")
        .unwrap();
        endpoint.close();
        (outcome, stdout, stderr)
    });
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert_eq!(
        outcome.exit_code(),
        0,
        "{outcome:?}\nstdout: {stdout}\nstderr: {stderr}\nagent log:\n{}",
        host.agent.log()
    );
    // A preloaded library that does not exist would make the dynamic loader complain here.
    assert_eq!(stderr, "", "stderr: {stderr}");

    let (env, cwd) = stdout.rsplit_once("cwd=").unwrap();
    let env: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| *value)
    };
    let home = host.expected.home.as_str();
    assert_eq!(home, format!("/home/{USER}"));
    assert_eq!(get("HOME"), Some(home), "{stdout}");
    assert_eq!(get("USER"), Some(USER), "{stdout}");
    assert_eq!(get("LOGNAME"), Some(USER), "{stdout}");
    assert_eq!(get("LANG"), Some("C.UTF-8"), "{stdout}");
    assert_eq!(
        get("PATH"),
        Some(mesh_node::session::account::USER_PATH),
        "{stdout}"
    );
    assert_eq!(cwd.trim_end(), home, "{stdout}");
    for (name, _) in &env {
        assert!(
            !name.starts_with("LD_") && !["BASH_ENV", "ENV", AGENT_CANARY].contains(name),
            "{name} reached the session:\n{stdout}"
        );
    }
    // Nothing beyond the login environment and what the shell itself sets.
    let allowed = [
        "HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "PWD", "OLDPWD", "SHLVL", "_",
    ];
    let unexpected: Vec<_> = env
        .iter()
        .filter(|(name, _)| !allowed.contains(name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected variables {unexpected:?}:\n{stdout}"
    );
    host.finish();
}
