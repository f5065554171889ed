//! Two path sockets on loopback with a relay between them: a QUIC connection to a peer's
//! mapped address runs through the relay from its first packet while the peer has no
//! confirmed direct address, and moves to the direct address once probes confirm it — the same
//! connection, its streams intact. Forged and replayed probes are refused and counted.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_coordinator::relay::{AllowedKeys, RelayLimits, RelayServer};
use mesh_node::endpoint::{Endpoint, EndpointOptions};
use mesh_node::path::relay_client::RelayClient;
use mesh_node::path::socket::PathSocket;
use mesh_node::path::state::Path;
use mesh_node::udp::UdpSocket;
use mesh_proto::messages::RELAY_ALPN;
use mesh_proto::probe::{Probe, ProbeKind};
use mesh_proto::socket::DatagramSocket;
use mesh_proto::{SecretKey, SystemClock};

const ALPN: &[u8] = b"path-test/1";
const RELAY_MTU: EndpointOptions = EndpointOptions {
    seed: None,
    initial_mtu: mesh_node::path::relay_client::RELAY_INITIAL_MTU,
    accepts_peers: false,
    restart_keys: None,
};

fn udp() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind(([127, 0, 0, 1], 0).into()).unwrap())
}

struct Node {
    socket: Arc<PathSocket>,
    endpoint: Endpoint,
    addr: std::net::SocketAddr,
}

async fn node(
    key: &SecretKey,
    relay_addr: std::net::SocketAddr,
    relay: &SecretKey,
    alpns: &[&[u8]],
) -> Node {
    let primary = udp();
    let addr = primary.local_addr().unwrap();
    let socket = PathSocket::new(key.clone(), primary, Arc::new(SystemClock));
    let relay_endpoint = Endpoint::with_options(key.clone(), udp(), &[], RELAY_MTU).unwrap();
    let relay_client = RelayClient::connect(&relay_endpoint, relay_addr, relay.node_id())
        .await
        .unwrap();
    socket.set_relay(relay_client);
    tokio::spawn(socket.clone().drive());
    let endpoint = Endpoint::new(key.clone(), socket.clone(), alpns).unwrap();
    Node {
        socket,
        endpoint,
        addr,
    }
}

/// Sends `size` bytes on a new stream and reads them back from the echo server.
async fn echo(conn: &mesh_node::endpoint::Connection, size: usize) {
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    send.write_all(&payload).await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(usize::MAX).await.unwrap();
    assert_eq!(back, payload);
}

#[tokio::test]
async fn a_connection_starts_on_the_relay_and_moves_to_a_confirmed_direct_path() {
    let (relay_key, host_key, client_key, mallory) = (
        SecretKey::from_seed(&[1; 32]),
        SecretKey::from_seed(&[2; 32]),
        SecretKey::from_seed(&[3; 32]),
        SecretKey::from_seed(&[4; 32]),
    );
    let allowed = AllowedKeys::default();
    allowed
        .0
        .lock()
        .unwrap()
        .extend([host_key.node_id(), client_key.node_id()]);
    let relay = RelayServer::new(RelayLimits::default());
    let relay_endpoint =
        Endpoint::with_options(relay_key.clone(), udp(), &[RELAY_ALPN], RELAY_MTU).unwrap();
    let relay_addr = relay_endpoint.local_addr().unwrap();
    tokio::spawn(
        relay
            .clone()
            .serve(relay_endpoint, Arc::new(allowed), std::future::pending()),
    );

    let host = node(&host_key, relay_addr, &relay_key, &[ALPN]).await;
    let server = host.endpoint.clone();
    tokio::spawn(async move {
        while let Some(Ok(conn)) = server.accept().await {
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.quic().accept_bi().await {
                    let data = recv.read_to_end(usize::MAX).await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    let client = node(&client_key, relay_addr, &relay_key, &[]).await;

    // No direct candidate yet: the relay carries the handshake and the first stream.
    let mapped = client.socket.peer_addr(host_key.node_id(), &[]);
    let conn = client
        .endpoint
        .connect(mapped, host_key.node_id(), ALPN)
        .await
        .unwrap();
    echo(&conn, 100_000).await;
    assert_eq!(
        client.socket.path_info(host_key.node_id()).unwrap().path,
        Path::Relay
    );
    let relayed = client.socket.counters().relay_bytes;
    assert!(relayed > 100_000, "{relayed}");
    assert_eq!(client.socket.counters().direct_bytes, 0);

    // The host's address becomes known: probes confirm it and the same connection moves.
    client.socket.peer_addr(host_key.node_id(), &[host.addr]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches!(
        client.socket.path_info(host_key.node_id()).unwrap().path,
        Path::Direct(_)
    ) {
        assert!(tokio::time::Instant::now() < deadline, "never went direct");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = client.socket.counters();
    echo(&conn, 100_000).await;
    let after = client.socket.counters();
    assert!(after.direct_bytes - before.direct_bytes > 100_000);
    assert_eq!(
        after.relay_bytes, before.relay_bytes,
        "nothing more on the relay"
    );
    assert!(
        client
            .socket
            .path_info(host_key.node_id())
            .unwrap()
            .rtt
            .is_some()
    );

    // A forged ping (Mallory signing in the client's name) and a replayed real one change
    // nothing and are counted.
    // The host confirms the client's address with its own pings too.
    while !matches!(
        host.socket.path_info(client_key.node_id()).unwrap().path,
        Path::Direct(_)
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the host never went direct"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let host_path = host.socket.path_info(client_key.node_id()).unwrap().path;
    assert_eq!(
        host_path,
        Path::Direct(mesh_node::path::state::Route::primary(client.addr))
    );
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ping = Probe {
        kind: ProbeKind::Ping,
        sender: client_key.node_id(),
        sender_instance: client.socket.instance(),
        receiver: host_key.node_id(),
        nonce: [7; 16],
        sent_at: mesh_proto::Clock::now(&SystemClock),
        observed: None,
    };
    attacker.send_to(&ping.seal(&mallory), host.addr).unwrap();
    let genuine = ping.seal(&client_key);
    attacker.send_to(&genuine, host.addr).unwrap();
    attacker.send_to(&genuine, host.addr).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let refused = host.socket.counters().probes_refused;
        if refused.values().sum::<u64>() >= 2 || tokio::time::Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refused.get("forged probe"), Some(&1), "{refused:?}");
    assert_eq!(refused.get("replayed probe"), Some(&1), "{refused:?}");
    assert_eq!(
        host.socket.path_info(client_key.node_id()).unwrap().path,
        host_path,
        "the host's path to the client did not move"
    );
    echo(&conn, 10_000).await;
}
