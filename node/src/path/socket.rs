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
//!
//! Hole punching ([`super::punch`]) runs here too: [`PathSocket::check_nat`] learns how this
//! node's NAT maps (the coordinator answers pings on two ports), and [`PathSocket::punch`]
//! probes a peer's candidates from a start time the coordinator set for both sides, sprays
//! predicted or random ports, or opens extra sockets for birthday probing. An extra socket
//! whose path is confirmed carries that peer's packets (a [`Route`] names the socket); the
//! others close when the punch ends.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mesh_proto::nat::{NatMapping, check_port, classify};
use mesh_proto::probe::{Probe, ProbeKind, ReplayGuard, is_probe};
use mesh_proto::socket::{DatagramSocket, SocketBinder};
use mesh_proto::{Clock, NodeId, SecretKey};
use rand::SeedableRng;
use tokio::time::Instant;

use super::mapped::{MappedAddrs, PeerId, is_mapped};
use super::punch::{self, Step};
use super::relay_client::{FromRelay, RelayClient};
use super::state::{CandidateState, PRIMARY, Path, PeerPaths, Route, Source, Via};

/// Packets from the relay and the extra sockets waiting for quinn.
const SIDE_INBOX: usize = 1024;
/// Most extra sockets open at once (one birthday attempt, and the sockets kept for peers).
const MAX_EXTRAS: usize = 2 * punch::BIRTHDAY_SOCKETS;
/// Fewest free extra-socket slots worth a birthday attempt.
const MIN_BIRTHDAY_SOCKETS: usize = 64;
/// When the NAT check pings again if an answer is missing, and when it gives up.
const NAT_CHECK_RETRIES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(300),
    Duration::from_millis(800),
];
/// How long the NAT check waits for its answers.
const NAT_CHECK_LIMIT: Duration = Duration::from_millis(1500);
/// The longest the extra sockets of a birthday attempt are waited for to become writable.
const EXTRA_READY_LIMIT: Duration = Duration::from_millis(100);
/// Largest datagram read from an extra socket.
const EXTRA_BUFFER: usize = 2048;
/// The longest the driver sleeps when no ping is due: idle peers are forgotten on this beat.
const DRIVER_IDLE: Duration = Duration::from_secs(60);
/// Most remote processes tracked at once; beyond it the least recently active is forgotten.
/// Any key with a valid signature can make an entry (by pinging), so the table is bounded.
const MAX_PEERS: usize = 4096;
/// A peer neither heard from nor sent to for this long is forgotten (its connections, which
/// send keep-alives every 2 s, are long gone).
const PEER_IDLE: Duration = Duration::from_secs(600);
/// A peer with QUIC traffic this recent carries a live connection and is never evicted to
/// make room (keep-alives come every 2 s): probes alone cannot push a session out.
const QUIC_LIVE: Duration = Duration::from_secs(30);
/// Most processes of one key tracked at once (a device runs a few `mesh exec` together, a
/// script many one after another); a key cannot fill the table by inventing instances. A key
/// at the cap loses its own least recently active entry to a new one, live or not: a key can
/// only push out its own processes (a script's finished commands, whose connections look live
/// for [`QUIC_LIVE`] after they close).
const MAX_INSTANCES_PER_KEY: usize = 32;
/// Probes handled in one receive call before yielding: signature checks must not starve the
/// endpoint's driver.
const PROBES_PER_POLL: usize = 64;

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
    /// Packets the relay connection could not take (too big for a datagram, or the
    /// connection gone).
    pub relay_refused: u64,
    /// Times the ping driver woke up (an idle node should rarely).
    pub driver_wakeups: u64,
    /// Packets sent on a direct path in doubt and copied to the relay.
    pub hedged: u64,
    /// Pings sent (scheduled, punch rounds, sprays, birthday sockets).
    pub pings_sent: u64,
    /// Punches started.
    pub punches: u64,
    /// Extra sockets opened for birthday probing, and those kept for a peer's path.
    pub extra_sockets_opened: u64,
    /// Extra sockets kept because a peer's chosen path leaves from them.
    pub extra_sockets_kept: u64,
}

/// A NAT-check ping awaiting its pong: who answers, which of the check's two pings it is,
/// and where the observed address goes.
type NatCheck = (
    NodeId,
    usize,
    tokio::sync::mpsc::Sender<(usize, SocketAddr)>,
);

/// An extra socket opened for birthday probing.
struct Extra {
    socket: Arc<dyn DatagramSocket>,
    /// The peer it was opened for.
    peer: PeerId,
    /// The task reading it.
    reader: tokio::task::AbortHandle,
}

struct Inner {
    mapped: MappedAddrs,
    peers: HashMap<PeerId, Peer>,
    /// Which peer each known direct route belongs to.
    owners: HashMap<Route, PeerId>,
    relay: Option<RelayClient>,
    /// Packets from the relay and the extra sockets, with the mapped address to show.
    side_inbox: VecDeque<(Vec<u8>, SocketAddr)>,
    recv_waker: Option<Waker>,
    replay: ReplayGuard,
    counters: PathCounters,
    /// Extra sockets by their [`Via`].
    extras: HashMap<Via, Extra>,
    /// The last [`Via`] handed out.
    last_via: Via,
    /// NAT checks waiting for the coordinator's pong: nonce → who answers, which of the two
    /// pings it was, and where the observed address goes.
    nat_checks: HashMap<[u8; 16], NatCheck>,
    /// How this node's NAT maps, as the last check found.
    own_nat: NatMapping,
    /// Random ports for birthday probing (seeded from the instance, so simulations replay).
    rng: rand_chacha::ChaCha8Rng,
}

/// One remote process's paths, and its instance once learned (for an entry made before it
/// was known).
#[derive(Debug)]
struct Peer {
    paths: PeerPaths,
    instance: Option<u64>,
    /// When a packet last went to or came from it.
    last_active: Instant,
    /// When a QUIC packet (not a probe) last went to or came from it.
    quic_at: Option<Instant>,
    /// QUIC bytes sent to it straight.
    direct_bytes: u64,
    /// QUIC bytes sent to it through the relay.
    relay_bytes: u64,
    /// Pings sent to it (sprays included).
    pings_sent: u64,
    /// Punch rounds sent to it.
    punch_rounds: u64,
    /// When the punch under way toward it ends (one at a time: a rendezvous asked for again
    /// and again adds candidates, not sprays).
    punch_ends: Option<Instant>,
    /// How its NAT maps, as the coordinator passed on.
    nat: Option<NatMapping>,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self {
            paths: PeerPaths::default(),
            instance: None,
            last_active: now,
            quic_at: None,
            direct_bytes: 0,
            relay_bytes: 0,
            pings_sent: 0,
            punch_rounds: 0,
            punch_ends: None,
            nat: None,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The readers hold their sockets: they end with the path socket.
        for extra in self.extras.values() {
            extra.reader.abort();
        }
    }
}

