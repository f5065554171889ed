//! The simulated internet: a resolved [`Network`] made live, with sockets the real mesh code
//! sends through.
//!
//! Packets move hop by hop, each hop an event at a virtual time: a host's access link, a NAT's
//! inside or outside, a NAT's uplink, the internet. NAT boxes ([`NatBox`]) translate and filter
//! at the moment a packet reaches them, so the order of packets meeting in a NAT is the order of
//! their arrival, as in a real one. Links ([`Link`]) add latency, jitter, serialization delay
//! and loss.
//!
//! Everything runs in one current-thread tokio runtime with a paused clock: the world's driver
//! task sleeps until the next event, and tokio jumps straight there whenever every task waits.
//! All randomness comes from one seeded generator, drawn in event order, so a seed replays the
//! same run.
//!
//! The same queue carries simulated TCP connections ([`crate::stream`], behind
//! [`HostBinder::listen_stream`] and [`HostBinder::connect_stream`]): their segments are events
//! too, and their jitter comes from the same generator. [`World::capture`] records what one
//! host sends and receives, for tests.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mesh_proto::socket::{DatagramSocket, SocketBinder};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capture::{Capture, Captured, Direction, Taps, Transport};
use crate::link::{Link, LinkDrop};
use crate::nat::NatBox;
use crate::tcp::route::LinkId;
use crate::tcp::{PathState, Streams, TcpEvent, Wire};
use crate::topology::Network;

/// Datagrams a socket holds before it drops new ones, like a full kernel receive buffer.
const SOCKET_QUEUE: usize = 1024;
/// The first port handed out for a bind to port 0 (the Linux ephemeral range starts here).
const FIRST_EPHEMERAL_PORT: u16 = 32_768;

/// Where a packet is when its next event fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// Arrived at the network its sender sits on: the internet, or a NAT's inside.
    Network(Option<usize>),
    /// Arrived at a NAT's outside (from the network above).
    NatOutside(usize),
    /// Arrived at a host.
    Host(usize),
}

/// Something due at a virtual time.
#[derive(Debug)]
enum Event {
    /// A UDP packet reaches its next hop.
    Packet(Packet),
    /// Something happens to a simulated TCP connection.
    Tcp(TcpEvent),
}

#[derive(Debug)]
struct Packet {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    data: Vec<u8>,
    hop: Hop,
}

/// Why a packet never arrived, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Larger than a link's MTU.
    TooBig,
    /// Lost on a link.
    Lost,
    /// A link's queue was full.
    QueueFull,
    /// A link was down (a partition).
    LinkDown,
    /// A NAT had no mapping for it, or its filtering refused it.
    Filtered,
    /// A NAT had no free port.
    NoPort,
    /// A firewall drops UDP.
    UdpBlocked,
    /// A packet to a NAT's own address from inside, without hairpinning.
    NoHairpin,
    /// No host has the address, or nothing listens on the port.
    Unreachable,
    /// The receiving socket's queue was full.
    SocketFull,
}

impl From<LinkDrop> for DropReason {
    fn from(drop: LinkDrop) -> Self {
        match drop {
            LinkDrop::TooBig => Self::TooBig,
            LinkDrop::Lost => Self::Lost,
            LinkDrop::QueueFull => Self::QueueFull,
            LinkDrop::Down => Self::LinkDown,
        }
    }
}

/// What the world counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams sockets sent.
    pub sent: u64,
    /// Datagrams delivered to a socket.
    pub delivered: u64,
    /// Datagrams dropped, by reason.
    pub dropped: std::collections::BTreeMap<DropReason, u64>,
    /// Bytes of simulated TCP streams delivered, in order, to the receiving end (not counted in
    /// the datagram fields above).
    pub stream_bytes: u64,
}

