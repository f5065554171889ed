//! Simulated TCP connections: a state machine the world drives with its events, behind the
//! [`SimStream`](crate::stream::SimStream) handles.
//!
//! [`crate::stream`]'s docs describe the model (handshake, timing, partitions, window, close,
//! resets). Here it is built as a table of connections and listeners ([`Streams`]), each
//! connection two ends ([`conn`]) exchanging numbered segments over one route ([`route`]), with
//! ports from pools ([`ports`]).
//!
//! Everything here takes the time from the [`Wire`] and schedules its future through it, so
//! the world's one event queue and seeded generator order it all and a run replays exactly.
//! Tables are ordered maps, so nothing depends on hash order.

mod conn;
pub(crate) mod ports;
pub(crate) mod route;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddrV4;
use std::ops::RangeInclusive;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::ReadBuf;

use crate::topology::Network;
pub(crate) use conn::Side;
use conn::{Conn, End, Failure, Handle, Payload, Phase, wake};
use ports::PortPool;
use route::{LinkId, Route, Unroutable, route};

/// Bytes one direction may have written and not yet read by the other side (see `stream`'s
/// docs).
pub(crate) const WINDOW: usize = 256 * 1024;

/// How long a SYN goes unanswered before `connect` fails: Linux's default of six retries
/// (1 + 2 + 4 + 8 + 16 + 32 + 64 s).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(127);

/// Connections a listener holds for `accept` (Linux's `somaxconn`); further ones are reset.
pub(crate) const BACKLOG: usize = 4096;

/// The local ports of outbound connections and of listeners on port 0, as for UDP sockets.
const EPHEMERAL_PORTS: RangeInclusive<u16> = 32_768..=65_535;

/// What the connection machine needs of the world.
pub(crate) trait Wire {
    /// The virtual time since the world began.
    fn now(&self) -> Duration;
    /// Whether every link of `links` is up, and how often any of them has gone down.
    fn path(&self, links: &[LinkId]) -> PathState;
    /// A uniform draw from `[0, max]` from the world's generator.
    fn jitter(&mut self, max: Duration) -> Duration;
    /// Queues `event` for `at`.
    fn schedule(&mut self, at: Duration, event: TcpEvent);
    /// The application on `host` wrote `data` on a connection from `local` to `remote`.
    fn sent(&mut self, host: usize, local: SocketAddrV4, remote: SocketAddrV4, data: &[u8]);
    /// `data` reached the application on `host`, in order, on a connection from `remote`.
    fn delivered(&mut self, host: usize, local: SocketAddrV4, remote: SocketAddrV4, data: &[u8]);
}

/// A route's links as the world sees them now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PathState {
    /// Every link is up.
    pub(crate) up: bool,
    /// How many times, in all, its links have gone down: a segment sent at one generation and
    /// arriving at another crossed a partition and is lost.
    pub(crate) generation: u64,
}

/// Something that happens to a connection at a virtual time.
#[derive(Debug)]
pub(crate) enum TcpEvent {
    /// Segment number `index` from `from` reaches the other end.
    Segment {
        conn: u64,
        from: Side,
        index: u64,
        payload: Payload,
        /// The route's generation when it left.
        generation: u64,
    },
    /// `bytes` read at the other end free room in `to`'s window.
    Window {
        conn: u64,
        to: Side,
        bytes: usize,
        generation: u64,
    },
    /// A reset reaches the end that is still there.
    Reset { conn: u64, failure: Failure },
    /// [`CONNECT_TIMEOUT`] after the SYN was first sent.
    ConnectTimeout { conn: u64 },
}

/// A listening port.
#[derive(Debug, Default)]
struct Listener {
    /// Connections whose handshake finished, for `accept`.
    queue: VecDeque<u64>,
    waker: Option<Waker>,
}

/// A connection the application now holds an end of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The connection.
    pub(crate) id: u64,
    /// This end's address.
    pub(crate) local: SocketAddrV4,
    /// The other end's address as this end sees it (after NAT translation).
    pub(crate) peer: SocketAddrV4,
}

