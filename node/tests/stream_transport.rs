//! The stream transport end to end: real quinn endpoints on stream sockets, over in-memory
//! pipes (also in virtual time, as the simulator runs them) and over TLS on real TCP.

// Helpers outside `#[test]` functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_node::Error;
use mesh_node::endpoint::{Connection, Endpoint, EndpointOptions};
use mesh_node::path::stream::{StreamClientSocket, StreamServerSocket, is_stream_addr};
use mesh_node::path::tls_stream::{
    HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, connect_tcp, serve_tcp, server_config, tls_server,
};
use mesh_proto::{NodeId, SecretKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const ALPN: &[u8] = b"mesh/test/1";
const MEGABYTE: usize = 1 << 20;
/// Longer than anything here should take; a hang fails the test instead of stalling it.
const WAIT: Duration = Duration::from_secs(20);

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// `len` bytes that differ with `seed`, so one client's echo cannot pass for another's.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Echoes one bidirectional stream per connection; reports each connection's proven key and
/// the address quinn saw it from.
fn spawn_echo(endpoint: Endpoint) -> mpsc::UnboundedReceiver<(NodeId, SocketAddr)> {
    let (seen, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(conn) = endpoint.accept().await {
            let conn = conn.unwrap();
            seen.send((conn.peer(), conn.quic().remote_address()))
                .unwrap();
            tokio::spawn(async move {
                let (mut send, mut recv) = conn.quic().accept_bi().await.unwrap();
                let got = recv.read_to_end(2 * MEGABYTE).await.unwrap();
                send.write_all(&got).await.unwrap();
                send.finish().unwrap();
                let _ = conn.quic().closed().await;
            });
        }
    });
    seen_rx
}

async fn echo(conn: &Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(2 * MEGABYTE).await.unwrap()
}

fn endpoint(seed: u8, socket: Arc<dyn mesh_proto::socket::DatagramSocket>) -> Endpoint {
    let alpns: &[&[u8]] = if seed == 1 { &[ALPN] } else { &[] };
    Endpoint::with_options(key(seed), socket, alpns, EndpointOptions::default()).unwrap()
}

/// A QUIC server (key 1) on a stream server socket, echoing.
fn pipe_server() -> (
    Arc<StreamServerSocket>,
    Endpoint,
    mpsc::UnboundedReceiver<(NodeId, SocketAddr)>,
) {
    let socket = StreamServerSocket::new(addr("[2001:db8::1]:443"));
    let server = endpoint(1, socket.clone());
    let seen = spawn_echo(server.clone());
    (socket, server, seen)
}

/// A client (key `seed`) whose stream is an in-memory pipe into `server_socket`.
async fn pipe_client(seed: u8, server_socket: &StreamServerSocket) -> (Connection, SocketAddr) {
    let server_addr = addr("[2001:db8::1]:443");
    let (near, far) = duplex(64 * 1024);
    let synthetic = server_socket
        .add(Box::new(far), addr(&format!("[2001:db8::{seed}]:5000")))
        .unwrap();
    let socket = StreamClientSocket::new(
        Box::new(near),
        server_addr,
        addr(&format!("[2001:db8::{seed}]:5000")),
    );
    let client = endpoint(seed, socket);
    let conn = client
        .connect(server_addr, key(1).node_id(), ALPN)
        .await
        .unwrap();
    (conn, synthetic)
}

#[tokio::test(start_paused = true)]
async fn quic_over_a_pipe_echoes_a_megabyte_intact_in_virtual_time() {
    let (socket, _server, mut seen) = pipe_server();
    let (conn, synthetic) = pipe_client(2, &socket).await;
    assert_eq!(conn.peer(), key(1).node_id());
    let data = pattern(2, MEGABYTE);
    assert!(echo(&conn, &data).await == data, "the echo differs");
    assert_eq!(seen.recv().await, Some((key(2).node_id(), synthetic)));
}

#[tokio::test(start_paused = true)]
async fn two_clients_on_two_streams_each_get_their_own_echo() {
    let (socket, _server, mut seen) = pipe_server();
    let ((conn_a, synthetic_a), (conn_b, synthetic_b)) =
        tokio::join!(pipe_client(2, &socket), pipe_client(3, &socket));
    assert_ne!(synthetic_a, synthetic_b);
    let (data_a, data_b) = (pattern(2, MEGABYTE), pattern(3, MEGABYTE));
    let (echo_a, echo_b) = tokio::join!(echo(&conn_a, &data_a), echo(&conn_b, &data_b));
    assert!(echo_a == data_a, "client a's echo differs");
    assert!(echo_b == data_b, "client b's echo differs");
    let mut both = vec![seen.recv().await.unwrap(), seen.recv().await.unwrap()];
    both.sort();
    let mut expected = vec![
        (key(2).node_id(), synthetic_a),
        (key(3).node_id(), synthetic_b),
    ];
    expected.sort();
    assert_eq!(
        both, expected,
        "each client's connection is on its own stream"
    );
}