/// A link's two directions.
#[derive(Debug)]
struct Duplex {
    /// Toward the network above (host → its network; NAT inside → network above).
    up: Link,
    /// Away from the network above.
    down: Link,
    /// How many times it has gone down: a stream segment that left before a partition and
    /// arrives after it sees the count changed, and is lost.
    downs: u64,
}

impl Duplex {
    fn new(config: crate::topology::LinkConfig) -> Self {
        Self {
            up: Link::new(config),
            down: Link::new(config),
            downs: 0,
        }
    }

    fn set_up(&mut self, up: bool) {
        if !up && self.up.is_up() {
            self.downs += 1;
        }
        self.up.set_up(up);
        self.down.set_up(up);
    }
}

/// Events: (time, sequence number) → event. The sequence keeps same-time events in the order
/// they were made, so runs are reproducible.
#[derive(Debug, Default)]
struct Agenda {
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Event>,
    next_seq: u64,
}

impl Agenda {
    fn push(&mut self, at: Duration, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.events.insert(seq, event);
    }

    /// When the next event is due.
    fn next_at(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The next event due at or before `now`.
    fn pop_due(&mut self, now: Duration) -> Option<Event> {
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > now {
                return None;
            }
            self.queue.pop();
            if let Some(event) = self.events.remove(&seq) {
                return Some(event);
            }
        }
        None
    }
}

struct State {
    network: Network,
    nats: Vec<NatBox>,
    /// Per host: its access link.
    host_links: Vec<Duplex>,
    /// Per NAT: its uplink.
    nat_links: Vec<Duplex>,
    /// Bound sockets by address.
    sockets: HashMap<SocketAddrV4, Weak<SocketInner>>,
    /// Per host: the next ephemeral port to try.
    next_port: Vec<u16>,
    agenda: Agenda,
    rng: ChaCha8Rng,
    counters: Counters,
    /// Simulated TCP connections and listeners.
    streams: Streams,
    /// Open captures.
    taps: Taps,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("hosts", &self.network.hosts.len())
            .field("nats", &self.network.nats.len())
            .field("queued", &self.agenda.events.len())
            .finish_non_exhaustive()
    }
}

/// The simulated internet. Cheap to clone; every clone is the same world.
#[derive(Clone)]
pub struct World {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the driver when an event is queued earlier than the one it sleeps toward.
    wake: Notify,
    start: Instant,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("state", &*self.lock())
            .finish()
    }
}