impl Inner {
    /// The entry for `key`'s process `instance`: its own, else the key's entry without an
    /// instance (a host this client dialed), which learns it, else a new one.
    fn resolve(&mut self, key: NodeId, instance: u64) -> Option<PeerId> {
        let exact = PeerId {
            key,
            instance: Some(instance),
        };
        let dialed = PeerId {
            key,
            instance: None,
        };
        let id = if self.peers.contains_key(&exact) {
            exact
        } else if let Some(peer) = self.peers.get_mut(&dialed) {
            // A host runs one agent; a dialed peer that answers from another process has
            // restarted: follow it.
            peer.instance = Some(instance);
            dialed
        } else {
            exact
        };
        let has_relay = self.relay.is_some();
        let now = Instant::now();
        let peer = self.entry(id, now, false)?;
        peer.instance.get_or_insert(instance);
        peer.paths.set_relay(has_relay);
        peer.last_active = now;
        self.mapped.addr_of(id);
        Some(id)
    }

    /// `id`'s entry, made if missing. Room is made by forgetting the least recently active
    /// entry — of the same key, whatever it is, when the key has [`MAX_INSTANCES_PER_KEY`]
    /// already; else, when the table is full, of anyone without a live QUIC connection, and
    /// with no such entry the new one is refused (`None`), unless `dialing` (our own
    /// connection, which takes the least recently active entry's place whatever it is).
    fn entry(&mut self, id: PeerId, now: Instant, dialing: bool) -> Option<&mut Peer> {
        if !self.peers.contains_key(&id) {
            let same_key = self.peers.keys().filter(|p| p.key == id.key).count();
            if same_key >= MAX_INSTANCES_PER_KEY {
                let victim = self.evictable(now, |p| p.key == id.key, true)?;
                self.forget(victim);
            } else if self.peers.len() >= MAX_PEERS {
                let victim = self.evictable(now, |_| true, dialing)?;
                self.forget(victim);
            }
        }
        Some(self.peers.entry(id).or_insert_with(|| Peer::new(now)))
    }

    /// The least recently active entry among those `among` picks, skipping live QUIC
    /// connections unless `anyone`.
    fn evictable(
        &self,
        now: Instant,
        among: impl Fn(&PeerId) -> bool,
        anyone: bool,
    ) -> Option<PeerId> {
        self.peers
            .iter()
            .filter(|(id, _)| among(id))
            .filter(|(_, p)| {
                anyone
                    || p.quic_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= QUIC_LIVE)
            })
            .min_by_key(|(id, p)| (p.last_active, **id))
            .map(|(id, _)| *id)
    }

    /// Drops every trace of `id`: its paths, its addresses' ownership, its mapped address,
    /// the extra sockets opened for it.
    fn forget(&mut self, id: PeerId) {
        self.peers.remove(&id);
        self.owners.retain(|_, owner| *owner != id);
        self.mapped.forget(id);
        let extras: Vec<Via> = self
            .extras
            .iter()
            .filter(|(_, extra)| extra.peer == id)
            .map(|(via, _)| *via)
            .collect();
        for via in extras {
            self.close_extra(via);
        }
    }

    /// Closes an extra socket: its reader stops, its routes go.
    fn close_extra(&mut self, via: Via) {
        if let Some(extra) = self.extras.remove(&via) {
            extra.reader.abort();
            self.owners.retain(|route, _| route.via != via);
            if let Some(peer) = self.peers.get_mut(&extra.peer) {
                peer.paths.forget_via(via);
            }
        }
    }

    /// A free [`Via`] for a new extra socket.
    fn next_via(&mut self) -> Option<Via> {
        if self.extras.len() >= MAX_EXTRAS {
            return None;
        }
        loop {
            self.last_via = self.last_via.wrapping_add(1);
            if self.last_via != PRIMARY && !self.extras.contains_key(&self.last_via) {
                return Some(self.last_via);
            }
        }
    }

    /// Forgets peers idle for [`PEER_IDLE`].
    fn forget_idle(&mut self, now: Instant) {
        let idle: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_active) >= PEER_IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.forget(id);
        }
        // Routes whose candidate expired belong to no one any more.
        let peers = &self.peers;
        self.owners
            .retain(|route, id| peers.get(id).is_some_and(|p| p.paths.has_candidate(*route)));
        // An extra socket kept for a path that has since expired serves nobody.
        let unused: Vec<Via> = self
            .extras
            .iter()
            .filter(|(via, extra)| {
                self.peers.get(&extra.peer).is_none_or(|p| {
                    let punching = p.punch_ends.is_some_and(|ends| now < ends);
                    !punching && !p.paths.uses_via(**via)
                })
            })
            .map(|(via, _)| *via)
            .collect();
        for via in unused {
            self.close_extra(via);
        }
    }

    /// The first entry of `key` (the dialed one if any), for reports.
    fn entry_of(&mut self, key: NodeId) -> Option<&mut Peer> {
        let id = self
            .peers
            .keys()
            .filter(|id| id.key == key)
            .min_by_key(|id| id.instance)
            .copied()?;
        self.peers.get_mut(&id)
    }
}

/// The path socket (see the module docs).
pub struct PathSocket {
    key: SecretKey,
    /// Where extra sockets for birthday probing come from (none: no birthday probing).
    binder: std::sync::OnceLock<Arc<dyn SocketBinder>>,
    /// This process's instance: probes and relay frames carry it, so peers can tell this
    /// process from others with the same key.
    instance: u64,
    udp: Arc<dyn DatagramSocket>,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Whether a relay connection is up.
    relay_up: tokio::sync::watch::Sender<bool>,
    /// Direct paths that failed so far, by peer key (a client re-punches when one to its
    /// host fails).
    failures: tokio::sync::watch::Sender<HashMap<NodeId, u64>>,
    /// Set by [`kill`](Self::kill): sends nothing, takes no relay.
    dead: std::sync::atomic::AtomicBool,
    /// Nonces handed out so far.
    nonces: std::sync::atomic::AtomicU64,
    /// Wakes the ping driver early: a new candidate may be due before its planned wake-up.
    wake_driver: Arc<tokio::sync::Notify>,
}