/// A QUIC server (key 1) behind `serve_tcp` on 127.0.0.1; dropping the sender stops
/// accepting.
async fn tcp_server() -> (
    SocketAddr,
    Arc<StreamServerSocket>,
    oneshot::Sender<()>,
    mpsc::UnboundedReceiver<(NodeId, SocketAddr)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listening = listener.local_addr().unwrap();
    let socket = StreamServerSocket::new(listening);
    let seen = spawn_echo(endpoint(1, socket.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_tcp(listener, key(1), socket.clone(), async {
        let _ = stopped.await;
    }));
    (listening, socket, stop, seen)
}

/// Connects as key `seed` over TCP and TLS, then QUIC inside.
async fn tcp_client(seed: u8, server: SocketAddr) -> Connection {
    let stream = connect_tcp(server, &key(seed), key(1).node_id(), WAIT)
        .await
        .unwrap();
    let socket = StreamClientSocket::new(stream, server, addr("127.0.0.1:0"));
    endpoint(seed, socket)
        .connect(server, key(1).node_id(), ALPN)
        .await
        .unwrap()
}

#[tokio::test]
async fn quic_over_tls_over_tcp_echoes_a_megabyte() {
    let (server, socket, _stop, mut seen) = tcp_server().await;
    let conn = timeout(WAIT, tcp_client(2, server)).await.unwrap();
    let data = pattern(2, MEGABYTE);
    assert!(
        timeout(WAIT, echo(&conn, &data)).await.unwrap() == data,
        "the echo differs"
    );
    let (client, synthetic) = seen.recv().await.unwrap();
    assert_eq!(client, key(2).node_id());
    assert!(is_stream_addr(synthetic));
    let real = socket.real_peer(synthetic).unwrap();
    assert_eq!(real.ip(), server.ip(), "the client's real TCP address");
    assert_eq!(socket.live_streams(), 1);
}

#[tokio::test]
async fn a_client_pinning_another_server_key_is_refused_with_both_keys() {
    let (server, socket, _stop, _seen) = tcp_server().await;
    let expected = key(9).node_id();
    let result = connect_tcp(server, &key(2), expected, WAIT).await;
    match result {
        Err(Error::WrongHostKey {
            expected: e,
            presented,
        }) => {
            assert_eq!(e, expected);
            assert_eq!(presented, key(1).node_id());
        }
        Err(other) => panic!("expected WrongHostKey, got {other}"),
        Ok(_) => panic!("connected to the wrong server"),
    }
    assert_eq!(socket.live_streams(), 0);
}

#[tokio::test]
async fn garbage_and_silent_connections_do_not_disturb_a_good_client() {
    let (server, socket, _stop, _seen) = tcp_server().await;
    let mut silent = TcpStream::connect(server).await.unwrap();
    let mut garbage = TcpStream::connect(server).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n\xff\xfe\x00\x01")
        .await
        .unwrap();

    // Well within the deadline the silent connection's handshake has: the handshakes run
    // side by side.
    let conn = timeout(HANDSHAKE_TIMEOUT / 2, tcp_client(2, server))
        .await
        .expect("the good client is not held up");
    let data = pattern(2, 64 * 1024);
    assert!(timeout(WAIT, echo(&conn, &data)).await.unwrap() == data);

    // The garbage connection was answered (an alert at most) and closed.
    let mut rest = Vec::new();
    let _ = timeout(WAIT, garbage.read_to_end(&mut rest))
        .await
        .expect("the garbage connection is closed");
    assert_eq!(socket.live_streams(), 1, "only the good client was added");
    // The silent one is still waiting for its handshake deadline.
    let mut byte = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(100), silent.read(&mut byte))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn connections_beyond_the_handshake_cap_are_closed_at_once() {
    let (server, _socket, _stop, _seen) = tcp_server().await;
    let mut silent = Vec::new();
    for _ in 0..MAX_HANDSHAKES {
        silent.push(TcpStream::connect(server).await.unwrap());
    }
    let mut one_too_many = TcpStream::connect(server).await.unwrap();
    let mut rest = Vec::new();
    // Closed without a word, well before the handshake deadline would have closed it.
    let read = timeout(Duration::from_secs(2), one_too_many.read_to_end(&mut rest))
        .await
        .expect("closed at once");
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "nothing was sent: {read:?}"
    );
}

#[tokio::test]
async fn a_server_that_hangs_up_closes_the_client_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let config = server_config(&key(1)).unwrap();
    let (hang_up, hung_up) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (stream, client) = tls_server(Box::new(tcp), config).await.unwrap();
        assert_eq!(client, key(2).node_id());
        let _ = hung_up.await;
        drop(stream);
    });
    let stream = connect_tcp(server, &key(2), key(1).node_id(), WAIT)
        .await
        .unwrap();
    let socket = StreamClientSocket::new(stream, server, addr("127.0.0.1:0"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!socket.is_closed());
    hang_up.send(()).unwrap();
    timeout(WAIT, socket.closed()).await.expect("closed");
    assert!(socket.is_closed());
}
