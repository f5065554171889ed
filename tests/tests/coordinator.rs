//! The coordinator end to end, each identity in its own `--home`, real processes on loopback:
//! enrollment, grants by name, the directory, host settings, restarts, refusals.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use mesh_tests::fleet::{Fleet, run_in, run_with_stdin, text};
use mesh_tests::hosts::current_login;

/// Polls `check` (bounded) until it holds.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_online(fleet: &Fleet, name: &str) -> bool {
    let out = fleet.admin(&["hosts", "--json"]);
    if !out.status.success() {
        return false;
    }
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    hosts
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == name && h["online"] == true)
}

#[test]
fn init_serve_invite_join_login_exec_and_the_host_returns_after_a_coordinator_restart() {
    let mut fleet = Fleet::start();
    let _host = fleet.add_host("edge-01");
    let out = fleet.admin(&["exec", "edge-01", "--", "echo", "hi"]);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    let out = fleet.admin(&["hosts", "--json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let edge = &hosts[0];
    for key in [
        "name",
        "node_id",
        "online",
        "labels",
        "remote_shell",
        "temp_users",
    ] {
        assert!(edge.get(key).is_some(), "{key} missing: {edge}");
    }
    assert_eq!(edge["online"], true);

    fleet.coordinator.kill();
    let out = fleet.admin(&["hosts"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "coordinator down: {}",
        text(&out.stderr)
    );
    fleet.coordinator.start();
    // The host reconnects by itself (backoff with jitter), without being restarted.
    eventually("host online again", Duration::from_secs(60), || {
        host_online(&fleet, "edge-01")
    });
    let out = fleet.admin(&["exec", "edge-01", "--", "echo", "again"]);
    assert_eq!(text(&out.stdout), "again\n", "{}", text(&out.stderr));
}

#[test]
fn roles_decide_logins_and_commands_with_the_reason() {
    let fleet = Fleet::start();
    let _host = fleet.add_host("edge-01");
    fleet.add_user("olga", "operator");
    fleet.add_user("vic", "viewer");
    let olga = fleet.home("olga");
    let out = run_in(&olga, &["exec", "edge-01", "--login", "root", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("olga may not log in as root on edge-01"),
        "{}",
        text(&out.stderr)
    );
    let out = run_in(&fleet.home("vic"), &["exec", "edge-01", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("vic may not run commands"),
        "{}",
        text(&out.stderr)
    );
    // A viewer still sees the directory.
    let out = run_in(&fleet.home("vic"), &["hosts"]);
    assert!(
        text(&out.stdout).contains("edge-01"),
        "{}",
        text(&out.stderr)
    );
    // Only admins invite.
    let out = run_in(&olga, &["invite", "host", "--name", "sneaky"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("issue credentials"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn remote_shell_off_refuses_new_sessions_at_once_and_on_brings_them_back() {
    let fleet = Fleet::start();
    let host = fleet.add_host("edge-01");
    let login = current_login();
    let exec = || fleet.admin(&["exec", "edge-01", "--login", &login, "--", "echo", "ok"]);
    assert_eq!(exec().status.code(), Some(0));
    let out = fleet.admin(&["host", "set", "edge-01", "remote-shell=off"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the host has been told"),
        "{}",
        text(&out.stdout)
    );
    let out = exec();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("remote shell is off on edge-01"),
        "{}",
        text(&out.stderr)
    );
    // The host itself heard it too (it refuses even grants issued before the change).
    eventually(
        "the host applied the setting",
        Duration::from_secs(5),
        || host.log().contains("settings changed"),
    );
    fleet.admin(&["host", "set", "edge-01", "remote-shell=on"]);
    let out = exec();
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
}

#[test]
fn tokens_are_one_time_and_names_belong_to_one_key() {
    let fleet = Fleet::start();
    let token = fleet.invite(&["invite", "host", "--name", "edge-01"]);
    let first = fleet.home("first");
    let out = run_with_stdin(&first, &["node", "join", "-"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The same token again, from another machine.
    let out = run_with_stdin(&fleet.home("second"), &["node", "join", "-"], &token);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already used"),
        "{}",
        text(&out.stderr)
    );
    // A fresh invite for the enrolled name is refused up front.
    let out = fleet.admin(&["invite", "host", "--name", "edge-01"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already enrolled"),
        "{}",
        text(&out.stderr)
    );
    // Pending invites can be listed and withdrawn.
    fleet.invite(&["invite", "host", "--name", "edge-02"]);
    let out = fleet.admin(&["invite", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["name"], "edge-02");
    assert!(fleet.admin(&["invite", "revoke", &id]).status.success());
    let out = fleet.admin(&["invite", "list", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn a_corrupt_database_or_a_second_init_is_one_line_and_changes_nothing() {
    let (coordinator, _) = mesh_tests::fleet::TestCoordinator::init();
    let home = coordinator.home();
    let out = run_in(&home, &["coordinator", "init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already"),
        "{}",
        text(&out.stderr)
    );
    let db = home.join("coordinator.db");
    let garbage = vec![0x42u8; 16 * 1024];
    std::fs::write(&db, &garbage).unwrap();
    let out = run_in(&home, &["coordinator", "serve"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("coordinator.db"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage, "untouched");
}

#[test]
fn the_demo_runs_a_command_on_a_whole_mesh_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(mesh_tests::mesh_bin())
        .args(["demo", "--exec", "echo demo-ok; exit 3"])
        .env("TMPDIR", tmp.path())
        .env_remove("MESH_HOME")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "demo-ok\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "the command's status");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the demo's temporary home is removed: {left:?}"
    );
}

#[test]
fn with_the_coordinator_gone_sessions_live_on_and_offline_grants_work() {
    use std::io::{BufRead, Write};
    let mut fleet = Fleet::start();
    let edge = fleet.add_host("edge-01");
    let _other = fleet.add_host("edge-02");
    let admin = fleet.home("admin");
    // Online: this also hands the device an offline grant for edge-01.
    let out = fleet.admin(&["exec", "edge-01", "--", "echo", "first"]);
    assert_eq!(text(&out.stdout), "first\n", "{}", text(&out.stderr));

    let mut open = mesh_tests::fleet::mesh_in(
        &admin,
        &[
            "exec",
            "edge-01",
            "--",
            "echo ready; read line; echo got-$line",
        ],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(open.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    fleet.coordinator.kill();

    // The open session does not notice.
    writeln!(open.stdin.as_mut().unwrap(), "hello").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-hello");
    assert!(open.wait().unwrap().success());

    // New sessions use the kept offline grant, and say so.
    let out = fleet.admin(&["exec", "edge-01", "--", "echo", "offline-ok"]);
    assert_eq!(text(&out.stdout), "offline-ok\n", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("offline"),
        "{}",
        text(&out.stderr)
    );

    // A host this device never reached has no kept grant.
    let out = fleet.admin(&["exec", "edge-02", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("no offline grant for"),
        "{}",
        text(&out.stderr)
    );

    // An admin on the coordinator's machine mints a grant file without the network.
    let login = current_login();
    let out = run_in(
        &fleet.coordinator.home(),
        &[
            "coordinator",
            "grant",
            "--user",
            "admin",
            "--host",
            "edge-01",
            "--login",
            &login,
            "--ttl",
            "8h",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = admin.join("minted.grant");
    std::fs::write(&file, &out.stdout).unwrap();
    let addr = edge.listening_addr();
    let out = fleet.admin(&[
        "exec",
        "edge-01",
        "--grant",
        file.to_str().unwrap(),
        "--direct",
        &addr,
        "--",
        "echo",
        "minted-ok",
    ]);
    assert_eq!(text(&out.stdout), "minted-ok\n", "{}", text(&out.stderr));
}

#[test]
fn admins_define_roles_and_move_users_between_them() {
    let fleet = Fleet::start();
    let _host = fleet.add_host("edge-01");
    let me = current_login();
    let out = fleet.admin(&[
        "role",
        "add",
        "deployers",
        "--permission",
        "exec",
        "--hosts",
        "edge-01",
        "--login",
        &me,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = fleet.admin(&["role", "add", "bad", "--permission", "fly"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown permission"),
        "{}",
        text(&out.stderr)
    );
    let out = fleet.admin(&["role", "remove", "admin"]);
    assert!(
        text(&out.stderr).contains("built-in"),
        "{}",
        text(&out.stderr)
    );

    fleet.add_user("dan", "deployers");
    let dan = fleet.home("dan");
    let out = run_in(
        &dan,
        &["exec", "edge-01", "--login", &me, "--", "echo", "deployed"],
    );
    assert_eq!(text(&out.stdout), "deployed\n", "{}", text(&out.stderr));
    let out = run_in(&dan, &["shell", "edge-01", "--login", &me]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("lacks the shell permission"),
        "{}",
        text(&out.stderr)
    );

    let out = fleet.admin(&["user", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dan_entry = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "dan")
        .unwrap();
    assert_eq!(dan_entry["role"], "deployers");
    assert_eq!(dan_entry["devices"], 1);
    let out = fleet.admin(&["role", "list", "--json"]);
    assert!(
        text(&out.stdout).contains("\"deployers\""),
        "{}",
        text(&out.stdout)
    );

    // A role held by someone cannot go; after a role change, the old rights are gone.
    let out = fleet.admin(&["role", "remove", "deployers"]);
    assert!(
        text(&out.stderr).contains("held by dan"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        fleet
            .admin(&["user", "set-role", "dan", "viewer"])
            .status
            .success()
    );
    let out = run_in(&dan, &["exec", "edge-01", "--login", &me, "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        fleet
            .admin(&["role", "remove", "deployers"])
            .status
            .success()
    );
    // A removed user's device gets nothing more.
    assert!(fleet.admin(&["user", "remove", "dan"]).status.success());
    let out = run_in(&dan, &["hosts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not enrolled"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_second_coordinator_on_a_taken_port_fails_with_one_line() {
    let mut fleet = Fleet::start();
    let out = run_in(&fleet.coordinator.home(), &["coordinator", "serve"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    fleet.coordinator.kill();
}
