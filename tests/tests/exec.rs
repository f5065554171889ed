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
