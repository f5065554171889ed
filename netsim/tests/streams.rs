//! Simulated TCP streams across the simulated internet, and captures of a host's traffic: what
//! gets through which NAT, how long bytes take, what partitions, NAT flushes and closes do, and
//! that a seed replays the same timeline.

#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_netsim::capture::{Direction, Transport};
use mesh_netsim::stream::SimStream;
use mesh_netsim::topology::Topology;
use mesh_netsim::world::{DropReason, World};
use mesh_proto::socket::DatagramSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

/// An office that blocks UDP, a home NAT with its own latencies, and two public servers.
const NETWORK: &str = r#"
    [[nat]]
    name = "office"
    kind = "port-restricted"
    block_udp = true
    [[nat]]
    name = "home"
    kind = "full-cone"
    uplink = { latency = "5ms" }
    [[host]]
    name = "desk"
    behind = "office"
    [[host]]
    name = "printer"
    behind = "office"
    [[host]]
    name = "laptop"
    behind = "home"
    link = { latency = "20ms" }
    [[host]]
    name = "server"
    link = { latency = "30ms" }
    [[host]]
    name = "quiet"
"#;

/// One way from laptop to server: 20 + 5 + 30 ms.
const LAPTOP_TO_SERVER: Duration = Duration::from_millis(55);

/// Runs `test` in a paused current-thread runtime with the world (seeded `seed`) driving.
fn in_world<T>(topology: &str, seed: u64, test: impl AsyncFnOnce(World) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let network = Topology::from_toml(topology).unwrap().resolve().unwrap();
        let world = World::new(network, seed);
        tokio::spawn(world.clone().drive());
        test(world).await
    })
}

fn host(world: &World, name: &str) -> usize {
    world.network().host(name).unwrap()
}

/// `len` bytes of a pattern that shows any reordering, loss or duplication.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(salt).wrapping_mul(7))
        .collect()
}

/// Connects `from` to a listener on `to`:443; returns both ends and the client's address as
/// the listener saw it.
async fn pair(world: &World, from: &str, to: &str) -> (SimStream, SimStream, SocketAddr) {
    let listener = world.binder(host(world, to)).listen_stream(443).unwrap();
    let client = world
        .binder(host(world, from))
        .connect_stream(listener.local_addr())
        .await
        .unwrap();
    let (server, seen) = listener.accept().await.unwrap();
    (client, server, seen)
}

/// Writes `data`, shuts down, and reads to EOF at the same time.
async fn exchange(stream: SimStream, data: Vec<u8>) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async move {
        write.write_all(&data).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let receive = async move {
        let mut got = Vec::new();
        read.read_to_end(&mut got).await.unwrap();
        got
    };
    tokio::join!(send, receive).1
}

#[test]
fn behind_a_udp_blocking_nat_a_stream_carries_a_megabyte_each_way_while_udp_is_dropped() {
    in_world(NETWORK, 1, async |world| {
        let office = world.network().nats[0].external_ip;
        let (client, server, seen) = pair(&world, "desk", "server").await;
        assert_eq!(seen.ip(), office, "the listener sees the NAT's address");
        assert_eq!(server.peer_addr(), seen);
        assert_ne!(seen, client.local_addr());
        let up = pattern(1 << 20, 1);
        let down = pattern(1 << 20, 2);
        let (at_server, at_client) =
            tokio::join!(exchange(server, down.clone()), exchange(client, up.clone()));
        assert!(at_server == up, "the upload arrived changed");
        assert!(at_client == down, "the download arrived changed");
        assert_eq!(world.counters().stream_bytes, 2 << 20);

        // UDP from the same host to the same server goes nowhere.
        let udp = world.binder(host(&world, "desk")).bind_sim(0).unwrap();
        let listening = world.binder(host(&world, "server")).bind_sim(443).unwrap();
        udp.try_send_to(b"over udp", listening.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 64];
        let got = timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| listening.poll_recv_from(cx, &mut buf)),
        )
        .await;
        assert!(got.is_err(), "a datagram crossed a UDP-blocking NAT");
        assert_eq!(world.counters().dropped[&DropReason::UdpBlocked], 1);
    });
}

