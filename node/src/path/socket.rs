//! The path socket: what quinn sends through (DESIGN.md, "Connections"). Each remote peer
//! appears to quinn as one stable mapped address ([`super::mapped`]); underneath, each packet
//! goes on the peer's best live path ([`super::state`]): a confirmed direct address on the
//! primary UDP socket, or the relay. Probes ([`mesh_proto::probe`]) share the primary socket
//! and are answered here, never shown to quinn.
//!
//! Packets from the relay come with the sender's relay-proven key and are shown to quinn from
//! that peer's mapped address. Packets on the primary socket from an address known to belong
//! to a peer (one its authenticated probe came from, or a listed candidate) are shown from the
//! peer's mapped address too, so a connection does not notice its packets moving between the
//! relay and a direct path; anything else is shown from its real address (a peer not yet
//! known, or the coordinator).
//!
//! The relay connection is a QUIC connection of its own (its own socket), as iroh's relay
//! connection is a TCP connection of its own.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mesh_proto::probe::{Probe, ProbeKind, ReplayGuard, is_probe};
use mesh_proto::socket::DatagramSocket;
use mesh_proto::{Clock, NodeId, SecretKey};
use tokio::time::Instant;

use super::mapped::{MappedAddrs, is_mapped};
use super::relay_client::{FromRelay, RelayClient};
use super::state::{Path, PeerPaths, Source};

/// Packets from the relay waiting for quinn.
const RELAY_INBOX: usize = 1024;
/// How often the driver looks for due pings when nothing else wakes it.
const DRIVER_TICK: Duration = Duration::from_millis(100);

/// What the socket counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathCounters {
    /// Probes refused, by reason (`forged`, `replayed`, `stale`, ...).
    pub probes_refused: HashMap<String, u64>,
    /// Probes accepted.
    pub probes_accepted: u64,
    /// QUIC bytes sent straight to a peer.
    pub direct_bytes: u64,
    /// QUIC bytes sent through the relay.
    pub relay_bytes: u64,
    /// Packets dropped for want of any path.
    pub no_path: u64,
}

struct Inner {
    mapped: MappedAddrs,
    peers: HashMap<NodeId, PeerPaths>,
    /// Which peer each known direct address belongs to.
    owners: HashMap<SocketAddr, NodeId>,
    relay: Option<RelayClient>,
    relay_inbox: VecDeque<(Vec<u8>, SocketAddr)>,
    recv_waker: Option<Waker>,
    replay: ReplayGuard,
    counters: PathCounters,
}

/// The path socket (see the module docs).
pub struct PathSocket {
    key: SecretKey,
    udp: Arc<dyn DatagramSocket>,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket")
            .field("node", &self.key.node_id().short())
            .field("udp", &self.udp)
            .finish_non_exhaustive()
    }
}

/// A peer's path as the socket sees it, for `mesh path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The chosen path.
    pub path: Path,
    /// Its round trip, when direct and confirmed.
    pub rtt: Option<Duration>,
}