impl World {
    /// A live `network` whose randomness comes from `seed`. Call inside the simulation's tokio
    /// runtime, then spawn [`drive`](Self::drive).
    pub fn new(network: Network, seed: u64) -> Self {
        let nats = network
            .nats
            .iter()
            .map(|n| NatBox::new(n.external_ip, n.behavior))
            .collect();
        let host_links = network.hosts.iter().map(|h| Duplex::new(h.link)).collect();
        let nat_links = network.nats.iter().map(|n| Duplex::new(n.uplink)).collect();
        let next_port = vec![FIRST_EPHEMERAL_PORT; network.hosts.len()];
        let streams = Streams::new(network.hosts.len(), network.nats.len());
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    network,
                    nats,
                    host_links,
                    nat_links,
                    sockets: HashMap::new(),
                    next_port,
                    agenda: Agenda::default(),
                    rng: ChaCha8Rng::seed_from_u64(seed),
                    counters: Counters::default(),
                    streams,
                    taps: Taps::default(),
                }),
                wake: Notify::new(),
                start: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in the simulator; its state is still the
        // best record of what happened.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Virtual time since the world began.
    pub fn now(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// The network it runs.
    pub fn network(&self) -> Network {
        self.lock().network.clone()
    }

    /// The current address of host `host`, without cloning the network.
    pub(crate) fn host_ip(&self, host: usize) -> Option<Ipv4Addr> {
        self.lock().network.hosts.get(host).map(|h| h.ip)
    }

    /// What was counted so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Moves packets along until the world is dropped: runs as a task in the simulation's
    /// runtime.
    pub async fn drive(self) {
        loop {
            let next = {
                let mut state = self.lock();
                let now = self.now();
                while let Some(event) = state.agenda.pop_due(now) {
                    match event {
                        Event::Packet(packet) => state.step(now, packet),
                        Event::Tcp(event) => {
                            let (streams, _, mut wire) = state.streams(now);
                            streams.on_event(event, &mut wire);
                        }
                    }
                }
                state.agenda.next_at()
            };
            match next {
                Some(at) => {
                    let deadline = self.shared.start + at;
                    tokio::select! {
                        biased;
                        () = self.shared.wake.notified() => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => self.shared.wake.notified().await,
            }
        }
    }

    /// A binder for sockets on the host `host` (an index into the network's hosts).
    pub fn binder(&self, host: usize) -> HostBinder {
        HostBinder {
            world: self.clone(),
            host,
        }
    }

    /// Starts recording what `host` sends and receives (see [`crate::capture`]).
    pub fn capture(&self, host: usize) -> Capture {
        self.lock().taps.open(host)
    }

    /// Runs `change` on the state at the current virtual time, then wakes the driver if it
    /// queued an event earlier than the one the driver sleeps toward.
    fn change<R>(&self, change: impl FnOnce(&mut State, Duration) -> R) -> R {
        let now = self.now();
        let mut state = self.lock();
        let before = state.agenda.next_at();
        let result = change(&mut state, now);
        let after = state.agenda.next_at();
        drop(state);
        if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            self.shared.wake.notify_one();
        }
        result
    }

    /// Runs `f` on the simulated TCP connections, with the wire they reach the world through.
    pub(crate) fn with_streams<R>(
        &self,
        f: impl FnOnce(&mut Streams, &Network, &mut dyn Wire) -> R,
    ) -> R {
        self.change(|state, now| {
            let (streams, network, mut wire) = state.streams(now);
            f(streams, network, &mut wire)
        })
    }

    /// Takes a host's access link down or brings it up (a partition of that host). Stream
    /// bytes wait for it to come up.
    pub fn set_host_link(&self, host: usize, up: bool) {
        self.change(|state, now| {
            state.host_links[host].set_up(up);
            if up {
                let (streams, _, mut wire) = state.streams(now);
                streams.healed(&mut wire);
            }
        });
    }

    /// Takes a NAT's uplink down or up (a partition of everything behind it). Stream bytes
    /// wait for it to come up.
    pub fn set_nat_link(&self, nat: usize, up: bool) {
        self.change(|state, now| {
            state.nat_links[nat].set_up(up);
            if up {
                let (streams, _, mut wire) = state.streams(now);
                streams.healed(&mut wire);
            }
        });
    }

    /// Kills the socket bound to `port` on `host`, as the death of its process would: it sends
    /// and receives nothing more (whatever still holds it, such as a QUIC driver task, talks to
    /// no one) and the port is free to bind again. Returns whether there was one.
    pub fn kill_socket(&self, host: usize, port: u16) -> bool {
        let mut state = self.lock();
        let addr = SocketAddrV4::new(state.network.hosts[host].ip, port);
        let Some(socket) = state.sockets.remove(&addr) else {
            return false;
        };
        if let Some(live) = socket.upgrade() {
            live.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        true
    }

    /// Forgets every mapping of a NAT (rebinding), UDP and TCP: the stream connections through
    /// it are reset.
    pub fn flush_nat(&self, nat: usize) {
        let mut state = self.lock();
        state.nats[nat].flush();
        let why = format!(
            "NAT {:?} lost the connection's state (flushed)",
            state.network.nats[nat].name
        );
        state.streams.reset_through_nat(nat, &why);
    }

    /// Gives a host a new address on the same network (roaming); its sockets keep their ports
    /// and now send from the new address. Its stream connections are reset (its listeners
    /// stay).
    pub fn move_host(&self, host: usize, ip: Ipv4Addr) -> Result<(), String> {
        let mut state = self.lock();
        let taken = state.network.hosts.iter().any(|h| h.ip == ip)
            || state.network.nats.iter().any(|n| n.external_ip == ip);
        if taken {
            return Err(format!("the address {ip} is taken"));
        }
        let why = format!(
            "simulated host {:?} moved to a new address",
            state.network.hosts[host].name
        );
        state.streams.reset_host(host, &why);
        let old = state.network.hosts[host].ip;
        state.network.hosts[host].ip = ip;
        let moved: Vec<SocketAddrV4> = state
            .sockets
            .keys()
            .filter(|a| *a.ip() == old)
            .copied()
            .collect();
        for addr in moved {
            if let Some(socket) = state.sockets.remove(&addr) {
                let new = SocketAddrV4::new(ip, addr.port());
                if let Some(live) = socket.upgrade() {
                    *live
                        .addr
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
                }
                state.sockets.insert(new, socket);
            }
        }
        Ok(())
    }

    fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, data: &[u8], host: usize) {
        let now = self.now();
        let mut state = self.lock();
        state.counters.sent += 1;
        state.taps.record(host, || Captured {
            at: now,
            direction: Direction::Sent,
            transport: Transport::Udp,
            local: SocketAddr::V4(src),
            remote: SocketAddr::V4(dst),
            data: data.to_vec(),
        });
        let earliest = state.agenda.next_at();
        let parent = state.network.hosts[host].parent;
        let packet = Packet {
            src,
            dst,
            data: data.to_vec(),
            hop: Hop::Network(parent),
        };
        match transmit(&mut state, now, packet, LinkRef::HostUp(host)) {
            Some(at) if earliest.is_none_or(|e| at < e) => {
                drop(state);
                self.shared.wake.notify_one();
            }
            _ => {}
        }
    }
}

/// Which link a packet crosses.
#[derive(Clone, Copy, Debug)]
enum LinkRef {
    HostUp(usize),
    HostDown(usize),
    NatUp(usize),
    NatDown(usize),
}

/// Puts `packet` on a link at `now`: queues its arrival, or counts its drop. Returns the arrival
/// time.
fn transmit(state: &mut State, now: Duration, packet: Packet, link: LinkRef) -> Option<Duration> {
    let size = packet.data.len();
    let State {
        host_links,
        nat_links,
        rng,
        ..
    } = state;
    let link = match link {
        LinkRef::HostUp(i) => &mut host_links[i].up,
        LinkRef::HostDown(i) => &mut host_links[i].down,
        LinkRef::NatUp(i) => &mut nat_links[i].up,
        LinkRef::NatDown(i) => &mut nat_links[i].down,
    };
    match link.transmit(now, size, rng) {
        Ok(at) => {
            state.agenda.push(at, Event::Packet(packet));
            Some(at)
        }
        Err(drop) => {
            state.count_drop(drop.into());
            None
        }
    }
}

impl State {
    fn count_drop(&mut self, reason: DropReason) {
        *self.counters.dropped.entry(reason).or_default() += 1;
    }

    /// Handles a packet that has reached `packet.hop` at `now`.
    fn step(&mut self, now: Duration, mut packet: Packet) {
        match packet.hop {
            Hop::Host(host) => self.deliver(now, host, packet),
            Hop::NatOutside(nat) => {
                if self.network.nats[nat].block_udp {
                    return self.count_drop(DropReason::UdpBlocked);
                }
                match self.nats[nat].inbound(now, packet.src, packet.dst) {
                    Some(inside) => {
                        packet.dst = inside;
                        self.route_inside(now, Some(nat), packet);
                    }
                    None => self.count_drop(DropReason::Filtered),
                }
            }
            Hop::Network(network) => self.route_inside(now, network, packet),
        }
    }

    /// Routes a packet that is on `network` (the internet, or a NAT's inside) toward its
    /// destination: down to a host or a NAT on this network, or, from a NAT's inside, out
    /// through that NAT.
    fn route_inside(&mut self, now: Duration, network: Option<usize>, mut packet: Packet) {
        let dst_ip = *packet.dst.ip();
        // A host on this network?
        if let Some(host) = self
            .network
            .hosts
            .iter()
            .position(|h| h.parent == network && h.ip == dst_ip)
        {
            packet.hop = Hop::Host(host);
            transmit(self, now, packet, LinkRef::HostDown(host));
            return;
        }
        // A NAT sitting on this network?
        if let Some(nat) = self
            .network
            .nats
            .iter()
            .position(|n| n.parent == network && n.external_ip == dst_ip)
        {
            packet.hop = Hop::NatOutside(nat);
            transmit(self, now, packet, LinkRef::NatDown(nat));
            return;
        }
        let Some(nat) = network else {
            // On the internet with no such address.
            return self.count_drop(DropReason::Unreachable);
        };
        if self.network.nats[nat].block_udp {
            return self.count_drop(DropReason::UdpBlocked);
        }
        let lan = self.network.nats[nat].lan.octets();
        if dst_ip.octets()[..3] == lan[..3] {
            // Inside this NAT's own network, but no one has the address.
            return self.count_drop(DropReason::Unreachable);
        }
        let Some(external) = self.nats[nat].outbound(now, packet.src, packet.dst, &mut self.rng)
        else {
            return self.count_drop(DropReason::NoPort);
        };
        packet.src = external;
        if dst_ip == self.network.nats[nat].external_ip {
            // To this NAT's own outside address from inside: hairpinning, or nothing.
            if !self.network.nats[nat].behavior.hairpin {
                return self.count_drop(DropReason::NoHairpin);
            }
            packet.hop = Hop::NatOutside(nat);
            return self.step(now, packet);
        }
        let parent = self.network.nats[nat].parent;
        packet.hop = Hop::Network(parent);
        transmit(self, now, packet, LinkRef::NatUp(nat));
    }

    fn deliver(&mut self, now: Duration, host: usize, packet: Packet) {
        // The host may have moved while the packet was on its way.
        if *packet.dst.ip() != self.network.hosts[host].ip {
            return self.count_drop(DropReason::Unreachable);
        }
        let Some(socket) = self.sockets.get(&packet.dst).and_then(Weak::upgrade) else {
            return self.count_drop(DropReason::Unreachable);
        };
        let mut inbox = socket
            .inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inbox.datagrams.len() >= SOCKET_QUEUE {
            drop(inbox);
            return self.count_drop(DropReason::SocketFull);
        }
        self.taps.record(host, || Captured {
            at: now,
            direction: Direction::Received,
            transport: Transport::Udp,
            local: SocketAddr::V4(packet.dst),
            remote: SocketAddr::V4(packet.src),
            data: packet.data.clone(),
        });
        inbox.datagrams.push_back((packet.data, packet.src));
        if let Some(waker) = inbox.waker.take() {
            waker.wake();
        }
        drop(inbox);
        self.counters.delivered += 1;
    }

    /// The connections, the network, and the wire they reach the rest of the state through.
    fn streams(&mut self, now: Duration) -> (&mut Streams, &Network, StreamWire<'_>) {
        let Self {
            network,
            host_links,
            nat_links,
            agenda,
            rng,
            counters,
            streams,
            taps,
            ..
        } = self;
        let wire = StreamWire {
            now,
            host_links,
            nat_links,
            rng,
            agenda,
            counters,
            taps,
        };
        (streams, network, wire)
    }
}

/// The world as the TCP connection machine sees it.
struct StreamWire<'a> {
    now: Duration,
    host_links: &'a [Duplex],
    nat_links: &'a [Duplex],
    rng: &'a mut ChaCha8Rng,
    agenda: &'a mut Agenda,
    counters: &'a mut Counters,
    taps: &'a mut Taps,
}