#[test]
fn hosts_on_one_lan_connect_directly_and_see_each_others_lan_addresses() {
    in_world(NETWORK, 1, async |world| {
        let (client, _server, seen) = pair(&world, "desk", "printer").await;
        assert_eq!(seen, client.local_addr());
    });
}

#[test]
fn an_unsolicited_inbound_connection_times_out_and_one_to_a_closed_port_is_refused() {
    in_world(NETWORK, 1, async |world| {
        let laptop = world.binder(host(&world, "laptop"));
        let server = world.binder(host(&world, "server"));
        // The laptop listens, but its NAT has no mapping for a SYN from outside.
        let listening = laptop.listen_stream(443).unwrap();
        let home = world.network().nats[1].external_ip;
        let start = Instant::now();
        let err = server
            .connect_stream(SocketAddr::from((home, 443)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(127));
        assert!(err.to_string().contains("home"), "{err}");
        // Nor does the laptop's private address lead anywhere from outside.
        let err = server
            .connect_stream(listening.local_addr())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");

        // A public host with nothing on the port answers with a reset: one round trip.
        let start = Instant::now();
        let closed = SocketAddr::from((world.network().hosts[host(&world, "server")].ip, 81));
        let err = laptop.connect_stream(closed).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert_eq!(start.elapsed(), LAPTOP_TO_SERVER * 2);
    });
}

#[test]
fn the_handshake_takes_a_round_trip_and_bytes_the_one_way_latency_each_way() {
    in_world(NETWORK, 1, async |world| {
        let listener = world
            .binder(host(&world, "server"))
            .listen_stream(0)
            .unwrap();
        let start = Instant::now();
        let mut client = world
            .binder(host(&world, "laptop"))
            .connect_stream(listener.local_addr())
            .await
            .unwrap();
        assert_eq!(start.elapsed(), LAPTOP_TO_SERVER * 2, "connect");
        let (mut server, _) = listener.accept().await.unwrap();
        assert_eq!(start.elapsed(), LAPTOP_TO_SERVER * 3, "accept, on the ACK");

        let mut buf = [0u8; 5];
        let sent = Instant::now();
        client.write_all(b"hello").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(sent.elapsed(), LAPTOP_TO_SERVER, "up");
        assert_eq!(&buf, b"hello");

        let sent = Instant::now();
        server.write_all(b"world").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(sent.elapsed(), LAPTOP_TO_SERVER, "down");
        assert_eq!(&buf, b"world");
    });
}

#[test]
fn a_narrow_link_paces_the_bytes() {
    let network = r#"
        [[host]]
        name = "a"
        link = { latency = "10ms", bandwidth = "8Mbit" }
        [[host]]
        name = "b"
    "#;
    in_world(network, 1, async |world| {
        let (mut a, mut b, _) = pair(&world, "a", "b").await;
        let data = pattern(100_000, 3);
        let sent = Instant::now();
        a.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        b.read_exact(&mut got).await.unwrap();
        assert!(got == data);
        // 69 segments of at most 1460 bytes, 40 bytes of headers each, at a byte per µs.
        let wire = Duration::from_micros(100_000 + 69 * 40);
        let arrival = wire + Duration::from_millis(11);
        // The world wakes on tokio's millisecond timer, so it sees the arrival within 1 ms.
        let took = sent.elapsed();
        assert!(
            took >= arrival && took < arrival + Duration::from_millis(1),
            "{took:?}, not {arrival:?}"
        );
    });
}

#[test]
fn a_partition_holds_the_bytes_and_healing_releases_them_in_order() {
    in_world(NETWORK, 1, async |world| {
        let laptop = host(&world, "laptop");
        let (mut client, mut server, _) = pair(&world, "laptop", "server").await;
        // Segments already on their way are lost too: the partition starts as they leave.
        let data = pattern(300_000, 4);
        let writer = tokio::spawn(async move {
            server.write_all(&data).await.unwrap();
            server
        });
        tokio::task::yield_now().await;
        world.set_host_link(laptop, false);
        let mut first = [0u8; 1];
        let early = timeout(Duration::from_secs(3), client.read_exact(&mut first)).await;
        assert!(early.is_err(), "a byte crossed the partition");

        world.set_host_link(laptop, true);
        let healed = Instant::now();
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(
            healed.elapsed(),
            LAPTOP_TO_SERVER,
            "resent once the link is up"
        );
        let mut rest = vec![0u8; 300_000 - 1];
        client.read_exact(&mut rest).await.unwrap();
        let mut got = first.to_vec();
        got.extend(rest);
        assert!(got == pattern(300_000, 4), "reordered, lost or duplicated");
        // The writer was held by the window, and got through once bytes were read.
        let mut server = writer.await.unwrap();
        server.write_all(b"!").await.unwrap();
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"!");
    });
}

