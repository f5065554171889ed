//! The QUIC endpoint every participant runs: quinn over the [`DatagramSocket`] seam, TLS 1.3
//! with node keys (see [`crate::tls`]).
//!
//! quinn never touches a real socket here: it sees an [`AsyncUdpSocket`] that forwards to the
//! seam, so the same endpoint runs over real UDP, over the path socket, or over the simulator.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_proto::socket::DatagramSocket;
use mesh_proto::{NodeId, SecretKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, TokioRuntime, UdpPoller};

use crate::error::Error;
use crate::tls;

/// A connection between peers (a session) with no traffic for this long is closed. This is
/// how a host learns that a client vanished without a word (killed, or its network gone),
/// and its sessions are hung up: long enough that a network outage of 10 seconds or so (a
/// train's tunnel, a router reboot) does not kill a shell, short enough that a vanished client
/// does not leave its processes for long. A dead direct path is not waited out here: the
/// path socket moves the session to the relay within seconds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The dialing end of a session (the client) sends a keep-alive after this long without
/// traffic, so an idle but live session never reaches [`IDLE_TIMEOUT`], and a client whose
/// address changed (a new network, a NAT that forgot its mapping) is heard from its new
/// address within this long even when it has nothing to say: the host's replies then find
/// it. The host is woken by it about once every two seconds per idle session.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A connection to a coordinator or relay (a host's presence, a relay connection) sends a
/// keep-alive after this long without traffic: well inside the shortest common NAT mapping
/// timeouts (Linux conntrack forgets an unanswered UDP flow after 30 s, an answered one after
/// 120 s; carrier NATs keep mappings 30–60 s: two keep-alives fit the shortest), and rare
/// enough that an idle agent is woken less than once a second by everything it runs.
pub const INFRA_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// ...and is closed after this long without traffic (two keep-alives lost): a host that
/// vanished shows offline within it, and a node reconnects to a coordinator or relay that
/// vanished. A clean stop or a restart (whose stateless reset answers the next packet) is
/// noticed at once.
pub const INFRA_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// quinn's view of a [`DatagramSocket`].
struct SeamSocket(Arc<dyn DatagramSocket>);

impl fmt::Debug for SeamSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SeamSocket").field(&self.0).finish()
    }
}

#[derive(Debug)]
struct SeamPoller(Arc<dyn DatagramSocket>);

impl UdpPoller for SeamPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_send_ready(cx)
    }
}

impl AsyncUdpSocket for SeamSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(SeamPoller(self.0.clone()))
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // max_transmit_segments is 1, so quinn never hands us a GSO batch.
        self.0.try_send_to(transmit.contents, transmit.destination)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        match self.0.poll_recv_from(cx, buf) {
            Poll::Ready(Ok((len, addr))) => {
                *meta = RecvMeta {
                    addr,
                    len,
                    stride: len,
                    ecn: None,
                    dst_ip: None,
                };
                Poll::Ready(Ok(1))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }
}

/// How big a connection's packets may be.
#[derive(Debug, Clone, Copy)]
enum Mtu {
    /// Start at this size and let path MTU discovery raise it: a connection to a real address
    /// (the coordinator, a relay), whose packets always take that one path.
    Discover(u16),
    /// Every packet at most [`PEER_MTU`], no discovery: a connection to a peer through the path
    /// socket, whose packets may move between direct paths and the relay at any time. A size
    /// discovered on one path would be silently lost on another (a relayed packet carries
    /// framing, and its relay connection may have a smaller MTU), so the size is one every
    /// path carries.
    Peer,
}

/// Which end of a connection the transport is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The end that dialed: it sends the keep-alives (it is the one behind a NAT whose
    /// mapping they keep, and the other end's answers keep both idle timers from running out).
    Dialer,
    /// The end that accepted: it sends none, so a host or coordinator with many idle
    /// connections is not woken for each of them.
    Listener,
}

fn transport_config(mtu: Mtu, end: End) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // Sessions are between peers; a real address is a coordinator or a relay.
    let (idle, keep_alive) = match mtu {
        Mtu::Peer => (IDLE_TIMEOUT, KEEP_ALIVE_INTERVAL),
        Mtu::Discover(_) => (INFRA_IDLE_TIMEOUT, INFRA_KEEP_ALIVE),
    };
    // The constants are far below quinn's VarInt limit, so the conversion cannot fail.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    transport.keep_alive_interval((end == End::Dialer).then_some(keep_alive));
    match mtu {
        Mtu::Discover(initial) => {
            transport.initial_mtu(initial);
            // A relay connection's size is what lets a whole peer packet through: quinn's
            // black-hole detection must not shrink it below that after a burst of loss.
            transport.min_mtu(initial.max(DEFAULT_INITIAL_MTU));
        }
        Mtu::Peer => {
            transport.initial_mtu(PEER_MTU);
            transport.min_mtu(PEER_MTU);
            transport.mtu_discovery_config(None);
        }
    }
    Arc::new(transport)
}