impl StreamWire<'_> {
    fn stream_record(
        &mut self,
        host: usize,
        direction: Direction,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        data: &[u8],
    ) {
        let at = self.now;
        self.taps.record(host, || Captured {
            at,
            direction,
            transport: Transport::Stream,
            local: SocketAddr::V4(local),
            remote: SocketAddr::V4(remote),
            data: data.to_vec(),
        });
    }
}

impl Wire for StreamWire<'_> {
    fn now(&self) -> Duration {
        self.now
    }

    fn path(&self, links: &[LinkId]) -> PathState {
        let mut state = PathState {
            up: true,
            generation: 0,
        };
        for link in links {
            let duplex = match *link {
                LinkId::Host(i) => self.host_links.get(i),
                LinkId::Nat(i) => self.nat_links.get(i),
            };
            match duplex {
                Some(duplex) => {
                    state.up &= duplex.up.is_up();
                    state.generation += duplex.downs;
                }
                None => state.up = false,
            }
        }
        state
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        use rand::Rng;
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=max_nanos))
    }

    fn schedule(&mut self, at: Duration, event: TcpEvent) {
        self.agenda.push(at, Event::Tcp(event));
    }

    fn sent(&mut self, host: usize, local: SocketAddrV4, remote: SocketAddrV4, data: &[u8]) {
        self.stream_record(host, Direction::Sent, local, remote, data);
    }

    fn delivered(&mut self, host: usize, local: SocketAddrV4, remote: SocketAddrV4, data: &[u8]) {
        self.counters.stream_bytes += u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.stream_record(host, Direction::Received, local, remote, data);
    }
}