#[test]
fn a_connect_during_a_partition_goes_through_once_it_heals() {
    in_world(NETWORK, 1, async |world| {
        let server = world
            .binder(host(&world, "server"))
            .listen_stream(443)
            .unwrap();
        let home = 1;
        world.set_nat_link(home, false);
        let laptop = world.binder(host(&world, "laptop"));
        let to = server.local_addr();
        let connecting = tokio::spawn(async move { laptop.connect_stream(to).await });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!connecting.is_finished());
        world.set_nat_link(home, true);
        let start = Instant::now();
        connecting.await.unwrap().unwrap();
        assert_eq!(start.elapsed(), LAPTOP_TO_SERVER * 2);
    });
}

#[test]
fn flushing_a_nat_the_stream_crosses_resets_both_ends_and_others_are_untouched() {
    in_world(NETWORK, 1, async |world| {
        let (mut client, mut server, _) = pair(&world, "laptop", "server").await;
        let listener = world
            .binder(host(&world, "quiet"))
            .listen_stream(443)
            .unwrap();
        let mut public = world
            .binder(host(&world, "server"))
            .connect_stream(listener.local_addr())
            .await
            .unwrap();
        let (mut public_peer, _) = listener.accept().await.unwrap();
        world.flush_nat(1);
        let mut buf = [0u8; 8];
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        assert!(err.to_string().contains("home"), "{err}");
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        assert!(server.write_all(b"late").await.is_err());
        // A stream that does not cross the NAT lives on.
        public.write_all(b"still up").await.unwrap();
        public_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still up");

        // A host that moves loses its streams too.
        let laptop = host(&world, "laptop");
        let mut client = world
            .binder(laptop)
            .connect_stream(listener.local_addr())
            .await
            .unwrap();
        let _accepted = listener.accept().await.unwrap();
        let new_ip = world.network().hosts[laptop].ip.octets();
        world
            .move_host(laptop, [new_ip[0], new_ip[1], new_ip[2], 99].into())
            .unwrap();
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    });
}

#[test]
fn closing_one_end_gives_the_other_eof_after_the_latency_and_writes_to_it_fail() {
    in_world(NETWORK, 1, async |world| {
        let (mut client, mut server, _) = pair(&world, "laptop", "server").await;
        client.write_all(b"bye").await.unwrap();
        let closed = Instant::now();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(
            closed.elapsed(),
            LAPTOP_TO_SERVER,
            "EOF after the one-way latency"
        );
        // The closed end answers bytes with a reset, which fails the writer's next call.
        server.write_all(b"anyone?").await.unwrap();
        tokio::time::sleep(LAPTOP_TO_SERVER * 2 + Duration::from_millis(1)).await;
        let err = server.write_all(b"hello?").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    });
}

#[test]
fn a_writer_whose_bytes_are_not_read_stops_at_the_window() {
    in_world(NETWORK, 1, async |world| {
        let (mut client, mut server, _) = pair(&world, "laptop", "server").await;
        let chunk = vec![7u8; 100_000];
        let mut accepted = 0;
        while let Ok(written) = timeout(Duration::from_secs(1), client.write(&chunk)).await {
            accepted += written.unwrap();
        }
        assert_eq!(
            accepted,
            256 * 1024,
            "in flight and unread, at most the window"
        );
        // Reading makes room once the window update has travelled back.
        let mut buf = vec![0u8; 50_000];
        server.read_exact(&mut buf).await.unwrap();
        let read = Instant::now();
        let written = client.write(&chunk).await.unwrap();
        assert_eq!(written, 50_000);
        assert_eq!(read.elapsed(), LAPTOP_TO_SERVER);
    });
}