impl Drop for PathSocket {
    fn drop(&mut self) {
        // The driver holds only a weak reference: let it see the socket is gone.
        self.wake_driver.notify_one();
    }
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
    /// Since when it has been direct.
    pub direct_since: Option<Instant>,
    /// Every direct candidate and how it stands.
    pub candidates: Vec<CandidateState>,
    /// QUIC bytes sent to the peer straight.
    pub direct_bytes: u64,
    /// QUIC bytes sent to the peer through the relay.
    pub relay_bytes: u64,
    /// Pings sent to the peer (punch sprays included).
    pub pings_sent: u64,
    /// Punch rounds sent to the peer.
    pub punch_rounds: u64,
    /// How this node's NAT maps.
    pub own_nat: NatMapping,
    /// How the peer's NAT maps, if a rendezvous said.
    pub peer_nat: Option<NatMapping>,
    /// How often the chosen path changed.
    pub path_changes: u64,
    /// How often a confirmed direct path failed (went silent under traffic).
    pub path_failures: u64,
}

/// A punch toward one peer, as a rendezvous describes it.
#[derive(Debug, Clone)]
pub struct PunchTarget {
    /// The peer's key.
    pub peer: NodeId,
    /// Its process (`None`: the host this process dialed).
    pub instance: Option<u64>,
    /// Its candidates, the coordinator's observation first.
    pub addrs: Vec<SocketAddr>,
    /// How its NAT maps.
    pub nat: NatMapping,
    /// When to start.
    pub start: Instant,
}

impl PathSocket {
    /// A path socket for `key` over the primary socket `udp`; probe times come from `clock`
    /// (corrected to the coordinator's). Spawn [`drive`](Self::drive) next to it.
    pub fn new(key: SecretKey, udp: Arc<dyn DatagramSocket>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let mut instance = [0u8; 8];
        // Without randomness, a fixed instance only stops two processes of one key at once.
        let _ = getrandom::fill(&mut instance);
        Self::with_instance(key, udp, clock, u64::from_le_bytes(instance))
    }

    /// Like [`new`](Self::new) with a given instance (a simulation's, from its seed).
    pub fn with_instance(
        key: SecretKey,
        udp: Arc<dyn DatagramSocket>,
        clock: Arc<dyn Clock>,
        instance: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            key,
            binder: std::sync::OnceLock::new(),
            instance,
            udp,
            clock,
            inner: Mutex::new(Inner {
                mapped: MappedAddrs::default(),
                peers: HashMap::new(),
                owners: HashMap::new(),
                relay: None,
                side_inbox: VecDeque::new(),
                recv_waker: None,
                replay: ReplayGuard::default(),
                counters: PathCounters::default(),
                extras: HashMap::new(),
                last_via: PRIMARY,
                nat_checks: HashMap::new(),
                own_nat: NatMapping::Unknown,
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(instance),
            }),
            relay_up: tokio::sync::watch::Sender::new(false),
            failures: tokio::sync::watch::Sender::new(HashMap::new()),
            dead: std::sync::atomic::AtomicBool::new(false),
            nonces: std::sync::atomic::AtomicU64::new(0),
            wake_driver: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Stops the socket for good, as its process's death would: nothing more is sent on any
    /// path and the relay connection is closed (a simulated kill).
    pub fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.lock();
        let extras: Vec<Via> = inner.extras.keys().copied().collect();
        for via in extras {
            inner.close_extra(via);
        }
        let relay = inner.relay.take();
        drop(inner);
        if let Some(relay) = relay {
            relay.close();
        }
        self.clear_relay();
    }

    /// Lets the socket open extra sockets from `binder` for birthday probing (set once; a
    /// socket without one never probes that way).
    pub fn set_binder(&self, binder: Arc<dyn SocketBinder>) {
        let _ = self.binder.set(binder);
    }

