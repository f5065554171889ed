//! `mesh exec` end to end: a real agent (`mesh node run`) on loopback, a real client, grants
//! signed by a test CA, as a user would run them.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use mesh_tests::hosts::{Agent, Home, TestCa, current_login, exec_command, host_home};

struct Setup {
    ca: TestCa,
    host: Home,
    agent: Agent,
    client: Home,
    grant: std::path::PathBuf,
}

fn setup(extra_config: &str) -> Setup {
    let ca = TestCa::new();
    let host = host_home(&ca, extra_config);
    let agent = Agent::start(&host);
    let client = Home::new();
    let grant = ca.grant(
        client.node_id(),
        host.node_id(),
        &current_login(),
        Duration::from_secs(600),
    );
    let grant = ca.grant_file(&grant, client.path());
    Setup {
        ca,
        host,
        agent,
        client,
        grant,
    }
}

#[test]
fn stdout_stderr_and_the_exit_code_stay_apart() {
    let s = setup("");
    let out = exec_command(
        &s.client,
        &s.agent,
        &s.grant,
        &[],
        &["sh", "-c", "'echo out; echo err >&2; exit 3'"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\n",
        "{}",
        s.agent.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn stdin_is_piped_through_with_eof() {
    let s = setup("");
    let mut child = exec_command(&s.client, &s.agent, &s.grant, &[], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "abc\n");
    assert_eq!(out.status.code(), Some(0));
}

/// Runs `command` under a grant changed by `adjust`, returning (status, stderr).
fn refused_with(adjust: impl FnOnce(&Setup, &mut mesh_proto::Grant)) -> (Option<i32>, String) {
    let s = setup("");
    let mut grant = s.ca.grant(
        s.client.node_id(),
        s.host.node_id(),
        &current_login(),
        Duration::from_secs(600),
    );
    adjust(&s, &mut grant);
    let file = s.ca.grant_file(&grant, s.client.path());
    let marker = s.client.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let out = exec_command(&s.client, &s.agent, &file, &[], &[&touch])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!marker.exists(), "the refused command ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_expired_grant_is_refused_with_exit_255_and_the_reason() {
    // Valid for a minute, an hour ago: well past the clock-skew tolerance.
    let (code, stderr) = refused_with(|_, g| {
        g.not_before = g.not_before.saturating_sub(Duration::from_secs(3600));
        g.not_after = g.not_before.saturating_add(Duration::from_secs(60));
    });
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_grant_for_another_host_is_refused_with_exit_255_and_the_reason() {
    let other = Home::new();
    let (code, stderr) = refused_with(|_, g| g.host = other.node_id());
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("not the host this grant is for"),
        "{stderr}"
    );
}

#[test]
fn a_grant_for_another_client_key_is_refused_with_exit_255_and_the_reason() {
    let other = Home::new();
    let (code, stderr) = refused_with(|_, g| g.client = other.node_id());
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("wrong client"), "{stderr}");
}

#[test]
fn a_login_the_grant_does_not_name_is_refused() {
    let (code, stderr) = refused_with(|_, g| g.login = "daemon".into());
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("login not allowed"), "{stderr}");
}

/// Waits (bounded) for `child` to exit; panics with `what` if it does not.
fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is gone (or a zombie awaiting its parent).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            == Some("Z")
    })
}

