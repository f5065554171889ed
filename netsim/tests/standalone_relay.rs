//! A standalone relay (`mesh relay`) carries the mesh's relayed sessions (issue 8): it enrolls
//! with its own token, the coordinator names it — key and addresses — to hosts (on their
//! presence stream) and to clients (beside their grant), and both move their relay connection
//! to it. A session between two symmetric NATs then runs through it: it forwards the session's
//! packets, the coordinator's embedded relay none of them, and it never sees what the session
//! carries.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_netsim::mesh::Mesh;
use mesh_netsim::topology::Topology;
use mesh_netsim::world::World;

const TOPOLOGY: &str = r#"
    [[nat]]
    name = "site"
    kind = "symmetric-random"
    [[nat]]
    name = "home"
    kind = "symmetric-random"
    [[host]]
    name = "hub"
    link = { latency = "10ms" }
    [[host]]
    name = "relay-eu"
    link = { latency = "5ms" }
    [[host]]
    name = "edge"
    behind = "site"
    link = { latency = "20ms" }
    [[host]]
    name = "laptop"
    behind = "home"
    link = { latency = "20ms" }
"#;

const CANARY: &[u8] = b"CANARY-standalone-relay-must-not-see";

#[test]
fn sessions_go_through_the_standalone_relay_the_coordinator_names() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let network = Topology::from_toml(TOPOLOGY).unwrap().resolve().unwrap();
        let relay_host = network.host("relay-eu").unwrap();
        let world = World::new(network, 21);
        tokio::spawn(world.clone().drive());
        let mut mesh = Mesh::new(world.clone(), 21).unwrap();
        mesh.start_coordinator("hub").unwrap();
        mesh.start_agent("edge").await.unwrap();
        mesh.enroll_client("laptop", "admin").await.unwrap();
        mesh.start_relay("relay-eu").await.unwrap();
        // The relay's control stream comes up; the coordinator tells the agent at once.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let standalone = mesh.relay_server("relay-eu").unwrap();
        let embedded = mesh.embedded_relay().unwrap();
        assert!(
            standalone.connections() >= 1,
            "the agent moved its relay connection to the standalone relay"
        );
        let embedded_before = embedded.counters().forwarded_bytes.load(Ordering::Relaxed);
        let traffic = world.capture(relay_host);

        let mut stdin = Vec::new();
        for n in 0..100 {
            stdin.extend_from_slice(format!("{n:03} ").as_bytes());
            stdin.extend_from_slice(CANARY);
            stdin.push(b'\n');
        }
        let report = mesh
            .client("laptop")
            .unwrap()
            .exec("edge", "cat", stdin.clone())
            .await;
        assert_eq!(report.outcome, "exit 0", "{report:?}");
        assert_eq!(report.path, "relay", "{report:?}");
        assert_eq!(report.stdout, stdin);
        let forwarded = standalone
            .counters()
            .forwarded_bytes
            .load(Ordering::Relaxed);
        assert!(
            forwarded > 2 * stdin.len() as u64,
            "the standalone relay forwarded {forwarded} B for {} B each way",
            stdin.len()
        );
        assert_eq!(
            embedded.counters().forwarded_bytes.load(Ordering::Relaxed),
            embedded_before,
            "the coordinator's own relay carried part of the session"
        );
        assert!(!traffic.bytes().is_empty());
        assert!(!traffic.contains(CANARY), "the relay saw the canary");
        mesh.shut_down();
    });
}

/// A standalone relay that restarts while its coordinator is down lets the hosts and clients
/// it served back in, from the allowed keys it kept in its home: the relayed session carries on
/// with its output whole. (Without the kept set it would refuse everyone until the coordinator
/// returned, and the session would die.)
#[test]
fn a_relay_restarted_without_its_coordinator_lets_its_peers_back_in() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let network = Topology::from_toml(TOPOLOGY).unwrap().resolve().unwrap();
        let world = World::new(network, 22);
        tokio::spawn(world.clone().drive());
        let mut mesh = Mesh::new(world.clone(), 22).unwrap();
        mesh.start_coordinator("hub").unwrap();
        mesh.start_agent("edge").await.unwrap();
        mesh.enroll_client("laptop", "admin").await.unwrap();
        mesh.start_relay("relay-eu").await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;

        let client = mesh.client("laptop").unwrap();
        let running = tokio::task::spawn_local(async move {
            client.exec("edge", "ticks 80 0.1", Vec::new()).await
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        mesh.kill_coordinator().unwrap();
        mesh.kill_relay("relay-eu").unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        mesh.restart_relay("relay-eu").await.unwrap();
        let report = running.await.unwrap();
        assert_eq!(report.outcome, "exit 0", "{report:?}");
        assert_eq!(report.path, "relay", "{report:?}");
        assert_eq!(
            report.stdout,
            mesh_netsim::scenario::numbered_stream(80 * 7),
            "every line once, in order"
        );
        mesh.shut_down();
    });
}