/// A run with jitter on every link, UDP and a stream: the laptop's capture, and the bytes read.
fn jittery_run(seed: u64) -> (Vec<mesh_netsim::capture::Captured>, bool) {
    let network = r#"
        [[nat]]
        name = "home"
        kind = "port-restricted"
        uplink = { latency = "5ms", jitter = "4ms" }
        [[host]]
        name = "laptop"
        behind = "home"
        link = { latency = "10ms", jitter = "10ms", bandwidth = "50Mbit" }
        [[host]]
        name = "server"
        link = { latency = "20ms", jitter = "5ms" }
    "#;
    in_world(network, seed, async |world| {
        let capture = world.capture(host(&world, "laptop"));
        let udp = world.binder(host(&world, "laptop")).bind_sim(0).unwrap();
        let echo = world.binder(host(&world, "server")).bind_sim(53).unwrap();
        for i in 0..20u8 {
            udp.try_send_to(&[i; 100], echo.local_addr().unwrap())
                .unwrap();
        }
        let (client, server, _) = pair(&world, "laptop", "server").await;
        let (back, _) = tokio::join!(
            exchange(client, pattern(200_000, 5)),
            exchange(server, pattern(150_000, 6))
        );
        (capture.records(), back == pattern(150_000, 6))
    })
}

#[test]
fn the_same_seed_replays_the_same_timeline_and_jitter_never_reorders_bytes() {
    let (first, intact) = jittery_run(5);
    assert!(intact, "jitter reordered or lost stream bytes");
    let received = first
        .iter()
        .filter(|r| r.transport == Transport::Stream && r.direction == Direction::Received)
        .count();
    assert!(received > 100, "{received} segments");
    assert_eq!(jittery_run(5).0, first, "the same seed");
    assert_ne!(jittery_run(6).0, first, "another seed draws other jitter");
}

#[test]
fn a_capture_sees_a_marker_sent_over_udp_and_over_a_stream_and_nothing_from_a_silent_host() {
    in_world(NETWORK, 1, async |world| {
        let laptop = world.capture(host(&world, "laptop"));
        let server = world.capture(host(&world, "server"));
        let quiet = world.capture(host(&world, "quiet"));
        let udp = world.binder(host(&world, "laptop")).bind_sim(0).unwrap();
        let target = world.binder(host(&world, "server")).bind_sim(53).unwrap();
        udp.try_send_to(b"..UDP-CANARY..", target.local_addr().unwrap())
            .unwrap();
        let (mut client, mut peer, _) = pair(&world, "laptop", "server").await;
        client.write_all(b"..STREAM-CA").await.unwrap();
        client.write_all(b"NARY..").await.unwrap();
        let mut buf = [0u8; 17];
        peer.read_exact(&mut buf).await.unwrap();

        for capture in [&laptop, &server] {
            assert!(capture.contains(b"UDP-CANARY"));
            assert!(capture.contains(b"STREAM-CANARY"), "split over two writes");
        }
        let sent = laptop.datagrams();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].direction, Direction::Sent);
        assert_eq!(sent[0].data, b"..UDP-CANARY..");
        let received = server.datagrams();
        assert_eq!(received[0].direction, Direction::Received);
        assert_eq!(received[0].at, LAPTOP_TO_SERVER);
        assert!(
            server
                .records()
                .iter()
                .any(|r| r.transport == Transport::Stream && r.direction == Direction::Received)
        );
        assert!(!laptop.contains(b"CANARYCANARY"));
        assert!(quiet.records().is_empty());
        assert!(quiet.bytes().is_empty());
        assert!(!quiet.contains(b"CANARY"));
    });
}

#[test]
fn a_stream_is_what_a_tls_or_framing_adapter_takes() {
    fn takes<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static>() {}
    takes::<SimStream>();
}