/// Every connection and listener of a world (see the module docs).
#[derive(Debug)]
pub(crate) struct Streams {
    conns: BTreeMap<u64, Conn>,
    /// By (host, port).
    listeners: BTreeMap<(usize, u16), Listener>,
    /// Per host: its TCP ports (listeners and outbound connections).
    host_ports: Vec<PortPool>,
    /// Per NAT: its external TCP ports.
    nat_ports: Vec<PortPool>,
    next_id: u64,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the simulated connection is gone",
    )
}

impl Streams {
    /// No connections, for a network of `hosts` hosts and `nats` NATs.
    pub(crate) fn new(hosts: usize, nats: usize) -> Self {
        Self {
            conns: BTreeMap::new(),
            listeners: BTreeMap::new(),
            host_ports: vec![PortPool::new(EPHEMERAL_PORTS); hosts],
            nat_ports: vec![PortPool::new(crate::nat::EXTERNAL_PORTS); nats],
            next_id: 0,
        }
    }

    /// Starts listening on `port` of `host` (a free ephemeral port for 0); returns the port.
    pub(crate) fn listen(&mut self, network: &Network, host: usize, port: u16) -> io::Result<u16> {
        let (Some(pool), Some(h)) = (self.host_ports.get_mut(host), network.hosts.get(host)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the simulated network has no host {host}"),
            ));
        };
        let port = if port == 0 {
            pool.allocate().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("no free TCP port on simulated host {:?}", h.name),
                )
            })?
        } else if pool.take(port) {
            port
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("TCP port {port} is in use on simulated host {:?}", h.name),
            ));
        };
        self.listeners.insert((host, port), Listener::default());
        Ok(port)
    }

    /// Stops listening: connections waiting for `accept` are reset.
    pub(crate) fn close_listener(&mut self, host: usize, port: u16, wire: &mut dyn Wire) {
        let Some(listener) = self.listeners.remove(&(host, port)) else {
            return;
        };
        if let Some(pool) = self.host_ports.get_mut(host) {
            pool.release(port);
        }
        for id in listener.queue {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.end(Side::Server).handle = Handle::Dropped;
                let failure = Failure::new(
                    io::ErrorKind::ConnectionReset,
                    "the listener closed before accepting the connection",
                );
                conn.reset_back(id, failure, wire);
            }
            self.maybe_remove(id);
        }
    }

    /// The next connection for the listener on `port` of `host`.
    pub(crate) fn poll_accept(
        &mut self,
        host: usize,
        port: u16,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Opened>> {
        let Some(listener) = self.listeners.get_mut(&(host, port)) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the simulated listener is closed",
            )));
        };
        while let Some(id) = listener.queue.pop_front() {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.end(Side::Server).handle = Handle::Live;
                let (local, peer) = conn.addrs[Side::Server.index()];
                return Poll::Ready(Ok(Opened { id, local, peer }));
            }
        }
        listener.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Opens a connection from `host` to `to`: the SYN leaves now, or when the route comes up.
    /// Fails at once only when `host` has no free port; everything else fails later, through
    /// [`poll_connect`](Self::poll_connect).
    pub(crate) fn connect(
        &mut self,
        network: &Network,
        host: usize,
        to: SocketAddrV4,
        wire: &mut dyn Wire,
    ) -> io::Result<Opened> {
        let (Some(pool), Some(h)) = (self.host_ports.get_mut(host), network.hosts.get(host)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the simulated network has no host {host}"),
            ));
        };
        let port = pool.allocate().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no free ephemeral TCP port on simulated host {:?}", h.name),
            )
        })?;
        let local = SocketAddrV4::new(h.ip, port);
        let mapped = route(network, host, to).and_then(|route| {
            let (seen, ports) = self.map_through(network, &route, local)?;
            Ok((route, seen, ports))
        });
        let (route, unroutable, seen, nat_ports) = match mapped {
            Ok((route, seen, ports)) => (Some(route), None, seen, ports),
            Err(why) => (None, Some(why), local, Vec::new()),
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut client = End::new(Handle::Live);
        client.control.push_back(Payload::Syn);
        let mut conn = Conn {
            route,
            unroutable,
            client_host: host,
            addrs: [(local, to), (to, seen)],
            nat_ports,
            phase: Phase::Connecting,
            ends: [client, End::new(Handle::NotYet)],
        };
        let timeout = wire.now().saturating_add(CONNECT_TIMEOUT);
        wire.schedule(timeout, TcpEvent::ConnectTimeout { conn: id });
        conn.pump(id, Side::Client, wire);
        self.conns.insert(id, conn);
        Ok(Opened {
            id,
            local,
            peer: to,
        })
    }

    /// A fresh external port at every NAT of `route`; the address the server sees.
    fn map_through(
        &mut self,
        network: &Network,
        route: &Route,
        local: SocketAddrV4,
    ) -> Result<(SocketAddrV4, Vec<(usize, u16)>), Unroutable> {
        let mut seen = local;
        let mut held = Vec::new();
        for &nat in &route.nats {
            let Some(port) = self.nat_ports.get_mut(nat).and_then(PortPool::allocate) else {
                for (nat, port) in held {
                    self.release_nat_port(nat, port);
                }
                return Err(Unroutable::NoPort {
                    nat: network.nats[nat].name.clone(),
                });
            };
            held.push((nat, port));
            seen = SocketAddrV4::new(network.nats[nat].external_ip, port);
        }
        Ok((seen, held))
    }

    fn release_nat_port(&mut self, nat: usize, port: u16) {
        if let Some(pool) = self.nat_ports.get_mut(nat) {
            pool.release(port);
        }
    }

    /// Whether the handshake finished, failed, or is still under way.
    pub(crate) fn poll_connect(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Poll::Ready(Err(gone()));
        };
        match &conn.phase {
            Phase::Open => Poll::Ready(Ok(())),
            Phase::Failed(failure) => Poll::Ready(Err(failure.error())),
            Phase::Connecting => {
                conn.end(Side::Client).connect_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Reads what has arrived for `side`; EOF after the other side's FIN.
    pub(crate) fn poll_read(
        &mut self,
        id: u64,
        side: Side,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        wire: &mut dyn Wire,
    ) -> Poll<io::Result<()>> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(failure) = conn.failure() {
            return Poll::Ready(Err(failure.error()));
        }
        let end = conn.end(side);
        if end.readable.is_empty() {
            if end.eof {
                return Poll::Ready(Ok(()));
            }
            end.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let size = buf.remaining().min(end.readable.len());
        let (front, back) = end.readable.as_slices();
        let from_front = size.min(front.len());
        buf.put_slice(&front[..from_front]);
        buf.put_slice(&back[..size - from_front]);
        end.readable.drain(..size);
        end.window_owed += size;
        conn.pump(id, side, wire);
        Poll::Ready(Ok(()))
    }

    /// Takes as much of `data` as the window has room for.
    pub(crate) fn poll_write(
        &mut self,
        id: u64,
        side: Side,
        cx: &mut Context<'_>,
        data: &[u8],
        wire: &mut dyn Wire,
    ) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(failure) = conn.failure() {
            return Poll::Ready(Err(failure.error()));
        }
        let host = conn.host(side);
        let (local, peer) = conn.addrs[side.index()];
        let end = conn.end(side);
        if end.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the simulated stream's write side is shut down",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = WINDOW.saturating_sub(end.unacked);
        if room == 0 {
            end.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let size = room.min(data.len());
        end.unsent.extend(&data[..size]);
        end.unacked += size;
        if let Some(host) = host {
            wire.sent(host, local, peer, &data[..size]);
        }
        conn.pump(id, side, wire);
        Poll::Ready(Ok(size))
    }

    /// The error a failed connection reports, if it failed.
    pub(crate) fn check(&self, id: u64) -> io::Result<()> {
        match self.conns.get(&id) {
            None => Err(gone()),
            Some(conn) => conn.failure().map_or(Ok(()), |f| Err(f.error())),
        }
    }

    /// Shuts `side`'s write side down: a FIN follows its bytes.
    pub(crate) fn shutdown(&mut self, id: u64, side: Side, wire: &mut dyn Wire) -> io::Result<()> {
        self.check(id)?;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.end(side).shut = true;
            conn.pump(id, side, wire);
        }
        Ok(())
    }

    /// `side`'s handle is gone: a connection still connecting is abandoned; an open one sends
    /// its FIN after its bytes, and bytes arriving from now on are answered by a reset.
    pub(crate) fn drop_end(&mut self, id: u64, side: Side, wire: &mut dyn Wire) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let end = conn.end(side);
        end.handle = Handle::Dropped;
        end.readable.clear();
        match conn.phase {
            Phase::Connecting => {
                let failure = Failure::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connecting side gave up",
                );
                self.fail(id, failure);
            }
            Phase::Open => {
                conn.end(side).shut = true;
                conn.pump(id, side, wire);
            }
            Phase::Failed(_) => {}
        }
        self.maybe_remove(id);
    }

    /// Every link that came up: sends what waited for it.
    pub(crate) fn healed(&mut self, wire: &mut dyn Wire) {
        for (&id, conn) in &mut self.conns {
            conn.pump(id, Side::Client, wire);
            conn.pump(id, Side::Server, wire);
        }
    }

    /// NAT `nat` forgot its state: every connection through it fails.
    pub(crate) fn reset_through_nat(&mut self, nat: usize, why: &str) {
        let crossing: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.route.as_ref().is_some_and(|r| r.nats.contains(&nat)))
            .map(|(&id, _)| id)
            .collect();
        for id in crossing {
            self.fail(id, Failure::new(io::ErrorKind::ConnectionReset, why));
        }
    }

    /// `host` changed its address: every connection it is an end of fails.
    pub(crate) fn reset_host(&mut self, host: usize, why: &str) {
        let ends: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.host(Side::Client) == Some(host) || c.host(Side::Server) == Some(host)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ends {
            self.fail(id, Failure::new(io::ErrorKind::ConnectionReset, why));
        }
    }

    /// Handles an event that is due.
    pub(crate) fn on_event(&mut self, event: TcpEvent, wire: &mut dyn Wire) {
        match event {
            TcpEvent::Segment {
                conn,
                from,
                index,
                payload,
                generation,
            } => self.on_segment(conn, from, index, payload, generation, wire),
            TcpEvent::Window {
                conn: id,
                to,
                bytes,
                generation,
            } => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                let Some(route) = &conn.route else {
                    return;
                };
                let path = wire.path(&route.links);
                if !path.up || path.generation != generation {
                    // Lost to a partition: the reader's side sends it again.
                    conn.end(to.other()).window_owed += bytes;
                    conn.pump(id, to.other(), wire);
                    return;
                }
                let end = conn.end(to);
                end.unacked = end.unacked.saturating_sub(bytes);
                wake(&mut end.write_waker);
            }
            TcpEvent::Reset { conn, failure } => self.fail(conn, failure),
            TcpEvent::ConnectTimeout { conn: id } => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                if conn.phase == Phase::Connecting {
                    let to = conn.addrs[Side::Client.index()].1;
                    let why = match &conn.unroutable {
                        Some(why) => {
                            format!("no answer from {to} within {CONNECT_TIMEOUT:?}: {why}")
                        }
                        None => format!(
                            "no answer from {to} within {CONNECT_TIMEOUT:?}: its route stayed down"
                        ),
                    };
                    self.fail(id, Failure::new(io::ErrorKind::TimedOut, why));
                }
            }
        }
    }

    fn on_segment(
        &mut self,
        id: u64,
        from: Side,
        index: u64,
        payload: Payload,
        generation: u64,
        wire: &mut dyn Wire,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.failure().is_some() {
            return;
        }
        let Some(route) = &conn.route else {
            return;
        };
        let path = wire.path(&route.links);
        if !path.up || path.generation != generation {
            // A link on the route went down while it was in flight: lost, sent again.
            conn.end(from).lost.insert(index, payload);
            conn.pump(id, from, wire);
            return;
        }
        let to = from.other();
        let end = conn.end(to);
        if index < end.expected {
            return;
        }
        end.early.insert(index, payload);
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.failure().is_some() {
                return;
            }
            let end = conn.end(to);
            let Some(payload) = end.early.remove(&end.expected) else {
                return;
            };
            end.expected += 1;
            self.in_order(id, to, payload, wire);
        }
    }

    /// A segment reached `at`'s end in order.
    fn in_order(&mut self, id: u64, at: Side, payload: Payload, wire: &mut dyn Wire) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match payload {
            Payload::Syn => {
                if conn
                    .listener()
                    .is_some_and(|l| self.listeners.contains_key(&l))
                {
                    conn.end(Side::Server).control.push_back(Payload::SynAck);
                    conn.pump(id, Side::Server, wire);
                } else {
                    let why = format!(
                        "connection refused: nothing listens on {}",
                        conn.addrs[Side::Server.index()].0
                    );
                    conn.reset_back(
                        id,
                        Failure::new(io::ErrorKind::ConnectionRefused, why),
                        wire,
                    );
                }
            }
            Payload::SynAck => {
                conn.phase = Phase::Open;
                let client = conn.end(Side::Client);
                wake(&mut client.connect_waker);
                client.control.push_back(Payload::Ack);
                conn.pump(id, Side::Client, wire);
            }
            Payload::Ack => {
                let listener = conn.listener().and_then(|l| self.listeners.get_mut(&l));
                match listener {
                    Some(listener) if listener.queue.len() < BACKLOG => {
                        listener.queue.push_back(id);
                        wake(&mut listener.waker);
                        conn.end(Side::Server).handle = Handle::Queued;
                    }
                    _ => {
                        let why = "the listener closed, or its backlog was full, before the \
                                   handshake finished";
                        let failure = Failure::new(io::ErrorKind::ConnectionReset, why);
                        conn.reset_back(id, failure, wire);
                    }
                }
            }
            Payload::Data(bytes) => {
                let host = conn.host(at);
                let (local, peer) = conn.addrs[at.index()];
                if conn.end(at).handle == Handle::Dropped {
                    let why = format!("{local} closed the connection and {peer} kept sending");
                    let failure = Failure::new(io::ErrorKind::ConnectionReset, why);
                    conn.reset_back(id, failure, wire);
                    return;
                }
                if let Some(host) = host {
                    wire.delivered(host, local, peer, &bytes);
                }
                let end = conn.end(at);
                end.readable.extend(bytes);
                wake(&mut end.read_waker);
            }
            Payload::Fin => {
                let end = conn.end(at);
                end.eof = true;
                wake(&mut end.read_waker);
            }
        }
    }

    /// Ends a connection with `failure` at both ends; its NAT ports are free again.
    fn fail(&mut self, id: u64, failure: Failure) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.failure().is_some() {
            return;
        }
        conn.phase = Phase::Failed(failure);
        for end in &mut conn.ends {
            end.control.clear();
            end.unsent.clear();
            end.lost.clear();
            end.early.clear();
            end.readable.clear();
            end.wake_all();
        }
        for (nat, port) in std::mem::take(&mut conn.nat_ports) {
            self.release_nat_port(nat, port);
        }
        self.maybe_remove(id);
    }

    /// Forgets a connection no one can use any more: both handles dropped, or failed with no
    /// handle left.
    fn maybe_remove(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let [client, server] = [&conn.ends[0].handle, &conn.ends[1].handle];
        let both_dropped = *client == Handle::Dropped && *server == Handle::Dropped;
        let failed_and_free = conn.failure().is_some() && !client.held() && !server.held();
        if !(both_dropped || failed_and_free) {
            return;
        }
        if let Some(conn) = self.conns.remove(&id) {
            let client_port = conn.addrs[Side::Client.index()].0.port();
            if let Some(pool) = self.host_ports.get_mut(conn.client_host) {
                pool.release(client_port);
            }
            for (nat, port) in conn.nat_ports {
                self.release_nat_port(nat, port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection machine driven by hand, without a world or a runtime: a fake wire whose
    //! one route flaps at random while a writer and a reader of random sizes move bytes.

    use std::collections::BTreeMap;
    use std::task::Waker;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::topology::Topology;

    struct FakeWire {
        now: Duration,
        up: bool,
        generation: u64,
        rng: ChaCha8Rng,
        agenda: BTreeMap<(Duration, u64), TcpEvent>,
        seq: u64,
        /// Per side, the latest arrival scheduled for one of its segments.
        latest: [Duration; 2],
    }

    impl Wire for FakeWire {
        fn now(&self) -> Duration {
            self.now
        }

        fn path(&self, _: &[LinkId]) -> PathState {
            PathState {
                up: self.up,
                generation: self.generation,
            }
        }

        fn jitter(&mut self, max: Duration) -> Duration {
            max.mul_f64(self.rng.random::<f64>())
        }

        fn schedule(&mut self, at: Duration, event: TcpEvent) {
            if let TcpEvent::Segment { from, .. } = &event {
                let latest = &mut self.latest[from.index()];
                assert!(at >= *latest, "a segment scheduled to overtake another");
                *latest = at;
            }
            self.agenda.insert((at, self.seq), event);
            self.seq += 1;
        }

        fn sent(&mut self, _: usize, _: SocketAddrV4, _: SocketAddrV4, _: &[u8]) {}

        fn delivered(&mut self, _: usize, _: SocketAddrV4, _: SocketAddrV4, _: &[u8]) {}
    }

    const NETWORK: &str = r#"
        [[host]]
        name = "a"
        link = { latency = "10ms", jitter = "30ms", bandwidth = "20Mbit" }
        [[host]]
        name = "b"
        link = { latency = "5ms", jitter = "5ms" }
    "#;

    /// Moves `total` bytes from a to b while the route flaps; returns what b read.
    fn flapping_transfer(seed: u64, total: usize) -> Vec<u8> {
        let network = Topology::from_toml(NETWORK).unwrap().resolve().unwrap();
        let mut streams = Streams::new(2, 0);
        let mut wire = FakeWire {
            now: Duration::ZERO,
            up: true,
            generation: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            agenda: BTreeMap::new(),
            seq: 0,
            latest: [Duration::ZERO; 2],
        };
        let mut cx = Context::from_waker(Waker::noop());
        let port = streams.listen(&network, 1, 80).unwrap();
        let to = SocketAddrV4::new(network.hosts[1].ip, port);
        let client = streams.connect(&network, 0, to, &mut wire).unwrap().id;
        let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
        let (mut written, mut read, mut server) = (0, Vec::new(), None);
        let mut shut = false;
        let mut buf = vec![0u8; 70_000];
        for _ in 0..1_000_000 {
            match wire.rng.random_range(0..100) {
                0 => {
                    // The link flaps.
                    wire.up = !wire.up;
                    if wire.up {
                        streams.healed(&mut wire);
                    } else {
                        wire.generation += 1;
                    }
                }
                1..=30 if streams.poll_connect(client, &mut cx).is_ready() => {
                    if written < total {
                        let size = wire.rng.random_range(1..=50_000).min(total - written);
                        let chunk = &data[written..written + size];
                        if let Poll::Ready(n) =
                            streams.poll_write(client, Side::Client, &mut cx, chunk, &mut wire)
                        {
                            written += n.unwrap();
                        }
                    } else if !shut {
                        streams.shutdown(client, Side::Client, &mut wire).unwrap();
                        shut = true;
                    }
                }
                31..=60 => {
                    if server.is_none() {
                        if let Poll::Ready(opened) = streams.poll_accept(1, port, &mut cx) {
                            server = Some(opened.unwrap().id);
                        }
                    }
                    if let Some(id) = server {
                        let size = wire.rng.random_range(1..=buf.len());
                        let mut out = ReadBuf::new(&mut buf[..size]);
                        if let Poll::Ready(r) =
                            streams.poll_read(id, Side::Server, &mut cx, &mut out, &mut wire)
                        {
                            r.unwrap();
                            if out.filled().is_empty() {
                                return read;
                            }
                            read.extend_from_slice(out.filled());
                        }
                    }
                }
                _ => {
                    // Time passes in steps, so the route flaps while segments are in flight.
                    let step = wire.now + Duration::from_millis(5);
                    match wire.agenda.first_key_value() {
                        Some((&(at, _), _)) if at <= step => {
                            if let Some(((at, _), event)) = wire.agenda.pop_first() {
                                wire.now = at;
                                streams.on_event(event, &mut wire);
                            }
                        }
                        _ => wire.now = step,
                    }
                }
            }
        }
        panic!(
            "the transfer did not finish: {} of {total} bytes read",
            read.len()
        );
    }

    #[test]
    fn bytes_arrive_whole_and_in_order_through_jitter_and_a_flapping_route() {
        for seed in 0..20 {
            let total = 300_000;
            let read = flapping_transfer(seed, total);
            let sent: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
            assert!(read == sent, "seed {seed}: {} bytes, changed", read.len());
        }
    }
}