/// The UDP payload size of every packet between peers (RFC 9000's minimum, 1,200 bytes),
/// whichever path it takes: it fits a relay datagram with its framing (checked where the relay
/// framing is defined) and every path QUIC can run on at all.
pub const PEER_MTU: u16 = 1200;

/// The UDP payload size QUIC starts with (quinn's and RFC 9000's minimum); path MTU
/// discovery raises it.
pub const DEFAULT_INITIAL_MTU: u16 = 1200;

/// How an endpoint is built beyond its key, socket and protocols.
#[derive(Debug, Clone, Copy)]
pub struct EndpointOptions {
    /// quinn's randomness (packet numbers, key-update timing) from this seed, so a simulated
    /// run replays exactly; `None` (always, outside a simulation) draws from the OS.
    pub seed: Option<[u8; 32]>,
    /// The UDP payload size connections start with, before path MTU discovery. A relay's
    /// connections start larger, since whole QUIC packets of the peers travel inside them.
    pub initial_mtu: u16,
    /// Whether the connections this endpoint accepts come from peers through a path socket
    /// (an agent's): their packets are then capped at [`PEER_MTU`] without discovery.
    pub accepts_peers: bool,
    /// For a server's one UDP endpoint (its role named here: "agent", "coordinator",
    /// "relay"): stateless-reset and connection-ID keys derived from the node's key and this
    /// role, so the process that replaces it after a restart resets its predecessor's
    /// connections at their next packet. `None` (clients, second transports): random keys,
    /// as RFC 9000 wants for any two endpoints that must not share them.
    pub restart_keys: Option<&'static str>,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            seed: None,
            initial_mtu: DEFAULT_INITIAL_MTU,
            accepts_peers: false,
            restart_keys: None,
        }
    }
}

/// A QUIC endpoint identified by a node key.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    key: SecretKey,
    initial_mtu: u16,
}

impl Endpoint {
    /// An endpoint on `socket` that connects as `key` and, if `accept_alpns` is not empty,
    /// accepts connections for those protocols. Must be called inside a tokio runtime.
    pub fn new(
        key: SecretKey,
        socket: Arc<dyn DatagramSocket>,
        accept_alpns: &[&[u8]],
    ) -> Result<Self, Error> {
        Self::with_options(key, socket, accept_alpns, EndpointOptions::default())
    }

    /// Like [`new`](Self::new), but quinn's own randomness comes from `seed`, so a simulated
    /// run replays exactly. Never use it outside a simulation.
    pub fn new_seeded(
        key: SecretKey,
        socket: Arc<dyn DatagramSocket>,
        accept_alpns: &[&[u8]],
        seed: [u8; 32],
    ) -> Result<Self, Error> {
        let options = EndpointOptions {
            seed: Some(seed),
            ..EndpointOptions::default()
        };
        Self::with_options(key, socket, accept_alpns, options)
    }

