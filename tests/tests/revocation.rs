//! Revocation end to end: pushed to hosts at once, ending live sessions within seconds, refusing
//! a revoked device's next request, and surviving an agent restart with the coordinator gone.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::fleet::{Daemon, Fleet, mesh_in, run_in, text};
use mesh_tests::hosts::current_login;
use mesh_tests::tmux::{LOCAL_PROMPT, Tmux};

/// A role that may run commands as the test's own account on every host.
fn add_ops_role(fleet: &Fleet) {
    let me = current_login();
    let out = fleet.admin(&[
        "role",
        "add",
        "ops",
        "--permission",
        "shell",
        "--permission",
        "exec",
        "--hosts",
        "*",
        "--login",
        &me,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn device_key(fleet: &Fleet, name: &str) -> String {
    mesh_node::keyfile::read_secret_key(&fleet.home(name).join("key"))
        .unwrap()
        .node_id()
        .to_string()
}

/// `mesh exec edge-01` as `user`, running a command that stays up; returns once it is running.
fn open_session(fleet: &Fleet, user: &str) -> Child {
    let me = current_login();
    let mut session = mesh_in(
        &fleet.home(user),
        &[
            "exec",
            "edge-01",
            "--login",
            &me,
            "--",
            "echo ready; exec sleep 300",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(session.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    session
}

/// Waits for `session` to end, at most 5 s after `since`; returns its stderr after checking
/// that it exited 255 saying it was revoked.
fn ended_as_revoked_within_five_seconds(session: &mut Child, since: Instant) -> String {
    let status = loop {
        if let Some(status) = session.try_wait().unwrap() {
            break status;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("session ended {:?} after the revocation", since.elapsed());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut session.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    stderr
}

#[test]
fn revoking_a_user_ends_their_open_session_within_five_seconds() {
    let fleet = Fleet::start();
    let _host = fleet.add_host("edge-01");
    add_ops_role(&fleet);
    fleet.add_user("olga", "ops");
    let mut session = open_session(&fleet, "olga");

    let out = fleet.admin(&["revoke", "user", "olga"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    assert!(
        text(&out.stdout).contains("1 online host(s) told"),
        "{}",
        text(&out.stdout)
    );
    ended_as_revoked_within_five_seconds(&mut session, revoked_at);
    // And olga gets nothing new.
    let out = run_in(
        &fleet.home("olga"),
        &["exec", "edge-01", "--login", &current_login(), "--", "true"],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn revoking_a_user_ends_their_open_shell_in_a_terminal_within_five_seconds() {
    if !mesh_tests::tmux::installed() {
        mesh_tests::skip_test("tmux is not installed (apt-get install tmux)");
        return;
    }
    let fleet = Fleet::start();
    let _host = fleet.add_host("edge-01");
    add_ops_role(&fleet);
    fleet.add_user("olga", "ops");
    // A script keeps the typed line short.
    let script = fleet.home("olga").join("shell-to-edge");
    std::fs::write(
        &script,
        format!(
            "exec '{}' --home '{}' shell edge-01 --login '{}'\n",
            mesh_tests::mesh_bin().display(),
            fleet.home("olga").display(),
            current_login()
        ),
    )
    .unwrap();
    let tmux = Tmux::start("revoke-shell");
    tmux.wait_for_text(LOCAL_PROMPT);
    tmux.type_line(&format!(
        "sh '{}'; echo \"client-exit=$?\"",
        script.display()
    ));
    tmux.wait_for_raw_mode(String::new);
    tmux.type_line("echo shell-is-\"\"open");
    tmux.wait_for_text("shell-is-open");

    let out = fleet.admin(&["revoke", "user", "olga"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    let code = tmux.wait_for_client_exit();
    let took = revoked_at.elapsed();
    eprintln!("the shell ended {took:?} after the revocation (screen polled every 50 ms)");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(code, 255, "{}", tmux.screen());
    assert!(tmux.screen().contains("revoked"), "{}", tmux.screen());
}

#[test]
fn removing_a_user_revokes_their_grants_and_ends_their_open_session() {
    let fleet = Fleet::start();
    let host = fleet.add_host("edge-01");
    add_ops_role(&fleet);
    fleet.add_user("olga", "ops");
    let mut session = open_session(&fleet, "olga");
    // A grant already in olga's hands, usable without the coordinator.
    let out = run_in(
        &fleet.coordinator.home(),
        &[
            "coordinator",
            "grant",
            "--user",
            "olga",
            "--host",
            "edge-01",
            "--login",
            &current_login(),
            "--ttl",
            "1h",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let grant_file = fleet.home("olga").join("kept.grant");
    std::fs::write(&grant_file, &out.stdout).unwrap();

    let out = fleet.admin(&["user", "remove", "olga"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let removed_at = Instant::now();
    assert!(
        text(&out.stdout).contains("revoked"),
        "{}",
        text(&out.stdout)
    );
    ended_as_revoked_within_five_seconds(&mut session, removed_at);
    let addr = host.listening_addr();
    let out = run_in(
        &fleet.home("olga"),
        &[
            "exec",
            "edge-01",
            "--grant",
            grant_file.to_str().unwrap(),
            "--direct",
            &addr,
            "--",
            "echo",
            "must-not-run",
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_revoked_device_is_refused_and_a_restarted_agent_still_refuses_its_grant() {
    let mut fleet = Fleet::start();
    let host = fleet.add_host("edge-01");
    add_ops_role(&fleet);
    fleet.add_user("pat", "ops");
    let me = current_login();
    let pat = fleet.home("pat");
    let out = run_in(
        &pat,
        &["exec", "edge-01", "--login", &me, "--", "echo", "before"],
    );
    assert_eq!(text(&out.stdout), "before\n", "{}", text(&out.stderr));
    // An offline grant file for pat's device, minted before the revocation.
    let out = run_in(
        &fleet.coordinator.home(),
        &[
            "coordinator",
            "grant",
            "--user",
            "pat",
            "--host",
            "edge-01",
            "--login",
            &me,
            "--ttl",
            "2h",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let grant_file = pat.join("minted.grant");
    std::fs::write(&grant_file, &out.stdout).unwrap();

    let out = fleet.admin(&["revoke", "device", &device_key(&fleet, "pat")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_in(&pat, &["exec", "edge-01", "--login", &me, "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("was revoked"),
        "{}",
        text(&out.stderr)
    );

    // The host heard it; stop everything, restart the agent alone, present the old grant.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.log().contains("revocation received") {
        assert!(
            Instant::now() < deadline,
            "the host never heard:\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(host);
    fleet.coordinator.kill();
    let restarted = Daemon::spawn(
        mesh_in(&fleet.home("edge-01"), &["node", "run"]),
        "listening on",
    );
    let addr = restarted.listening_addr();
    let out = run_in(
        &pat,
        &[
            "exec",
            "edge-01",
            "--grant",
            grant_file.to_str().unwrap(),
            "--direct",
            &addr,
            "--",
            "echo",
            "must-not-run",
        ],
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}
