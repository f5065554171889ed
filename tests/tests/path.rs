//! `mesh path HOST` and the PATH column of `mesh hosts`, end to end with real processes on
//! loopback: the coordinator (with its embedded relay), an agent, and user devices.
//! (Relayed paths through real NATs are in `kernel_mesh.rs`; the path choice itself is
//! unit-tested in `mesh_node::path` and simulated in netsim.)

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use mesh_tests::fleet::{Fleet, run_in, text};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn mesh_path_reports_the_confirmed_direct_path_its_candidates_and_the_relay() {
    let fleet = Fleet::start();
    let host = fleet.add_host("edge-01");
    let host_addr = host.listening_addr();
    let coordinator_addr = fleet.coordinator.addr();

    let report = json(&fleet.admin(&["path", "edge-01", "--json"]));
    assert_eq!(report["host"], "edge-01");
    assert_eq!(report["path"], "direct", "{report}");
    assert_eq!(report["remote_addr"], host_addr.as_str(), "{report}");
    let rtt = report["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 1000.0, "loopback rtt {rtt} ms");
    // The coordinator's embedded relay was connected, standing by.
    assert_eq!(
        report["relay"]["addr"],
        coordinator_addr.as_str(),
        "{report}"
    );
    let candidates = report["candidates"].as_array().unwrap();
    let listed = candidates
        .iter()
        .find(|c| c["addr"] == host_addr.as_str())
        .unwrap_or_else(|| panic!("{host_addr} not among {candidates:?}"));
    assert_eq!(listed["confirmed"], true);
    assert_eq!(listed["source"], "listed");
    assert!(listed["pings"].as_u64().unwrap() >= 1);
    // The handshake went on whichever path was chosen at that instant (the relay, unless a
    // ping was already answered): either way the bytes are counted.
    let sent = &report["bytes_sent"];
    assert!(
        sent["direct"].as_u64().unwrap() + sent["relay"].as_u64().unwrap() > 1200,
        "{report}"
    );

    // The NAT check against the coordinator's two ports: on loopback there is no NAT.
    assert_eq!(report["nat"]["this_device"], "none", "{report}");
    assert_eq!(report["nat"]["host"], "none", "{report}");
    // The coordinator arranged a rendezvous: the host punched toward this device too.
    let punch = &report["punch"];
    assert_eq!(punch["rendezvous"], true, "{report}");
    assert!(punch["probes_sent"].as_u64().unwrap() >= 1, "{report}");
    // On loopback the first ping confirms the path before the punch's start: no round is
    // needed (rounds go out only while no direct path is confirmed).
    assert!(punch["punch_rounds"].as_u64().is_some(), "{report}");
    let first_byte = punch["time_to_first_byte_ms"].as_f64().unwrap();
    let to_direct = punch["time_to_direct_ms"].as_f64().unwrap();
    assert!(first_byte > 0.0 && to_direct > 0.0, "{report}");
    assert_eq!(punch["bytes_relayed"], sent["relay"], "{report}");

    let out = fleet.admin(&["path", "edge-01"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("path        direct {host_addr}")),
        "{shown}"
    );
    assert!(shown.contains("confirmed, rtt"), "{shown}");
    assert!(
        shown.contains("nat         this device: none; host: none"),
        "{shown}"
    );

    // `mesh hosts` shows the same path, probed.
    let hosts = json(&fleet.admin(&["hosts", "--json"]));
    let edge = &hosts[0];
    assert_eq!(edge["path"], "direct", "{edge}");
    assert_eq!(edge["remote_addr"], host_addr.as_str(), "{edge}");
    let table = text(&fleet.admin(&["hosts"]).stdout);
    assert!(table.contains("PATH"), "{table}");
    assert!(table.contains(&format!("direct {host_addr}")), "{table}");
}

#[test]
fn mesh_path_refuses_hosts_the_role_does_not_cover_and_unknown_names_in_one_line() {
    let fleet = Fleet::start();
    let _host = fleet.add_host("edge-01");
    let out = fleet.admin(&[
        "role",
        "add",
        "elsewhere",
        "--permission",
        "exec",
        "--hosts",
        "edge-99",
        "--login",
        "nobody",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    fleet.add_user("eve", "elsewhere");

    let out = run_in(&fleet.home("eve"), &["path", "edge-01", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("does not cover"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    // The directory still lists the host for eve, without a path.
    let hosts = json(&run_in(&fleet.home("eve"), &["hosts", "--json"]));
    assert_eq!(hosts[0]["name"], "edge-01");
    assert_eq!(hosts[0]["path"], serde_json::Value::Null, "{hosts}");

    let out = fleet.admin(&["path", "no-such-host"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no-such-host"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