    /// Like [`new`](Self::new), with `options`.
    pub fn with_options(
        key: SecretKey,
        socket: Arc<dyn DatagramSocket>,
        accept_alpns: &[&[u8]],
        options: EndpointOptions,
    ) -> Result<Self, Error> {
        let mut endpoint_config = match options.restart_keys {
            Some(role) => {
                let mut config =
                    quinn::EndpointConfig::new(Arc::new(stateless_reset_key(&key, role)));
                // Connection IDs checked with a key of this node's too: a restarted process
                // must recognise its predecessor's IDs to answer them with a stateless reset.
                let cid_key = cid_key(&key, role);
                config.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                config
            }
            None => quinn::EndpointConfig::default(),
        };
        endpoint_config.rng_seed(options.seed);
        // The path socket tells probes from QUIC by the first byte (a probe's is 0x00, a QUIC
        // packet's has the fixed bit 0x40 set): a peer that greased the fixed bit would have
        // some of its packets mistaken for probes and dropped.
        endpoint_config.grease_quic_bit(false);
        let server = if accept_alpns.is_empty() {
            None
        } else {
            let tls = tls::server_config(&key, accept_alpns)?;
            let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Quic(e.to_string()))?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            let mtu = if options.accepts_peers {
                Mtu::Peer
            } else {
                Mtu::Discover(options.initial_mtu)
            };
            server.transport_config(transport_config(mtu, End::Listener));
            // Migration stays on: a peer's packets reach quinn from its mapped address once
            // the path socket knows the address they come from (a signed probe told it), and
            // from the real address before that (a connection's first packets may beat its
            // first probe; a client that moved sends from a new address before its probe
            // arrives). quinn moves a connection only for packets that decrypt, after
            // validating the new path, so either way only the peer itself can move it.
            Some(server)
        };
        let inner = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            server,
            Arc::new(SeamSocket(socket)),
            Arc::new(TokioRuntime),
        )
        .map_err(|e| Error::Quic(e.to_string()))?;
        Ok(Self {
            inner,
            key,
            initial_mtu: options.initial_mtu,
        })
    }

    /// This endpoint's secret key (for a second transport of the same node).
    pub(crate) fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// This endpoint's identity.
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Connects to the node `expected` at `addr` for protocol `alpn`; fails unless the peer
    /// proves it holds `expected`'s key.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: NodeId,
        alpn: &[u8],
    ) -> Result<Connection, Error> {
        let (tls, presented_instead) = tls::client_config(&self.key, expected, alpn)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // A mapped address is a peer behind the path socket (see `Mtu::Peer`).
        let mtu = if crate::path::mapped::is_mapped(addr) {
            Mtu::Peer
        } else {
            Mtu::Discover(self.initial_mtu)
        };
        config.transport_config(transport_config(mtu, End::Dialer));
        // The server name is unused: identity is the raw key, checked by the verifier.
        let connecting = self
            .inner
            .connect_with(config, addr, "mesh")
            .map_err(|e| Error::Quic(e.to_string()))?;
        let inner = connecting
            .await
            .map_err(|e| match presented_instead.get() {
                Some(presented) => Error::WrongHostKey {
                    expected,
                    presented: *presented,
                },
                None => Error::Connection(e),
            })?;
        Connection::new(inner)
    }

    /// The next incoming connection, authenticated; `None` once the endpoint is closed.
    /// A handshake that fails is reported as an error, and the caller accepts again.
    pub async fn accept(&self) -> Option<Result<Connection, Error>> {
        let incoming = self.inner.accept().await?;
        Some(match incoming.await {
            Ok(inner) => Connection::new(inner),
            Err(e) => Err(Error::Connection(e)),
        })
    }

    /// Accepts connections until `shutdown` completes (or the endpoint closes), spawning
    /// `serve` for each authenticated one; failed handshakes are logged and skipped.
    pub async fn accept_until<S, F>(&self, shutdown: impl Future<Output = ()>, serve: S)
    where
        S: Fn(Connection) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                incoming = self.accept() => match incoming {
                    Some(Ok(conn)) => {
                        tracing::debug!(peer = %conn.peer().short(), "connection");
                        tokio::spawn(serve(conn));
                    }
                    Some(Err(e)) => tracing::info!("a connection failed its handshake: {e}"),
                    None => return,
                },
            }
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner.close(0u32.into(), b"endpoint closed");
    }

    /// Closes every connection and waits (at most `limit`) until peers have been told, so
    /// they learn at once instead of at their idle timeout.
    pub async fn close_and_flush(&self, limit: Duration) {
        self.close();
        let _ = tokio::time::timeout(limit, self.inner.wait_idle()).await;
    }
}

/// An authenticated QUIC connection to a known node.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: quinn::Connection,
    peer: NodeId,
    alpn: Vec<u8>,
}

impl Connection {
    fn new(inner: quinn::Connection) -> Result<Self, Error> {
        let peer = inner
            .peer_identity()
            .and_then(|identity| {
                identity
                    .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|keys| keys.first().and_then(|der| tls::node_id_from_spki(der)))
            .ok_or_else(|| Error::Quic("peer is not authenticated by a node key".into()))?;
        let alpn = inner
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol)
            .unwrap_or_default();
        Ok(Self { inner, peer, alpn })
    }

    /// The peer's identity, proven in the handshake.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The protocol negotiated.
    pub fn alpn(&self) -> &[u8] {
        &self.alpn
    }

    /// The underlying quinn connection, for opening and accepting streams.
    pub fn quic(&self) -> &quinn::Connection {
        &self.inner
    }
}

/// The key behind this node's stateless resets, derived from its secret key rather than drawn
/// at random: a restarted agent or coordinator then resets its peers' stale connections at
/// their next packet (RFC 9000, 10.3), so they reconnect at once instead of waiting out an
/// idle timeout. One-way: the reset key reveals nothing of the secret key.
fn stateless_reset_key(key: &SecretKey, role: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derive(key, &purpose(b"mesh quic stateless reset key v1 ", role)).as_ref(),
    )
}