    /// A nonce never used before by this socket: its instance and a counter. Nonces need to be
    /// unique, not secret (a probe is signed), and a counter keeps simulated runs exact.
    fn next_nonce(&self) -> [u8; 16] {
        let n = self
            .nonces
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.instance.to_le_bytes());
        nonce[8..].copy_from_slice(&n.to_le_bytes());
        nonce
    }

    /// The primary socket's local address.
    pub fn primary_addr(&self) -> Option<SocketAddr> {
        self.udp.local_addr().ok()
    }

    /// This process's instance (see the field's docs).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether [`kill`](Self::kill) was called.
    pub fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The address quinn should connect to for `peer`, with `candidates` to try directly.
    pub fn peer_addr(&self, peer: NodeId, candidates: &[SocketAddr]) -> SocketAddr {
        let now = Instant::now();
        let id = PeerId {
            key: peer,
            instance: None,
        };
        let mut inner = self.lock();
        let has_relay = inner.relay.is_some();
        let Some(entry) = inner.entry(id, now, true) else {
            // Unreachable: a dialing entry always finds a place.
            return inner.mapped.addr_of(id);
        };
        entry.last_active = now;
        entry.paths.set_relay(has_relay);
        for addr in candidates {
            let route = Route::primary(to_v4(*addr));
            entry.paths.add_candidate(route, Source::Listed, now);
        }
        for addr in candidates {
            inner.owners.insert(Route::primary(to_v4(*addr)), id);
        }
        let mapped = inner.mapped.addr_of(id);
        drop(inner);
        // Ping new candidates now rather than at the driver's next wake-up: a direct path is
        // confirmed sooner, and the host hears our ping (and learns that this address is
        // ours) before the connection's first packet, which follows on the same path.
        self.send_due_pings();
        self.wake_driver.notify_one();
        mapped
    }

    /// Uses `relay` for peers without a direct path, and reads what it delivers.
    pub fn set_relay(self: &Arc<Self>, relay: RelayClient) {
        if self.is_dead() {
            relay.close();
            return;
        }
        {
            let mut inner = self.lock();
            inner.relay = Some(relay.clone());
            for peer in inner.peers.values_mut() {
                peer.paths.set_relay(true);
            }
        }
        self.relay_up.send_replace(true);
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

    /// Stops using the relay (its connection closed): peers without a direct path fall back to
    /// their best guess until a relay is set again.
    pub fn clear_relay(&self) {
        let mut inner = self.lock();
        inner.relay = None;
        for peer in inner.peers.values_mut() {
            peer.paths.set_relay(false);
        }
        drop(inner);
        self.relay_up.send_replace(false);
    }

    /// A receiver whose `changed()` fails once this socket is dropped.
    pub fn lifetime(&self) -> tokio::sync::watch::Receiver<bool> {
        self.relay_up.subscribe()
    }

    /// A receiver of the number of direct paths that failed, by peer key.
    pub fn path_failures(&self) -> tokio::sync::watch::Receiver<HashMap<NodeId, u64>> {
        self.failures.subscribe()
    }

    /// Waits at most `limit` for a relay connection; returns whether one is up.
    pub async fn wait_for_relay(&self, limit: Duration) -> bool {
        let mut up = self.relay_up.subscribe();
        tokio::time::timeout(limit, up.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The chosen path to `peer` now (its first process, when several run).
    pub fn path_info(&self, peer: NodeId) -> Option<PathInfo> {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.entry_of(peer)?;
        let paths = &mut entry.paths;
        let path = paths.choose(now);
        let rtt = match path {
            Path::Direct(route) => paths.rtt(route, now),
            _ => None,
        };
        let (path_changes, path_failures) = paths.changes();
        let info = PathInfo {
            path_changes,
            path_failures,
            path,
            rtt,
            direct_since: paths.direct_since(),
            candidates: paths.candidates(now),
            direct_bytes: entry.direct_bytes,
            relay_bytes: entry.relay_bytes,
            pings_sent: entry.pings_sent,
            punch_rounds: entry.punch_rounds,
            own_nat: NatMapping::Unknown,
            peer_nat: entry.nat,
        };
        Some(PathInfo {
            own_nat: inner.own_nat,
            ..info
        })
    }

    /// The relay in use: its key and the address its connection goes to.
    pub fn relay(&self) -> Option<(NodeId, SocketAddr)> {
        let inner = self.lock();
        let relay = inner.relay.as_ref()?;
        Some((relay.relay_key(), relay.remote_addr()))
    }

    /// What it counted.
    pub fn counters(&self) -> PathCounters {
        self.lock().counters.clone()
    }

    /// How this node's NAT maps, as the last [`check_nat`](Self::check_nat) found.
    pub fn own_nat(&self) -> NatMapping {
        self.lock().own_nat
    }

    /// Takes `nat` as this node's NAT, as if a check had found it (a node that knows better,
    /// and tests).
    pub fn assume_nat(&self, nat: NatMapping) {
        self.lock().own_nat = nat;
    }

    /// How many extra sockets (for birthday probing) are open now.
    pub fn extra_sockets_open(&self) -> usize {
        self.lock().extras.len()
    }

    /// Learns how this node's NAT maps: pings the coordinator (`coordinator`, whose key
    /// answers) at its main address `main` and at its check port, and compares the addresses
    /// it saw ([`mesh_proto::nat`]). Pings again for a missing answer; gives `Unknown` when
    /// one never comes. The verdict is kept for punches.
    pub async fn check_nat(&self, coordinator: NodeId, main: SocketAddr) -> NatMapping {
        let main = to_v4(main);
        let targets = [main, SocketAddr::new(main.ip(), check_port(main.port()))];
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let mut seen: [Option<SocketAddr>; 2] = [None, None];
        let mut nonces = Vec::new();
        let started = Instant::now();
        let waits = NAT_CHECK_RETRIES
            .iter()
            .map(|after| (started + *after, true))
            .chain(std::iter::once((started + NAT_CHECK_LIMIT, false)));
        'check: for (until, then_ping) in waits {
            while seen.iter().any(Option::is_none) {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some((which, observed))) => {
                        let slot: &mut Option<SocketAddr> = &mut seen[which];
                        slot.get_or_insert(observed);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if seen.iter().all(Option::is_some) || !then_ping {
                break 'check;
            }
            // In order: the main port first, so for a sequential NAT the check port's
            // mapping is the newer one.
            for (which, to) in targets.iter().enumerate() {
                if seen[which].is_some() {
                    continue;
                }
                let nonce = self.next_nonce();
                nonces.push(nonce);
                let mut inner = self.lock();
                // Checks given up (their future dropped) leave entries nobody waits for.
                inner
                    .nat_checks
                    .retain(|_, (_, _, waiting)| !waiting.is_closed());
                inner
                    .nat_checks
                    .insert(nonce, (coordinator, which, tx.clone()));
                drop(inner);
                self.send_ping(coordinator, Route::primary(*to), nonce);
            }
        }
        let mut inner = self.lock();
        for nonce in &nonces {
            inner.nat_checks.remove(nonce);
        }
        drop(inner);
        let local = self
            .udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let local_ips = if local.ip().is_unspecified() {
            super::local::interface_ips()
        } else {
            Vec::new()
        };
        let verdict = classify(local, &local_ips, seen[0], seen[1]);
        self.lock().own_nat = verdict;
        verdict
    }

    /// Punches toward a peer (see [`super::punch`]): its candidates are added (the
    /// coordinator vouches for them), and from `target.start` on they are pinged in quick
    /// rounds, with predicted or random ports sprayed, or extra sockets opened, as
    /// [`punch::plan`] says for both sides' NATs. Returns at once; the punch runs as a task.
    pub fn punch(self: &Arc<Self>, target: PunchTarget) {
        let now = Instant::now();
        let mut inner = self.lock();
        let id = match target.instance {
            Some(instance) => inner.resolve(target.peer, instance),
            None => {
                let id = PeerId {
                    key: target.peer,
                    instance: None,
                };
                let has_relay = inner.relay.is_some();
                inner.entry(id, now, true).map(|entry| {
                    entry.paths.set_relay(has_relay);
                    id
                })
            }
        };
        let Some(id) = id else {
            return;
        };
        let addrs: Vec<SocketAddr> = target.addrs.iter().map(|a| to_v4(*a)).collect();
        let start = target.start.clamp(now, now + punch::MAX_START_DELAY);
        let mut under_way = false;
        if let Some(peer) = inner.peers.get_mut(&id) {
            peer.nat = Some(target.nat);
            peer.last_active = now;
            for addr in &addrs {
                peer.paths
                    .add_candidate(Route::primary(*addr), Source::Listed, now);
            }
            under_way = peer.punch_ends.is_some_and(|ends| now < ends);
            if !under_way {
                peer.punch_ends = Some(start + punch::PUNCH_WINDOW);
            }
        }
        for addr in &addrs {
            // As for a ping: an address the peer only claims never takes a route from
            // another peer (a pong to our own ping there does).
            inner.owners.entry(Route::primary(*addr)).or_insert(id);
        }
        if under_way {
            // The new candidates are pinged by the driver (and the punch's next rounds).
            drop(inner);
            self.wake_driver.notify_one();
            return;
        }
        inner.counters.punches += 1;
        let steps = punch::plan(inner.own_nat, target.nat, &addrs);
        drop(inner);
        tracing::debug!(peer = %target.peer.short(), ?steps, "punching");
        tokio::spawn(run_punch(Arc::downgrade(self), id, steps, start));
    }

    /// Whether `id` has a confirmed direct path now.
    fn is_direct(&self, id: PeerId) -> bool {
        let now = Instant::now();
        self.lock()
            .peers
            .get(&id)
            .is_some_and(|peer| peer.paths.has_confirmed(now))
    }

    /// One punch round: pings every unconfirmed candidate of `id` now, and `extra` addresses
    /// (predicted ports) as sprays.
    fn punch_round(&self, id: PeerId, extra: &[SocketAddr]) {
        let now = Instant::now();
        let mut pings = Vec::new();
        {
            let mut inner = self.lock();
            let Some(peer) = inner.peers.get_mut(&id) else {
                return;
            };
            peer.punch_rounds += 1;
            for route in peer.paths.unconfirmed(now) {
                let nonce = self.next_nonce();
                peer.paths.ping_sent(route, nonce, now);
                pings.push((route, nonce));
            }
            peer.pings_sent += pings.len() as u64;
        }
        for (route, nonce) in pings {
            self.send_ping(id.key, route, nonce);
        }
        self.spray(id, extra.iter().map(|addr| Route::primary(*addr)));
    }

    /// Pings `id` on each of `routes` (guessed ports, or an extra socket's way to the peer),
    /// remembered as sprays: a pong makes its route a confirmed candidate.
    fn spray(&self, id: PeerId, routes: impl IntoIterator<Item = Route>) {
        let now = Instant::now();
        let mut pings = Vec::new();
        {
            let mut inner = self.lock();
            let Some(peer) = inner.peers.get_mut(&id) else {
                return;
            };
            for route in routes {
                let nonce = self.next_nonce();
                if peer.paths.spray_sent(route, nonce, now) {
                    pings.push((route, nonce));
                }
            }
            peer.pings_sent += pings.len() as u64;
        }
        for (route, nonce) in pings {
            self.send_ping(id.key, route, nonce);
        }
    }

    /// Opens up to [`punch::BIRTHDAY_SOCKETS`] extra sockets for `id` (fewer when others are
    /// open; none without a binder) and returns their [`Via`]s.
    fn open_extras(self: &Arc<Self>, id: PeerId) -> Vec<Via> {
        let Some(binder) = self.binder.get().cloned() else {
            return Vec::new();
        };
        let free = MAX_EXTRAS.saturating_sub(self.lock().extras.len());
        let count = punch::BIRTHDAY_SOCKETS.min(free);
        if count < MIN_BIRTHDAY_SOCKETS {
            return Vec::new();
        }
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut opened = Vec::with_capacity(count);
        for _ in 0..count {
            let Ok(socket) = binder.bind(any) else {
                // Out of ports or descriptors: probe with what is open.
                break;
            };
            let mut inner = self.lock();
            let Some(via) = inner.next_via() else {
                break;
            };
            let reader = tokio::spawn(read_extra(Arc::downgrade(self), via, socket.clone()));
            inner.extras.insert(
                via,
                Extra {
                    socket,
                    peer: id,
                    reader: reader.abort_handle(),
                },
            );
            inner.counters.extra_sockets_opened += 1;
            opened.push(via);
        }
        opened
    }

    /// The extra sockets `vias` (those still open).
    fn extra_sockets(&self, vias: &[Via]) -> Vec<Arc<dyn DatagramSocket>> {
        let inner = self.lock();
        vias.iter()
            .filter_map(|via| inner.extras.get(via).map(|e| e.socket.clone()))
            .collect()
    }

    /// The end of a punch: sprays forgotten, and of the extra sockets `vias`, those carrying a
    /// confirmed path are kept (the peer may send on any of them: its choice need not be
    /// ours; at most the peer's candidate bound of them), the rest closed.
    fn end_punch(&self, id: PeerId, vias: &[Via]) {
        let now = Instant::now();
        let mut inner = self.lock();
        let confirmed: Vec<Via> = inner.peers.get_mut(&id).map_or_else(Vec::new, |peer| {
            peer.paths.clear_sprays();
            peer.paths
                .candidates(now)
                .iter()
                .filter(|c| c.confirmed)
                .map(|c| c.route.via)
                .collect()
        });
        for via in vias {
            if confirmed.contains(via) {
                inner.counters.extra_sockets_kept += 1;
            } else {
                inner.close_extra(*via);
            }
        }
    }

    /// Sends due pings until the socket is dropped: run as a task. It sleeps until the next
    /// ping falls due (or a new candidate arrives), so an idle node is left alone.
    pub async fn drive(self: Arc<Self>) {
        // Weak: the socket lives as long as its endpoint does, not as long as this task.
        let socket = Arc::downgrade(&self);
        let wake = self.wake_driver.clone();
        drop(self);
        loop {
            let next = match socket.upgrade() {
                Some(live) if !live.is_dead() => live.send_due_pings(),
                _ => return,
            };
            tokio::select! {
                biased;
                () = wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Sends the pings due now; returns when the next one falls due.
    fn send_due_pings(&self) -> Instant {
        let now = Instant::now();
        let mut pings = Vec::new();
        let next;
        {
            let mut inner = self.lock();
            inner.counters.driver_wakeups += 1;
            inner.forget_idle(now);
            for (id, peer) in &mut inner.peers {
                peer.paths.expire(now);
                for route in peer.paths.due_pings(now) {
                    let nonce = self.next_nonce();
                    peer.paths.ping_sent(route, nonce, now);
                    peer.pings_sent += 1;
                    pings.push((id.key, route, nonce));
                }
            }
            next = inner
                .peers
                .values()
                .filter_map(|peer| peer.paths.next_ping(now))
                .fold(now + DRIVER_IDLE, Instant::min);
        }
        // The map's order is random; the order pings go out in must not be.
        pings.sort_unstable();
        for (peer, route, nonce) in pings {
            self.send_ping(peer, route, nonce);
        }
        next
    }

    /// Sends a ping to `peer` on `route`. A failed send is a lost ping: the next one goes out
    /// on schedule.
    fn send_ping(&self, peer: NodeId, route: Route, nonce: [u8; 16]) {
        let probe = Probe {
            kind: ProbeKind::Ping,
            sender: self.key.node_id(),
            sender_instance: self.instance,
            receiver: peer,
            nonce,
            sent_at: self.clock.now(),
            observed: None,
        };
        self.lock().counters.pings_sent += 1;
        let _ = self.send_on(route, &probe.seal(&self.key));
    }

    /// Sends `datagram` on `route`: from the primary socket or the extra socket it names.
    fn send_on(&self, route: Route, datagram: &[u8]) -> io::Result<()> {
        if route.via == PRIMARY {
            return self.udp.try_send_to(datagram, route.addr);
        }
        let socket = self.lock().extras.get(&route.via).map(|e| e.socket.clone());
        match socket {
            Some(socket) => socket.try_send_to(datagram, route.addr),
            // Closed since the path was chosen: lost, like any UDP packet.
            None => Ok(()),
        }
    }

    /// A probe arrived on `route` (our socket, and the address it came from).
    fn on_probe(&self, datagram: &[u8], route: Route) {
        let from = route.addr;
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
        // The coordinator's answer to a NAT check: not a peer.
        if let ProbeKind::Pong { echo } = probe.kind {
            if inner
                .nat_checks
                .get(&echo)
                .is_some_and(|(from_key, _, _)| *from_key == probe.sender)
            {
                if let (Some((_, which, answer)), Some(observed)) =
                    (inner.nat_checks.remove(&echo), probe.observed)
                {
                    let _ = answer.try_send((which, to_v4(observed)));
                }
                return;
            }
        }
        let Some(id) = inner.resolve(probe.sender, probe.sender_instance) else {
            *inner
                .counters
                .probes_refused
                .entry("peer table full".into())
                .or_default() += 1;
            return;
        };
        inner.counters.probes_accepted += 1;
        if let Some(peer) = inner.peers.get_mut(&id) {
            peer.paths.heard(route, now);
        }
        let mut ping_back = None;
        let reply = match probe.kind {
            ProbeKind::Ping => {
                if let Some(peer) = inner.peers.get_mut(&id) {
                    peer.paths.ping_received(route, now);
                    // The peer's NAT just let a packet out toward us: our ping now is the
                    // round trip that confirms the path (and opens our side of it).
                    if peer.paths.take_ping_back(route, now) {
                        let nonce = self.next_nonce();
                        peer.paths.ping_sent(route, nonce, now);
                        peer.pings_sent += 1;
                        ping_back = Some(nonce);
                    }
                }
                // A new peer-reflexive candidate wants its first ping now.
                self.wake_driver.notify_one();
                // Packets from there are shown as this peer's only if no one owns the route
                // yet: an unconfirmed ping (its source may be spoofed) never takes a route
                // from another peer. A pong to our own ping there does (below).
                inner.owners.entry(route).or_insert(id);
                Some(Probe {
                    kind: ProbeKind::Pong { echo: probe.nonce },
                    sender: me,
                    sender_instance: self.instance,
                    receiver: probe.sender,
                    nonce: self.next_nonce(),
                    sent_at: self.clock.now(),
                    observed: Some(from),
                })
            }
            ProbeKind::Pong { echo } => {
                let confirmed = inner
                    .peers
                    .get_mut(&id)
                    .is_some_and(|peer| peer.paths.pong_received(route, echo, now));
                if confirmed {
                    inner.owners.insert(route, id);
                    // A confirmed path wants heartbeats: the driver may be asleep until a
                    // backed-off retry far away.
                    self.wake_driver.notify_one();
                }
                None
            }
        };
        drop(inner);
        if let Some(reply) = reply {
            let _ = self.send_on(route, &reply.seal(&self.key));
        }
        if let Some(nonce) = ping_back {
            self.send_ping(probe.sender, route, nonce);
        }
    }

    /// A datagram arrived on the extra socket `via`: a probe, or QUIC from the peer whose
    /// route it is (anything else is dropped: nobody else was told of the socket).
    fn on_extra_datagram(&self, via: Via, datagram: &[u8], from: SocketAddr) {
        let route = Route { via, addr: from };
        if is_probe(datagram) {
            self.on_probe(datagram, route);
            return;
        }
        let mut inner = self.lock();
        let Some(id) = inner.owners.get(&route).copied() else {
            return;
        };
        if let Some(peer) = inner.peers.get_mut(&id) {
            let now = Instant::now();
            peer.last_active = now;
            peer.quic_at = Some(now);
            peer.paths.heard(route, now);
        }
        let Some(shown) = inner.mapped.known_addr_of(id) else {
            return;
        };
        if inner.side_inbox.len() < SIDE_INBOX {
            inner.side_inbox.push_back((datagram.to_vec(), shown));
        }
        if let Some(waker) = inner.recv_waker.take() {
            waker.wake();
        }
    }

    fn on_relay_message(&self, message: FromRelay) {
        let FromRelay::Packet {
            from,
            from_instance,
            packet,
        } = message
        else {
            return;
        };
        // Probes through the relay are not used yet: a relay path needs no confirmation.
        if is_probe(&packet) {
            return;
        }
        let mut inner = self.lock();
        let Some(id) = inner.resolve(from, from_instance) else {
            inner.counters.no_path += 1;
            return;
        };
        if let Some(peer) = inner.peers.get_mut(&id) {
            peer.quic_at = Some(Instant::now());
        }
        let addr = inner.mapped.addr_of(id);
        if inner.side_inbox.len() < SIDE_INBOX {
            inner.side_inbox.push_back((packet, addr));
        }
        if let Some(waker) = inner.recv_waker.take() {
            waker.wake();
        }
    }
}

/// Carries out a punch's plan from `start` (see [`PathSocket::punch`]): one schedule of
/// rounds, sprays, extra sockets and the end, in time order, so a run replays exactly.
async fn run_punch(
    socket: std::sync::Weak<PathSocket>,
    id: PeerId,
    steps: Vec<Step>,
    start: Instant,
) {
    enum Event {
        Round,
        Spray(usize),
        OpenSockets(SocketAddr),
        Reping(SocketAddr),
        End,
    }
    let mut predicted: &[SocketAddr] = &[];
    let mut sprayed = Vec::new();
    let mut events: Vec<(Instant, Event)> = punch::ROUNDS
        .iter()
        .map(|after| (start + *after, Event::Round))
        .collect();
    for step in &steps {
        match step {
            Step::Predict(addrs) => predicted = addrs,
            Step::SprayRandom { ip, after } => {
                let Some(live) = socket.upgrade() else {
                    return;
                };
                let ports = {
                    let mut inner = live.lock();
                    let count = punch::BIRTHDAY_PROBES * punch::SPRAY_PASSES;
                    punch::random_ports(*ip, count, &mut inner.rng)
                };
                let per_pass = punch::BIRTHDAY_PROBES.div_ceil(punch::SPRAY_BATCH);
                for pass in 0..punch::SPRAY_PASSES {
                    let began =
                        start + *after + punch::SECOND_PASS * u32::try_from(pass).unwrap_or(0);
                    for batch in 0..per_pass {
                        let after = punch::SPRAY_EVERY * u32::try_from(batch).unwrap_or(u32::MAX);
                        events.push((began + after, Event::Spray(pass * per_pass + batch)));
                    }
                }
                sprayed = ports;
            }
            Step::OpenSockets(toward) => {
                let opened = start + punch::BIRTHDAY_AFTER;
                events.push((opened, Event::OpenSockets(*toward)));
                events.push((opened + punch::BIRTHDAY_REPING, Event::Reping(*toward)));
            }
        }
    }
    events.push((start + punch::PUNCH_WINDOW, Event::End));
    // Stable: at one instant, in the order pushed (rounds first).
    events.sort_by_key(|(at, _)| *at);
    let mut extras = Vec::new();
    for (at, event) in events {
        tokio::time::sleep_until(at).await;
        let Some(live) = socket.upgrade() else {
            return;
        };
        if live.is_dead() {
            return;
        }
        let direct = live.is_direct(id);
        match event {
            Event::Round if !direct => live.punch_round(id, predicted),
            Event::Spray(batch) if !direct => {
                let from = (batch * punch::SPRAY_BATCH).min(sprayed.len());
                let to = (from + punch::SPRAY_BATCH).min(sprayed.len());
                live.spray(id, sprayed[from..to].iter().map(|a| Route::primary(*a)));
            }
            Event::OpenSockets(toward) if !direct => {
                extras = live.open_extras(id);
                let sockets = live.extra_sockets(&extras);
                drop(live);
                // A new socket takes a send only once the reactor has seen it writable (a
                // send before that is refused as if the buffer were full).
                let ready = async {
                    for socket in &sockets {
                        let _ = std::future::poll_fn(|cx| socket.poll_send_ready(cx)).await;
                    }
                };
                let _ = tokio::time::timeout(EXTRA_READY_LIMIT, ready).await;
                let Some(live) = socket.upgrade() else {
                    return;
                };
                live.spray(
                    id,
                    extras.iter().map(|via| Route {
                        via: *via,
                        addr: toward,
                    }),
                );
            }
            Event::Reping(toward) if !direct => {
                live.spray(
                    id,
                    extras.iter().map(|via| Route {
                        via: *via,
                        addr: toward,
                    }),
                );
            }
            Event::End => live.end_punch(id, &extras),
            _ => {}
        }
    }
}

/// Reads an extra socket until it is closed (its task aborted) or the path socket is gone.
async fn read_extra(socket: std::sync::Weak<PathSocket>, via: Via, extra: Arc<dyn DatagramSocket>) {
    let mut buf = vec![0u8; EXTRA_BUFFER];
    loop {
        let got = std::future::poll_fn(|cx| extra.poll_recv_from(cx, &mut buf)).await;
        let Ok((len, from)) = got else {
            return;
        };
        let Some(live) = socket.upgrade() else {
            return;
        };
        live.on_extra_datagram(via, &buf[..len], to_v4(from));
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

impl DatagramSocket for PathSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        // IPv6, as a dual-stack socket's: quinn sends to IPv6 mapped addresses only from a
        // socket it believes is IPv6.
        Ok(to_v6(self.udp.local_addr()?))
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        if self.is_dead() {
            return Ok(());
        }
        if !is_mapped(to) {
            return self.udp.try_send_to(datagram, to_v4(to));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(id) = inner.mapped.peer_of(to) else {
            inner.counters.no_path += 1;
            return Ok(());
        };
        let len = u64::try_from(datagram.len()).unwrap_or(u64::MAX);
        let mut liveness = None;
        let mut hedge = false;
        let (path, instance) = match inner.peers.get_mut(&id) {
            Some(peer) => {
                peer.last_active = now;
                peer.quic_at = Some(now);
                let failed_before = peer.paths.changes().1;
                let path = peer.paths.choose(now);
                if peer.paths.changes().1 > failed_before {
                    tracing::info!(peer = %id.key.short(), "a direct path failed; the relay takes over");
                    self.failures
                        .send_modify(|all| *all.entry(id.key).or_default() += 1);
                    // Its pings start again now, not at the driver's planned wake-up.
                    self.wake_driver.notify_one();
                }
                match path {
                    Path::Direct(route) => {
                        peer.direct_bytes += len;
                        // Nothing heard back on it for a while: a ping goes with this packet.
                        if peer.paths.quic_sent(route, now) {
                            let nonce = self.next_nonce();
                            peer.paths.ping_sent(route, nonce, now);
                            peer.pings_sent += 1;
                            liveness = Some((route, nonce));
                        }
                        // While the path is in doubt, the relay carries a copy: QUIC's
                        // retransmissions back off fast, and a dead path would otherwise
                        // stall the session until the path is declared failed.
                        hedge = peer.paths.in_doubt(route, now);
                        if hedge {
                            peer.relay_bytes += len;
                        }
                    }
                    Path::Guess(_) => peer.direct_bytes += len,
                    Path::Relay => peer.relay_bytes += len,
                    Path::None => {}
                }
                (path, peer.instance)
            }
            None => (Path::None, None),
        };
        if let Some((route, nonce)) = liveness {
            drop(inner);
            self.send_ping(id.key, route, nonce);
            inner = self.lock();
        }
        match path {
            Path::Direct(route) | Path::Guess(route) => {
                inner.counters.direct_bytes += len;
                let relay = if hedge { inner.relay.clone() } else { None };
                if relay.is_some() {
                    inner.counters.relay_bytes += len;
                    inner.counters.hedged += 1;
                }
                drop(inner);
                if let Some(relay) = relay {
                    if relay
                        .send(id.key, instance, self.instance, datagram.to_vec())
                        .is_err()
                    {
                        self.lock().counters.relay_refused += 1;
                    }
                }
                self.send_on(route, datagram)
            }
            Path::Relay => {
                inner.counters.relay_bytes += len;
                let relay = inner.relay.clone();
                drop(inner);
                if let Some(relay) = relay {
                    // Like a UDP send, a packet the relay path cannot take is lost, not an
                    // error quinn must handle; it is counted.
                    if relay
                        .send(id.key, instance, self.instance, datagram.to_vec())
                        .is_err()
                    {
                        self.lock().counters.relay_refused += 1;
                    }
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
            if let Some((packet, from)) = inner.side_inbox.pop_front() {
                let len = packet.len().min(buf.len());
                buf[..len].copy_from_slice(&packet[..len]);
                return Poll::Ready(Ok((len, from)));
            }
            inner.recv_waker = Some(cx.waker().clone());
        }
        for _ in 0..PROBES_PER_POLL {
            let (len, from) = match self.udp.poll_recv_from(cx, buf) {
                Poll::Ready(Ok(got)) => got,
                other => return other,
            };
            if is_probe(&buf[..len]) {
                self.on_probe(&buf[..len], Route::primary(from));
                continue;
            }
            let shown = {
                let mut inner = self.lock();
                let owner = inner.owners.get(&Route::primary(from)).copied();
                if let Some(peer) = owner.and_then(|id| inner.peers.get_mut(&id)) {
                    let now = Instant::now();
                    peer.last_active = now;
                    peer.quic_at = Some(now);
                    peer.paths.heard(Route::primary(from), now);
                }
                owner
                    .and_then(|peer| inner.mapped.known_addr_of(peer))
                    .unwrap_or_else(|| to_v6(from))
            };
            return Poll::Ready(Ok((len, shown)));
        }
        // A burst of probes: let the endpoint's driver run, and come back for the rest.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::UdpSocket;
    use mesh_proto::SystemClock;

    fn ping_from(seed: u32, to: NodeId) -> Vec<u8> {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&seed.to_le_bytes());
        let key = SecretKey::from_seed(&bytes);
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&seed.to_le_bytes());
        Probe {
            kind: ProbeKind::Ping,
            sender: key.node_id(),
            sender_instance: 1,
            receiver: to,
            nonce,
            sent_at: Clock::now(&SystemClock),
            observed: None,
        }
        .seal(&key)
    }

    #[tokio::test(start_paused = true)]
    async fn the_peer_table_is_bounded_and_forgets_idle_peers() {
        let me = SecretKey::from_seed(&[9; 32]);
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let socket = PathSocket::new(me.clone(), udp, Arc::new(SystemClock));
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // Pings signed by more distinct keys than the table holds, each a second apart in
        // activity: the oldest are the ones forgotten.
        let total = u32::try_from(MAX_PEERS).unwrap() + 10;
        for n in 0..total {
            socket.on_probe(&ping_from(n, me.node_id()), Route::primary(from));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        {
            let inner = socket.lock();
            assert_eq!(inner.peers.len(), MAX_PEERS);
            assert_eq!(
                inner.mapped.len(),
                MAX_PEERS,
                "mapped addresses go with them"
            );
            let first = SecretKey::from_seed(&[0; 32]).node_id();
            assert!(
                inner.peers.keys().all(|id| id.key != first),
                "the least recently active went first"
            );
        }
        // Ten idle minutes later the driver's tick forgets them all.
        tokio::time::advance(PEER_IDLE).await;
        socket.send_due_pings();
        let inner = socket.lock();
        assert!(inner.peers.is_empty());
        assert!(inner.owners.is_empty());
        assert_eq!(inner.mapped.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_pings_cannot_push_out_a_live_connection_or_invent_instances() {
        let me = SecretKey::from_seed(&[9; 32]);
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let socket = PathSocket::new(me.clone(), udp, Arc::new(SystemClock));
        // A host we talk to: QUIC goes to it through the path socket.
        let host = SecretKey::from_seed(&[7; 32]).node_id();
        let mapped = socket.peer_addr(host, &["127.0.0.1:9".parse().unwrap()]);
        // Whether the OS takes it now does not matter: the socket counted it as QUIC.
        let _ = socket.try_send_to(&[0x40; 40], mapped);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let total = u32::try_from(MAX_PEERS).unwrap() + 100;
        for n in 0..total {
            socket.on_probe(&ping_from(n, me.node_id()), Route::primary(from));
            tokio::time::advance(Duration::from_micros(10)).await;
        }
        {
            let inner = socket.lock();
            assert!(
                inner.peers.keys().any(|id| id.key == host),
                "the live connection's peer was evicted"
            );
            assert_eq!(inner.mapped.peer_of(mapped).map(|p| p.key), Some(host));
            assert_eq!(inner.peers.len(), MAX_PEERS);
            assert_eq!(
                inner.owners.get(&Route::primary(from)).map(|id| id.key),
                Some(host),
                "an unconfirmed ping took the host's address"
            );
        }
        // One key inventing instances keeps at most MAX_INSTANCES_PER_KEY entries.
        let mallory = SecretKey::from_seed(&[66; 32]);
        for instance in 0..50u64 {
            let mut nonce = [1u8; 16];
            nonce[..8].copy_from_slice(&instance.to_le_bytes());
            let ping = Probe {
                kind: ProbeKind::Ping,
                sender: mallory.node_id(),
                sender_instance: instance,
                receiver: me.node_id(),
                nonce,
                sent_at: Clock::now(&SystemClock),
                observed: None,
            }
            .seal(&mallory);
            socket.on_probe(&ping, Route::primary(from));
        }
        let inner = socket.lock();
        let of_mallory = inner
            .peers
            .keys()
            .filter(|id| id.key == mallory.node_id())
            .count();
        assert_eq!(of_mallory, MAX_INSTANCES_PER_KEY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_running_many_commands_in_a_row_is_never_locked_out() {
        let me = SecretKey::from_seed(&[9; 32]);
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let socket = PathSocket::new(me.clone(), udp, Arc::new(SystemClock));
        let device = SecretKey::from_seed(&[5; 32]);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // A script's commands one after another, each a process of its own whose connection
        // had QUIC traffic moments ago: the newest always gets in.
        for instance in 0..(3 * MAX_INSTANCES_PER_KEY as u64) {
            let mut nonce = [2u8; 16];
            nonce[..8].copy_from_slice(&instance.to_le_bytes());
            let ping = Probe {
                kind: ProbeKind::Ping,
                sender: device.node_id(),
                sender_instance: instance,
                receiver: me.node_id(),
                nonce,
                sent_at: Clock::now(&SystemClock),
                observed: None,
            }
            .seal(&device);
            socket.on_probe(&ping, Route::primary(from));
            {
                let mut inner = socket.lock();
                let id = PeerId {
                    key: device.node_id(),
                    instance: Some(instance),
                };
                let peer = inner
                    .peers
                    .get_mut(&id)
                    .expect("the newest command got an entry");
                peer.quic_at = Some(Instant::now());
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let inner = socket.lock();
        let of_device = inner
            .peers
            .keys()
            .filter(|id| id.key == device.node_id())
            .count();
        assert_eq!(of_device, MAX_INSTANCES_PER_KEY);
        assert_eq!(inner.counters.probes_refused.get("peer table full"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_sleeps_until_a_ping_is_due() {
        let me = SecretKey::from_seed(&[9; 32]);
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let socket = PathSocket::new(me, udp, Arc::new(SystemClock));
        tokio::spawn(socket.clone().drive());
        // No peers: ten idle minutes cost about one wake-up a minute.
        for _ in 0..600 {
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let idle = socket.counters().driver_wakeups;
        assert!(idle <= 12, "{idle} wake-ups in 10 idle minutes");
        // A listed candidate that never answers: six quick pings, then one every 5 s — not a
        // wake-up every tick.
        let host = SecretKey::from_seed(&[7; 32]).node_id();
        socket.peer_addr(host, &["127.0.0.1:9".parse().unwrap()]);
        let before = socket.counters().driver_wakeups;
        for _ in 0..600 {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let busy = socket.counters().driver_wakeups - before;
        assert!(
            (10..=25).contains(&busy),
            "{busy} wake-ups in 60 s for one silent candidate"
        );
    }
}
