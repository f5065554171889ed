//! A finished command leaves nothing behind on the network (issue 8): once `exec` returns, the
//! client's connections — to the host, and to the relay kept beside it — are closed, so the
//! laptop sends nothing more (a leaked relay connection would send a keep-alive every 2 s).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_netsim::capture::Direction;
use mesh_netsim::mesh::Mesh;
use mesh_netsim::topology::Topology;
use mesh_netsim::world::World;

const TOPOLOGY: &str = r#"
    # Both sides map per destination at random: the relay is the only path, so the
    # session runs through it.
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
    name = "edge"
    behind = "site"
    link = { latency = "20ms" }
    [[host]]
    name = "laptop"
    behind = "home"
    link = { latency = "20ms" }
"#;

#[test]
fn a_finished_exec_leaves_no_connection_sending() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let network = Topology::from_toml(TOPOLOGY).unwrap().resolve().unwrap();
        let laptop = network.host("laptop").unwrap();
        let world = World::new(network, 11);
        tokio::spawn(world.clone().drive());
        let mut mesh = Mesh::new(world.clone(), 11).unwrap();
        mesh.start_coordinator("hub").unwrap();
        mesh.start_agent("edge").await.unwrap();
        mesh.enroll_client("laptop", "admin").await.unwrap();
        let traffic = world.capture(laptop);
        let report = mesh
            .client("laptop")
            .unwrap()
            .exec("edge", "echo hi", Vec::new())
            .await;
        assert_eq!(report.outcome, "exit 0", "{report:?}");
        assert_eq!(report.path, "relay", "{report:?}");
        // Closing handshakes settle within a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = |t: &mesh_netsim::capture::Capture| {
            t.records()
                .iter()
                .filter(|r| r.direction == Direction::Sent)
                .count()
        };
        let settled = sent(&traffic);
        assert!(settled > 0);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let later: Vec<_> = traffic
            .records()
            .into_iter()
            .filter(|r| r.direction == Direction::Sent)
            .skip(settled)
            .map(|r| (r.at, r.remote, r.data.len()))
            .collect();
        assert!(later.is_empty(), "the laptop kept sending: {later:?}");
        mesh.shut_down();
    });
}