/// A derivation's label: what the key is for, and for which of the node's endpoints.
fn purpose(what: &[u8], role: &str) -> Vec<u8> {
    let mut label = what.to_vec();
    label.extend_from_slice(role.as_bytes());
    label
}

/// The key quinn checks this node's connection IDs with (see [`stateless_reset_key`]).
fn cid_key(key: &SecretKey, role: &str) -> u64 {
    let tag = derive(key, &purpose(b"mesh quic connection id key v1 ", role));
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(first)
}

/// A one-way derivation of a purpose's key from this node's secret key.
fn derive(key: &SecretKey, purpose: &[u8]) -> ring::hmac::Tag {
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &*key.seed());
    ring::hmac::sign(&secret, purpose)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::UdpSocket;
    use mesh_proto::messages::SESSION_ALPN;

    fn endpoint(seed: u8, alpns: &[&[u8]]) -> Endpoint {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        Endpoint::new(SecretKey::from_seed(&[seed; 32]), socket, alpns).unwrap()
    }

    #[tokio::test]
    async fn both_sides_learn_the_proven_key_and_streams_flow() {
        let host = endpoint(1, &[SESSION_ALPN]);
        let client = endpoint(2, &[]);
        let host_addr = host.local_addr().unwrap();
        let server = {
            let host = host.clone();
            tokio::spawn(async move {
                let conn = host.accept().await.unwrap().unwrap();
                let (mut send, mut recv) = conn.quic().accept_bi().await.unwrap();
                let got = recv.read_to_end(1024).await.unwrap();
                send.write_all(&got).await.unwrap();
                send.finish().unwrap();
                let _ = conn.quic().closed().await;
                (conn.peer(), conn.alpn().to_vec())
            })
        };
        let conn = client
            .connect(host_addr, host.node_id(), SESSION_ALPN)
            .await
            .unwrap();
        assert_eq!(conn.peer(), host.node_id());
        let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(1024).await.unwrap(), b"ping");
        conn.quic().close(0u32.into(), b"done");
        let (client_seen, alpn) = server.await.unwrap();
        assert_eq!(client_seen, client.node_id());
        assert_eq!(alpn, SESSION_ALPN);
    }

    #[tokio::test]
    async fn a_host_with_another_key_is_refused() {
        let host = endpoint(1, &[SESSION_ALPN]);
        let client = endpoint(2, &[]);
        let impostor_expected = SecretKey::from_seed(&[9; 32]).node_id();
        let host_addr = host.local_addr().unwrap();
        let accepting = tokio::spawn(async move { host.accept().await.map(|r| r.is_err()) });
        let err = client
            .connect(host_addr, impostor_expected, SESSION_ALPN)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::WrongHostKey { expected, presented }
                if expected == impostor_expected && presented == SecretKey::from_seed(&[1; 32]).node_id()),
            "{err}"
        );
        assert_eq!(
            accepting.await.unwrap(),
            Some(true),
            "the host saw a failed handshake"
        );
    }

    #[tokio::test]
    async fn an_unserved_protocol_is_refused() {
        let host = endpoint(1, &[SESSION_ALPN]);
        let client = endpoint(2, &[]);
        let host_addr = host.local_addr().unwrap();
        let host_id = host.node_id();
        let _accepting = tokio::spawn(async move { host.accept().await.map(|r| r.is_err()) });
        let result = client.connect(host_addr, host_id, b"mesh/other/1").await;
        assert!(result.is_err(), "connected without a shared ALPN");
    }

    #[test]
    fn restart_keys_are_the_same_for_one_node_key_and_differ_between_keys() {
        let (a, b) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );
        let tag = |k: &SecretKey, role| {
            ring::hmac::sign(&stateless_reset_key(k, role), b"cid")
                .as_ref()
                .to_vec()
        };
        let a_again = SecretKey::from_seed(&[1; 32]);
        assert_eq!(tag(&a, "agent"), tag(&a_again, "agent"));
        assert_ne!(tag(&a, "agent"), tag(&b, "agent"));
        assert_ne!(
            tag(&a, "agent"),
            tag(&a, "relay"),
            "one key, two roles: two keys"
        );
        assert_eq!(cid_key(&a, "agent"), cid_key(&a_again, "agent"));
        assert_ne!(cid_key(&a, "agent"), cid_key(&b, "agent"));
        assert_ne!(cid_key(&a, "agent"), cid_key(&a, "coordinator"));
        // Neither is the secret itself.
        assert_ne!(&derive(&a, b"x").as_ref()[..32], &a.seed()[..]);
    }
}