#[test]
fn a_remote_death_by_signal_exits_128_plus_n() {
    let s = setup("");
    let out = exec_command(&s.client, &s.agent, &s.grant, &[], &["kill -9 $$"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exec_with_t_runs_in_a_pty() {
    let s = setup("");
    let out = exec_command(&s.client, &s.agent, &s.grant, &["-t"], &["tty; test -t 0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("/dev/pts/"), "{stdout}");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn sixty_four_mib_of_random_bytes_keep_their_sha256_through_cat() {
    use sha2::{Digest, Sha256};
    const LEN: usize = 64 << 20;
    let s = setup("");
    let mut child = exec_command(&s.client, &s.agent, &s.grant, &[], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // xorshift64*: incompressible, and the same on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 1 << 16];
        for _ in 0..LEN / chunk.len() {
            for word in chunk.chunks_mut(8) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
            }
            hasher.update(&chunk);
            stdin.write_all(&chunk).unwrap();
        }
        hasher.finalize()
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        received += n;
        hasher.update(&buf[..n]);
    }
    let sent = writer.join().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(received, LEN);
    assert_eq!(hasher.finalize(), sent);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_session_over_the_limit_is_refused_before_its_command_starts() {
    let s = setup("[limits]\nmax_sessions = 1\n");
    let mut first = exec_command(
        &s.client,
        &s.agent,
        &s.grant,
        &[],
        &["echo ready; exec sleep 60"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    let marker = s.client.path().join("second-ran");
    let touch = format!("touch {}", marker.display());
    let second = exec_command(&s.client, &s.agent, &s.grant, &[], &[&touch])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("max_sessions"), "{stderr}");
    assert!(!marker.exists(), "the refused command ran");
    // SIGTERM: the client hangs the session up and exits.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_bounded(&mut first, Duration::from_secs(20), "SIGTERMed client");
    assert_eq!(status.code(), Some(128 + 15));
}

#[test]
fn an_idle_session_is_closed_at_the_idle_timeout_with_the_limit_named() {
    let s = setup("[limits]\nidle_timeout = \"1s\"\n");
    let mut child = exec_command(&s.client, &s.agent, &s.grant, &[], &["sleep 60"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(30), "idle session");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("idle_timeout"), "{stderr}");
}

#[test]
fn an_unreachable_host_fails_with_255_not_a_remote_code() {
    let s = setup("");
    // A port that exists but never answers: nothing speaks QUIC there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let grant = s.grant.clone();
    let out = std::process::Command::new(mesh_tests::mesh_bin())
        .arg("--home")
        .arg(s.client.path())
        .args([
            "exec",
            "--direct",
            &silent.local_addr().unwrap().to_string(),
            "--grant",
        ])
        .arg(grant)
        .args(["edge", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

/// Starts a remote shell with a background job, and returns the client and the pids of the
/// remote shell and its job.
fn session_with_a_background_job(s: &Setup) -> (std::process::Child, Vec<i32>) {
    let mut client = exec_command(
        &s.client,
        &s.agent,
        &s.grant,
        &[],
        &["sleep 300 & echo $$ $!; wait"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    assert!(pids.iter().all(|p| !gone(*p)), "both run");
    (client, pids)
}

/// Waits (bounded) until every pid is gone; returns how long that took.
fn all_gone_within(pids: &[i32], limit: Duration, what: &str) -> Duration {
    let start = std::time::Instant::now();
    while !pids.iter().all(|p| gone(*p)) {
        assert!(start.elapsed() < limit, "remote processes {pids:?} {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn a_client_killed_with_sigkill_leaves_no_remote_processes() {
    let s = setup("");
    let (mut client, pids) = session_with_a_background_job(&s);
    client.kill().unwrap();
    client.wait().unwrap();
    // The host learns of it at the session's idle timeout (20 s: a shell survives a 10 s
    // outage), then hangs up with a 2 s grace.
    let took = all_gone_within(&pids, Duration::from_secs(30), "survive the client");
    eprintln!("remote processes gone {took:?} after SIGKILL");
}

#[test]
fn stopping_the_agent_hangs_up_its_sessions() {
    let s = setup("");
    let (mut client, pids) = session_with_a_background_job(&s);
    // Dropping the agent sends it SIGTERM and waits for it to exit.
    drop(s.agent);
    all_gone_within(&pids, Duration::from_secs(15), "outlive the agent");
    let status = wait_bounded(
        &mut client,
        Duration::from_secs(20),
        "client of a stopped agent",
    );
    assert_eq!(status.code(), Some(255));
}

/// Resident memory of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The agent's children: its session processes.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    == Some(&parent.to_string())
            })
        })
        .collect()
}

#[test]
fn a_stalled_reader_of_cat_dev_zero_keeps_every_process_under_64_mib() {
    const STALL: Duration = Duration::from_secs(30);
    const BOUND_KIB: u64 = 64 * 1024;
    let s = setup("");
    let mut client = exec_command(&s.client, &s.agent, &s.grant, &[], &["cat /dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    // The reader stalls, as `| (sleep 30; head -c 1)` does, while we sample every process.
    let start = std::time::Instant::now();
    let mut peak = (0u64, 0u64, 0u64);
    let mut sampled_session = false;
    while start.elapsed() < STALL {
        let sessions: u64 = children_of(s.agent.pid())
            .into_iter()
            .filter_map(rss_kib)
            .sum();
        sampled_session |= sessions > 0;
        peak.0 = peak.0.max(rss_kib(s.agent.pid()).unwrap_or(0));
        peak.1 = peak.1.max(sessions);
        peak.2 = peak.2.max(rss_kib(client.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut byte).unwrap();
    assert_eq!(byte, [0]);
    drop(stdout);
    wait_bounded(
        &mut client,
        Duration::from_secs(20),
        "client after its reader left",
    );
    eprintln!(
        "peak RSS during the stall: agent {} KiB, session process {} KiB, client {} KiB",
        peak.0, peak.1, peak.2
    );
    assert!(sampled_session, "the session process was never seen");
    assert!(
        peak.0 < BOUND_KIB && peak.1 < BOUND_KIB && peak.2 < BOUND_KIB,
        "{peak:?}"
    );
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn sessions_leave_no_fds_or_session_processes_behind_in_the_agent() {
    let s = setup("");
    let agent = s.agent.pid();
    // One session first, so that lazily created runtime resources are counted in the baseline.
    let warm = exec_command(&s.client, &s.agent, &s.grant, &[], &["true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(warm.status.code(), Some(0));
    let baseline = fd_count(agent);
    for args in [&[][..], &["-t"][..]] {
        for _ in 0..3 {
            let out = exec_command(&s.client, &s.agent, &s.grant, args, &["echo hi"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0));
        }
    }
    let start = std::time::Instant::now();
    while fd_count(agent) > baseline || !children_of(agent).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agent fds {} (baseline {baseline}), session processes {:?}",
            fd_count(agent),
            children_of(agent)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_shell_without_a_terminal_reads_its_commands_from_stdin() {
    let s = setup("");
    let mut child = std::process::Command::new(mesh_tests::mesh_bin())
        .arg("--home")
        .arg(s.client.path())
        .args(["shell", "--direct", &s.agent.addr().to_string(), "--grant"])
        .arg(&s.grant)
        .arg("edge")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-stdin-$((6*7))\nexit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-stdin-42"),
        "{stderr}"
    );
    assert!(stderr.contains("not a terminal"), "ssh's notice: {stderr}");
    assert_eq!(out.status.code(), Some(4));
}
