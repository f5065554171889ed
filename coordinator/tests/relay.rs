//! The relay over real UDP on loopback: packets between allowed keys arrive whole with the
//! sender's proven key; a destination not connected is reported; a key not allowed is refused;
//! a key over its budget loses packets.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_coordinator::relay::{AllowedKeys, RelayLimits, RelayServer};
use mesh_node::endpoint::{Endpoint, EndpointOptions};
use mesh_node::path::relay_client::{FromRelay, RelayClient};
use mesh_node::udp::UdpSocket;
use mesh_proto::SecretKey;
use mesh_proto::messages::RELAY_ALPN;

const RELAY_MTU: EndpointOptions = EndpointOptions {
    seed: None,
    initial_mtu: mesh_node::path::relay_client::RELAY_INITIAL_MTU,
    accepts_peers: false,
    restart_keys: None,
};

fn endpoint(key: &SecretKey, alpns: &[&[u8]]) -> Endpoint {
    let socket = UdpSocket::bind(([127, 0, 0, 1], 0).into()).unwrap();
    Endpoint::with_options(key.clone(), Arc::new(socket), alpns, RELAY_MTU).unwrap()
}

async fn recv(client: &RelayClient) -> FromRelay {
    tokio::time::timeout(Duration::from_secs(5), client.recv())
        .await
        .expect("nothing from the relay within 5 s")
        .unwrap()
}

#[tokio::test]
async fn the_relay_forwards_between_allowed_keys_and_refuses_the_rest() {
    let (relay_key, a, b, c, mallory) = (
        SecretKey::from_seed(&[1; 32]),
        SecretKey::from_seed(&[2; 32]),
        SecretKey::from_seed(&[3; 32]),
        SecretKey::from_seed(&[4; 32]),
        SecretKey::from_seed(&[5; 32]),
    );
    let allowed = AllowedKeys::default();
    allowed
        .0
        .lock()
        .unwrap()
        .extend([a.node_id(), b.node_id(), c.node_id()]);
    let limits = RelayLimits {
        bytes_per_sec: 100_000,
        burst: 50_000,
    };
    let relay = RelayServer::new(limits);
    let relay_endpoint = endpoint(&relay_key, &[RELAY_ALPN]);
    let relay_addr = relay_endpoint.local_addr().unwrap();
    tokio::spawn(
        relay
            .clone()
            .serve(relay_endpoint, Arc::new(allowed), std::future::pending()),
    );

    let client_a = RelayClient::connect(&endpoint(&a, &[]), relay_addr, relay_key.node_id())
        .await
        .unwrap();
    let client_b = RelayClient::connect(&endpoint(&b, &[]), relay_addr, relay_key.node_id())
        .await
        .unwrap();
    // A whole QUIC Initial's worth fits from the first packet.
    assert!(
        client_a.max_packet().unwrap() >= 1200,
        "{:?}",
        client_a.max_packet()
    );
    let packet: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
    // B's registration may trail its handshake: retry until it is in.
    let got = loop {
        client_a.send(b.node_id(), None, 1, packet.clone()).unwrap();
        match tokio::time::timeout(Duration::from_millis(200), client_b.recv()).await {
            Ok(got) => break got.unwrap(),
            Err(_) => continue,
        }
    };
    assert_eq!(
        got,
        FromRelay::Packet {
            from: a.node_id(),
            from_instance: 1,
            packet: packet.clone()
        }
    );

    // C is allowed but not connected.
    client_a
        .send(c.node_id(), None, 1, b"hello?".to_vec())
        .unwrap();
    // Nothing else is addressed to A.
    assert_eq!(
        recv(&client_a).await,
        FromRelay::Unreachable { peer: c.node_id() }
    );

    // Mallory's key may not use the relay.
    let mallory_client =
        RelayClient::connect(&endpoint(&mallory, &[]), relay_addr, relay_key.node_id()).await;
    if let Ok(client) = mallory_client {
        assert!(
            tokio::time::timeout(Duration::from_secs(5), client.recv())
                .await
                .unwrap()
                .is_err(),
            "the relay closes a key it does not allow"
        );
    }
    assert_eq!(relay.counters().refused.load(Ordering::Relaxed), 1);

    // 100 packets of 1200 bytes at once: far over a 50 kB burst.
    for _ in 0..100 {
        let _ = client_a.send(b.node_id(), None, 1, packet.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.counters().over_limit.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was over the budget"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let forwarded = relay.counters().forwarded.load(Ordering::Relaxed);
    assert!(forwarded < 60, "{forwarded} forwarded past a 50 kB budget");

    // A second connection of the same key draws on the same, spent budget: opening more
    // connections buys no more bandwidth.
    let client_a2 = RelayClient::connect(&endpoint(&a, &[]), relay_addr, relay_key.node_id())
        .await
        .unwrap();
    let over_before = relay.counters().over_limit.load(Ordering::Relaxed);
    let before = relay.counters().forwarded.load(Ordering::Relaxed);
    for _ in 0..50 {
        let _ = client_a2.send(b.node_id(), None, 2, packet.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.counters().over_limit.load(Ordering::Relaxed) < over_before + 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second connection had a budget of its own"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let more = relay.counters().forwarded.load(Ordering::Relaxed) - before;
    assert!(more < 10, "{more} more forwarded on a fresh connection");

    // An empty packet is refused as malformed, not forwarded.
    let malformed = relay.counters().malformed.load(Ordering::Relaxed);
    client_a2.send(b.node_id(), None, 2, Vec::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.counters().malformed.load(Ordering::Relaxed) == malformed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the empty packet passed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