impl PathSocket {
    /// A path socket for `key` over the primary socket `udp`; probe times come from `clock`
    /// (corrected to the coordinator's). Spawn [`drive`](Self::drive) next to it.
    pub fn new(key: SecretKey, udp: Arc<dyn DatagramSocket>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            key,
            udp,
            clock,
            inner: Mutex::new(Inner {
                mapped: MappedAddrs::default(),
                peers: HashMap::new(),
                owners: HashMap::new(),
                relay: None,
                relay_inbox: VecDeque::new(),
                recv_waker: None,
                replay: ReplayGuard::default(),
                counters: PathCounters::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The address quinn should connect to for `peer`, with `candidates` to try directly.
    pub fn peer_addr(&self, peer: NodeId, candidates: &[SocketAddr]) -> SocketAddr {
        let now = Instant::now();
        let mut inner = self.lock();
        let has_relay = inner.relay.is_some();
        let paths = inner.peers.entry(peer).or_default();
        paths.set_relay(has_relay);
        for addr in candidates {
            paths.add_candidate(*addr, Source::Listed, now);
        }
        for addr in candidates {
            inner.owners.insert(*addr, peer);
        }
        inner.mapped.addr_of(peer)
    }

    /// Uses `relay` for peers without a direct path, and reads what it delivers.
    pub fn set_relay(self: &Arc<Self>, relay: RelayClient) {
        {
            let mut inner = self.lock();
            inner.relay = Some(relay.clone());
            for paths in inner.peers.values_mut() {
                paths.set_relay(true);
            }
        }
        let socket = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Ok(message) = relay.recv().await {
                let Some(socket) = socket.upgrade() else {
                    return;
                };
                socket.on_relay_message(message);
            }
        });
    }

    /// The chosen path to `peer` now.
    pub fn path_info(&self, peer: NodeId) -> Option<PathInfo> {
        let now = Instant::now();
        let mut inner = self.lock();
        let paths = inner.peers.get_mut(&peer)?;
        let path = paths.choose(now);
        let rtt = match path {
            Path::Direct(addr) => paths.rtt(addr, now),
            _ => None,
        };
        Some(PathInfo { path, rtt })
    }

    /// What it counted.
    pub fn counters(&self) -> PathCounters {
        self.lock().counters.clone()
    }

    /// Sends due pings until the socket is dropped: run as a task.
    pub async fn drive(self: Arc<Self>) {
        loop {
            self.send_due_pings();
            tokio::time::sleep(DRIVER_TICK).await;
        }
    }

    fn send_due_pings(&self) {
        let now = Instant::now();
        let mut pings = Vec::new();
        {
            let mut inner = self.lock();
            for (peer, paths) in &mut inner.peers {
                paths.expire(now);
                for addr in paths.due_pings(now) {
                    let mut nonce = [0u8; 16];
                    if getrandom::fill(&mut nonce).is_err() {
                        continue;
                    }
                    paths.ping_sent(addr, nonce, now);
                    pings.push((*peer, addr, nonce));
                }
            }
        }
        for (peer, addr, nonce) in pings {
            let probe = Probe {
                kind: ProbeKind::Ping,
                sender: self.key.node_id(),
                receiver: peer,
                nonce,
                sent_at: self.clock.now(),
                observed: None,
            };
            // A failed send is a lost ping: the next one goes out on schedule.
            let _ = self.udp.try_send_to(&probe.seal(&self.key), addr);
        }
    }

    /// A probe arrived from `from` on the primary socket.
    fn on_probe(&self, datagram: &[u8], from: SocketAddr) {
        let me = self.key.node_id();
        let now = Instant::now();
        let opened = Probe::open(datagram, me);
        let mut inner = self.lock();
        let probe = match opened.and_then(|p| inner.replay.check(&p, self.clock.now()).map(|()| p))
        {
            Ok(probe) => probe,
            Err(why) => {
                *inner
                    .counters
                    .probes_refused
                    .entry(why.to_string())
                    .or_default() += 1;
                return;
            }
        };
        inner.counters.probes_accepted += 1;
        let has_relay = inner.relay.is_some();
        let paths = inner.peers.entry(probe.sender).or_default();
        paths.set_relay(has_relay);
        let reply = match probe.kind {
            ProbeKind::Ping => {
                paths.ping_received(from, now);
                inner.owners.insert(from, probe.sender);
                inner.mapped.addr_of(probe.sender);
                Some(Probe {
                    kind: ProbeKind::Pong { echo: probe.nonce },
                    sender: me,
                    receiver: probe.sender,
                    nonce: random_nonce(),
                    sent_at: self.clock.now(),
                    observed: Some(from),
                })
            }
            ProbeKind::Pong { echo } => {
                if paths.pong_received(from, echo, now) {
                    inner.owners.insert(from, probe.sender);
                }
                None
            }
        };
        drop(inner);
        if let Some(reply) = reply {
            let _ = self.udp.try_send_to(&reply.seal(&self.key), from);
        }
    }

    fn on_relay_message(&self, message: FromRelay) {
        let FromRelay::Packet { from, packet } = message else {
            return;
        };
        // Probes through the relay are not used yet: a relay path needs no confirmation.
        if is_probe(&packet) {
            return;
        }
        let mut inner = self.lock();
        let addr = inner.mapped.addr_of(from);
        let has_relay = inner.relay.is_some();
        inner.peers.entry(from).or_default().set_relay(has_relay);
        if inner.relay_inbox.len() < RELAY_INBOX {
            inner.relay_inbox.push_back((packet, addr));
        }
        if let Some(waker) = inner.recv_waker.take() {
            waker.wake();
        }
    }
}

/// An IPv4 address as a dual-stack IPv6 socket shows it (`::ffff:a.b.c.d`).
fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 @ SocketAddr::V6(_) => v6,
    }
}

/// The IPv4 address behind an IPv4-mapped IPv6 one (the primary socket may be IPv4 only).
fn to_v4(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(v4.into(), v6.port())),
        v4 @ SocketAddr::V4(_) => v4,
    }
}

fn random_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    // Without randomness the pong is still signed and fresh by time; a zero nonce only risks
    // being refused as a replay.
    let _ = getrandom::fill(&mut nonce);
    nonce
}

impl DatagramSocket for PathSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        // IPv6, as a dual-stack socket's: quinn sends to IPv6 mapped addresses only from a
        // socket it believes is IPv6.
        Ok(to_v6(self.udp.local_addr()?))
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        if !is_mapped(to) {
            return self.udp.try_send_to(datagram, to_v4(to));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(peer) = inner.mapped.peer_of(to) else {
            inner.counters.no_path += 1;
            return Ok(());
        };
        let path = inner
            .peers
            .get_mut(&peer)
            .map_or(Path::None, |p| p.choose(now));
        let len = u64::try_from(datagram.len()).unwrap_or(u64::MAX);
        match path {
            Path::Direct(addr) | Path::Guess(addr) => {
                inner.counters.direct_bytes += len;
                drop(inner);
                self.udp.try_send_to(datagram, addr)
            }
            Path::Relay => {
                inner.counters.relay_bytes += len;
                let relay = inner.relay.clone();
                drop(inner);
                if let Some(relay) = relay {
                    // Like a UDP send, a packet the relay path cannot take is lost, not an
                    // error quinn must handle.
                    let _ = relay.send(peer, datagram.to_vec());
                }
                Ok(())
            }
            Path::None => {
                inner.counters.no_path += 1;
                Ok(())
            }
        }
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.udp.poll_send_ready(cx)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        {
            let mut inner = self.lock();
            if let Some((packet, from)) = inner.relay_inbox.pop_front() {
                let len = packet.len().min(buf.len());
                buf[..len].copy_from_slice(&packet[..len]);
                return Poll::Ready(Ok((len, from)));
            }
            inner.recv_waker = Some(cx.waker().clone());
        }
        loop {
            let (len, from) = match self.udp.poll_recv_from(cx, buf) {
                Poll::Ready(Ok(got)) => got,
                other => return other,
            };
            if is_probe(&buf[..len]) {
                self.on_probe(&buf[..len], from);
                continue;
            }
            let shown = {
                let inner = self.lock();
                inner
                    .owners
                    .get(&from)
                    .and_then(|peer| inner.mapped.known_addr_of(*peer))
                    .unwrap_or_else(|| to_v6(from))
            };
            return Poll::Ready(Ok((len, shown)));
        }
    }
}
