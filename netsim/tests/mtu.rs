//! Packet sizes across a path change (issue 8): a session starts on the relay and moves to a
//! direct path whose MTU is larger than what the relay can carry for it. Packets between
//! peers are capped at `PEER_MTU` without path MTU discovery, so none is ever too big for the
//! path it is switched to: the relay connection refuses none, no link drops one of them as
//! too big, and the output arrives whole. (Were peer packets allowed to grow to the direct
//! path's 1,400 bytes — a larger starting MTU, or discovery on that path — they would be
//! larger than 1,200 bytes on the direct path, which this test looks for, and would no longer
//! fit a relay datagram after a move back.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use mesh_netsim::capture::Direction;
use mesh_netsim::mesh::Mesh;
use mesh_netsim::topology::Topology;
use mesh_netsim::world::{DropReason, World};
use mesh_node::endpoint::PEER_MTU;

/// The hub's relay and the edge's full-cone NAT on 1,500-byte links; the laptop's link carries
/// 1,400 bytes, so the direct path's MTU is 1,400 and the relay path's (for a peer packet,
/// after relay framing) about 1,300.
const TOPOLOGY: &str = r#"
    [[nat]]
    name = "cone"
    kind = "full-cone"
    [[host]]
    name = "hub"
    link = { latency = "10ms" }
    [[host]]
    name = "edge"
    behind = "cone"
    link = { latency = "20ms" }
    [[host]]
    name = "laptop"
    link = { latency = "20ms", mtu = 1400 }
"#;

#[test]
fn peer_packets_fit_every_path_so_a_path_change_loses_none() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let network = Topology::from_toml(TOPOLOGY).unwrap().resolve().unwrap();
        let laptop = network.host("laptop").unwrap();
        let cone_ip = network.nats[0].external_ip;
        let world = World::new(network, 3);
        tokio::spawn(world.clone().drive());
        let mut mesh = Mesh::new(world.clone(), 3).unwrap();
        mesh.start_coordinator("hub").unwrap();
        mesh.start_agent("edge").await.unwrap();
        mesh.enroll_client("laptop", "admin").await.unwrap();
        let traffic = world.capture(laptop);
        let too_big_before = too_big(&world);

        let stdin = mesh_netsim::scenario::numbered_stream(400_000);
        let report = mesh
            .client("laptop")
            .unwrap()
            .exec("edge", "cat", stdin.clone())
            .await;
        mesh.shut_down();

        assert_eq!(report.outcome, "exit 0", "{report:?}");
        assert_eq!(report.stdout, stdin, "the output arrived whole");
        assert_eq!(report.path, "direct", "{report:?}");
        assert!(report.relay_bytes > 0, "the session started on the relay");
        assert_eq!(report.relay_refused, 0, "the relay refused a packet");
        // Every datagram the laptop sent straight to the edge (its agent behind the cone NAT).
        let direct: Vec<usize> = traffic
            .datagrams()
            .iter()
            .filter(|d| d.direction == Direction::Sent)
            .filter(|d| matches!(d.remote, SocketAddr::V4(v4) if *v4.ip() == cone_ip))
            .map(|d| d.data.len())
            .collect();
        assert!(
            direct.len() > 100,
            "most of the session went direct: {} datagrams",
            direct.len()
        );
        let largest = direct.iter().max().copied().unwrap_or(0);
        assert!(
            largest <= usize::from(PEER_MTU),
            "a {largest}-byte packet went direct: it would not fit the relay"
        );
        assert_eq!(
            too_big(&world),
            too_big_before,
            "a link dropped a packet as too big"
        );
    });
}

fn too_big(world: &World) -> u64 {
    world
        .counters()
        .dropped
        .get(&DropReason::TooBig)
        .copied()
        .unwrap_or(0)
}