/// Opens sockets on one simulated host.
#[derive(Clone)]
pub struct HostBinder {
    pub(crate) world: World,
    pub(crate) host: usize,
}

impl fmt::Debug for HostBinder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBinder")
            .field("host", &self.host)
            .finish()
    }
}

impl HostBinder {
    /// Binds a socket on this host: the host's address (whatever `addr`'s IP says, as a socket
    /// bound to 0.0.0.0 would) and `addr`'s port, or a free ephemeral one for port 0.
    pub fn bind_sim(&self, port: u16) -> io::Result<Arc<SimSocket>> {
        let mut state = self.world.lock();
        let ip = state.network.hosts[self.host].ip;
        let port = if port == 0 {
            let mut candidate = state.next_port[self.host];
            loop {
                let addr = SocketAddrV4::new(ip, candidate);
                let free = state
                    .sockets
                    .get(&addr)
                    .is_none_or(|s| s.strong_count() == 0);
                let next = if candidate == u16::MAX {
                    FIRST_EPHEMERAL_PORT
                } else {
                    candidate + 1
                };
                if free {
                    state.next_port[self.host] = next;
                    break candidate;
                }
                candidate = next;
                if candidate == state.next_port[self.host] {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "no free ephemeral port on this simulated host",
                    ));
                }
            }
        } else {
            port
        };
        let addr = SocketAddrV4::new(ip, port);
        if state
            .sockets
            .get(&addr)
            .is_some_and(|s| s.strong_count() > 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is in use on this simulated host"),
            ));
        }
        let inner = Arc::new(SocketInner {
            addr: Mutex::new(addr),
            inbox: Mutex::new(Inbox::default()),
            dead: std::sync::atomic::AtomicBool::new(false),
        });
        state.sockets.insert(addr, Arc::downgrade(&inner));
        Ok(Arc::new(SimSocket {
            world: self.world.clone(),
            host: self.host,
            inner,
        }))
    }
}

