//! The relay never sees what a session carries (issue 8): a host and a laptop each behind a
//! symmetric NAT, so the coordinator's relay is their only path; a canary string goes into
//! the session as stdin and comes back through `cat`. Every byte the relay's host sent or
//! received is captured: the canary is in none of them, though the relay forwarded the whole
//! session (a broken relay that decrypted, or a session that bypassed QUIC's encryption,
//! would show it).

#![allow(clippy::unwrap_used)]

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
    name = "edge"
    behind = "site"
    link = { latency = "20ms" }
    [[host]]
    name = "laptop"
    behind = "home"
    link = { latency = "20ms" }
"#;

const CANARY: &[u8] = b"CANARY-7f3a9c1e-the-relay-must-never-see-this";

#[test]
fn a_canary_typed_into_a_relayed_session_never_appears_in_the_relays_traffic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let network = Topology::from_toml(TOPOLOGY).unwrap().resolve().unwrap();
        let hub = network.host("hub").unwrap();
        let laptop = network.host("laptop").unwrap();
        let world = World::new(network, 5);
        tokio::spawn(world.clone().drive());
        let mut mesh = Mesh::new(world.clone(), 5).unwrap();
        mesh.start_coordinator("hub").unwrap();
        mesh.start_agent("edge").await.unwrap();
        mesh.enroll_client("laptop", "admin").await.unwrap();
        let relay_traffic = world.capture(hub);
        let laptop_traffic = world.capture(laptop);

        // Many copies, spread over a stream long enough to take many packets.
        let mut stdin = Vec::new();
        for n in 0..200 {
            stdin.extend_from_slice(format!("{n:04} ").as_bytes());
            stdin.extend_from_slice(CANARY);
            stdin.push(b'\n');
        }
        let report = mesh
            .client("laptop")
            .unwrap()
            .exec("edge", "cat", stdin.clone())
            .await;
        mesh.shut_down();

        assert_eq!(report.outcome, "exit 0", "{report:?}");
        assert_eq!(
            report.path, "relay",
            "symmetric × symmetric goes through the relay"
        );
        assert_eq!(
            report.stdout, stdin,
            "the session carried the canary both ways"
        );
        let relayed = report.relay_bytes;
        assert!(
            relayed > stdin.len() as u64,
            "the laptop sent {relayed} B through the relay for {} B of stdin",
            stdin.len()
        );
        // The relay handled the session: at least the laptop's relayed bytes crossed the hub.
        let at_hub = relay_traffic.bytes();
        assert!(
            at_hub.len() as u64 > relayed,
            "the hub saw {} B, less than the {relayed} B relayed",
            at_hub.len()
        );
        assert!(
            !relay_traffic.contains(CANARY),
            "the canary appeared in the relay's traffic"
        );
        assert!(
            !laptop_traffic.contains(CANARY),
            "the canary left the laptop in clear"
        );
        // The search itself works: a canary sent in clear would have been found.
        assert!(relay_traffic.contains(&at_hub[..16.min(at_hub.len())]));
    });
}
