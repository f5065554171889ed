//! A host whose wall clock is an hour wrong judges grants by the coordinator's time once it
//! has heard it: a fresh online grant is accepted, an expired one refused. The host agent runs
//! in this process with its clock set through the clock seam; everything else is the real
//! `mesh` binary.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_node::session::host::SessionProgram;
use mesh_proto::{CaSigner, ManualClock, UnixTime};
use mesh_tests::fleet::{Fleet, run_in, run_with_stdin, text};
use mesh_tests::hosts::{TestCa, current_login};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_an_hour_behind_accepts_fresh_grants_and_refuses_expired_ones() {
    let fleet = Fleet::start();
    let token = fleet.invite(&["invite", "host", "--name", "skewed"]);
    let host_home = fleet.home("skewed");
    std::fs::create_dir_all(&host_home).unwrap();
    // A known port, so the test can use --direct later.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        host_home.join("config.toml"),
        format!("listen = \"{addr}\"\n"),
    )
    .unwrap();
    let out = run_with_stdin(&host_home, &["node", "join", "-"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The host's own clock reads an hour ago.
    let true_now = UnixTime::from_system_time(SystemTime::now());
    let skewed = Arc::new(ManualClock::new(
        true_now.saturating_sub(Duration::from_secs(3600)),
    ));
    let program = SessionProgram {
        program: mesh_tests::mesh_bin(),
        args: vec!["session-process".into()],
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_home = host_home.clone();
    let agent = tokio::spawn(async move {
        mesh_node::agent::run(&agent_home, program, skewed, async {
            let _ = stopped.await;
        })
        .await
    });
    // Wait (bounded) until the host is online: it has heard the coordinator's time.
    let admin = fleet.home("admin");
    let mut online = false;
    for _ in 0..100 {
        let out = run_in(&admin, &["hosts", "--json"]);
        let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if hosts
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["online"] == true))
        {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(online, "the host never came online");

    // A fresh online grant (valid from now, five minutes): "not yet valid" by the host's own
    // clock, fine by the corrected one.
    let out = run_in(&admin, &["exec", "skewed", "--", "echo", "fresh-ok"]);
    assert_eq!(text(&out.stdout), "fresh-ok\n", "{}", text(&out.stderr));

    // An expired grant (ended ten minutes ago): still "valid" by the host's own clock,
    // refused by the corrected one.
    let ca = CaSigner::new(
        mesh_node::keyfile::read_secret_key(&fleet.coordinator.home().join("ca.key")).unwrap(),
    );
    let host_key = mesh_node::keyfile::read_secret_key(&host_home.join("key"))
        .unwrap()
        .node_id();
    let client_key = mesh_node::keyfile::read_secret_key(&admin.join("key"))
        .unwrap()
        .node_id();
    let mut grant = TestCa::new().grant(
        client_key,
        host_key,
        &current_login(),
        Duration::from_secs(60),
    );
    grant.not_before = true_now.saturating_sub(Duration::from_secs(40 * 60));
    grant.not_after = true_now.saturating_sub(Duration::from_secs(10 * 60));
    let signed = ca.sign_grant(&grant).unwrap();
    let file = admin.join("expired.grant");
    std::fs::write(&file, mesh_proto::grant_file::grant_to_text(&signed)).unwrap();
    let out = run_in(
        &admin,
        &[
            "exec",
            "skewed",
            "--direct",
            &addr,
            "--grant",
            file.to_str().unwrap(),
            "--",
            "echo",
            "must-not-run",
        ],
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );

    let _ = stop.send(());
    agent.await.unwrap().unwrap();
}