impl SocketBinder for HostBinder {
    fn bind(&self, addr: SocketAddr) -> io::Result<Arc<dyn DatagramSocket>> {
        Ok(self.bind_sim(addr.port())?)
    }
}

#[derive(Debug, Default)]
struct Inbox {
    datagrams: VecDeque<(Vec<u8>, SocketAddrV4)>,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct SocketInner {
    addr: Mutex<SocketAddrV4>,
    inbox: Mutex<Inbox>,
    /// Set when its process was killed: it neither sends nor receives, and its port is free.
    dead: std::sync::atomic::AtomicBool,
}

/// A UDP socket on a simulated host.
pub struct SimSocket {
    world: World,
    host: usize,
    inner: Arc<SocketInner>,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("host", &self.host)
            .field("addr", &self.addr())
            .finish()
    }
}

impl SimSocket {
    fn addr(&self) -> SocketAddrV4 {
        *self
            .inner
            .addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        // The port is free again (a process that closed its socket, or died).
        let addr = self.addr();
        let mut state = self.world.lock();
        if state
            .sockets
            .get(&addr)
            .is_some_and(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(&self.inner)))
        {
            state.sockets.remove(&addr);
        }
    }
}

impl DatagramSocket for SimSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.addr()))
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        let SocketAddr::V4(to) = to else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated internet is IPv4 only",
            ));
        };
        if !self.inner.dead.load(std::sync::atomic::Ordering::Relaxed) {
            self.world.send(self.addr(), to, datagram, self.host);
        }
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sending never blocks: a full link queue drops, as a router's would.
        Poll::Ready(Ok(()))
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut inbox = self
            .inner
            .inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match inbox.datagrams.pop_front() {
            Some((data, from)) => {
                let len = data.len().min(buf.len());
                buf[..len].copy_from_slice(&data[..len]);
                Poll::Ready(Ok((len, SocketAddr::V4(from))))
            }
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Packet-level checks of the world's routing with real simulated sockets: what a NAT
    //! setting means on the wire, seen by the hosts on both sides.

    use super::*;
    use crate::topology::Topology;

    /// Runs `test` in a paused current-thread runtime with the world driving.
    fn in_world(topology: &str, test: impl AsyncFnOnce(World)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let network = Topology::from_toml(topology).unwrap().resolve().unwrap();
            let world = World::new(network, 9);
            tokio::spawn(world.clone().drive());
            test(world).await;
        });
    }

    fn socket(world: &World, host: &str, port: u16) -> Arc<SimSocket> {
        let index = world.network().host(host).unwrap();
        world.binder(index).bind_sim(port).unwrap()
    }

    /// The next datagram within a second of virtual time, or `None`.
    async fn recv(socket: &SimSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 2048];
        let got = tokio::time::timeout(
            Duration::from_secs(1),
            std::future::poll_fn(|cx| socket.poll_recv_from(cx, &mut buf)),
        )
        .await
        .ok()?
        .ok()?;
        Some((buf[..got.0].to_vec(), got.1))
    }

    fn topology(kind: &str, hairpin: bool) -> String {
        format!(
            r#"
            [[nat]]
            name = "home"
            kind = "{kind}"
            hairpin = {hairpin}
            timeout = "30s"
            [[host]]
            name = "inside"
            behind = "home"
            [[host]]
            name = "inside2"
            behind = "home"
            [[host]]
            name = "server1"
            [[host]]
            name = "server2"
            "#
        )
    }

    #[test]
    fn a_port_restricted_nat_drops_unsolicited_packets_and_a_full_cone_passes_them() {
        for (kind, passes) in [("port-restricted", false), ("full-cone", true)] {
            in_world(&topology(kind, false), async |world| {
                let inside = socket(&world, "inside", 5000);
                let s1 = socket(&world, "server1", 9000);
                let s2 = socket(&world, "server2", 9000);
                inside
                    .try_send_to(b"hello", s1.local_addr().unwrap())
                    .unwrap();
                let (_, mapped) = recv(&s1).await.unwrap();
                // The reply from the contacted endpoint always passes.
                s1.try_send_to(b"reply", mapped).unwrap();
                assert_eq!(recv(&inside).await.unwrap().0, b"reply");
                // A stranger's packet to the same mapping.
                s2.try_send_to(b"stranger", mapped).unwrap();
                assert_eq!(recv(&inside).await.is_some(), passes, "{kind}");
            });
        }
    }

    #[test]
    fn a_symmetric_nat_gives_each_destination_its_own_port_and_a_cone_the_same() {
        for (kind, same) in [("symmetric-random", false), ("port-restricted", true)] {
            in_world(&topology(kind, false), async |world| {
                let inside = socket(&world, "inside", 5000);
                let s1 = socket(&world, "server1", 9000);
                let s2 = socket(&world, "server2", 9000);
                inside.try_send_to(b"a", s1.local_addr().unwrap()).unwrap();
                inside.try_send_to(b"b", s2.local_addr().unwrap()).unwrap();
                let (_, seen1) = recv(&s1).await.unwrap();
                let (_, seen2) = recv(&s2).await.unwrap();
                assert_eq!(seen1.ip(), seen2.ip());
                assert_eq!(
                    seen1.port() == seen2.port(),
                    same,
                    "{kind}: {seen1} {seen2}"
                );
            });
        }
    }

    #[test]
    fn a_mapping_expires_after_its_timeout_without_traffic() {
        in_world(&topology("full-cone", false), async |world| {
            let inside = socket(&world, "inside", 5000);
            let s1 = socket(&world, "server1", 9000);
            inside
                .try_send_to(b"open", s1.local_addr().unwrap())
                .unwrap();
            let (_, mapped) = recv(&s1).await.unwrap();
            tokio::time::sleep(Duration::from_secs(20)).await;
            s1.try_send_to(b"still open", mapped).unwrap();
            assert!(recv(&inside).await.is_some(), "20 s < the 30 s timeout");
            // That packet refreshed it; 31 s of silence ends it.
            tokio::time::sleep(Duration::from_secs(31)).await;
            s1.try_send_to(b"too late", mapped).unwrap();
            assert!(recv(&inside).await.is_none());
            assert_eq!(world.counters().dropped[&DropReason::Filtered], 1);
        });
    }

    #[test]
    fn hairpinning_reaches_a_neighbour_through_the_external_address_only_when_on() {
        for hairpin in [true, false] {
            in_world(&topology("full-cone", hairpin), async |world| {
                let a = socket(&world, "inside", 5000);
                let b = socket(&world, "inside2", 6000);
                let s1 = socket(&world, "server1", 9000);
                // b's mapping, as the server sees it.
                b.try_send_to(b"map me", s1.local_addr().unwrap()).unwrap();
                let (_, b_mapped) = recv(&s1).await.unwrap();
                a.try_send_to(b"neighbour", b_mapped).unwrap();
                let got = recv(&b).await;
                assert_eq!(got.is_some(), hairpin, "hairpin {hairpin}");
                if let Some((_, from)) = got {
                    // It comes from a's external mapping, not its LAN address.
                    assert_ne!(from, a.local_addr().unwrap());
                } else {
                    assert_eq!(world.counters().dropped[&DropReason::NoHairpin], 1);
                }
            });
        }
    }

    #[test]
    fn a_network_that_blocks_udp_passes_nothing_either_way() {
        let topology = r#"
            [[nat]]
            name = "office"
            kind = "full-cone"
            block_udp = true
            [[host]]
            name = "inside"
            behind = "office"
            [[host]]
            name = "server1"
        "#;
        in_world(topology, async |world| {
            let inside = socket(&world, "inside", 5000);
            let s1 = socket(&world, "server1", 9000);
            inside
                .try_send_to(b"out", s1.local_addr().unwrap())
                .unwrap();
            assert!(recv(&s1).await.is_none());
            let office = world.network().nats[0].external_ip;
            s1.try_send_to(b"in", SocketAddr::from((office, 5000)))
                .unwrap();
            assert!(recv(&inside).await.is_none());
            assert_eq!(world.counters().dropped[&DropReason::UdpBlocked], 2);
        });
    }
}
