//! One simulated TCP connection: its two ends, what each owes the other, and when a segment
//! it sends arrives (see [`super`] for the model).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddrV4;
use std::task::Waker;
use std::time::Duration;

use super::route::{IP_TCP_HEADERS, Route, Unroutable};
use super::{TcpEvent, Wire};
use crate::link::serialization_time;

/// The two ends of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The end that connected.
    Client,
    /// The end that accepted.
    Server,
}

impl Side {
    pub(super) fn index(self) -> usize {
        match self {
            Self::Client => 0,
            Self::Server => 1,
        }
    }

    pub(super) fn other(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// What a segment carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    /// The client's opening.
    Syn,
    /// The server's answer.
    SynAck,
    /// The client's last handshake segment: the server may accept.
    Ack,
    /// Bytes, at most the route's MSS.
    Data(Vec<u8>),
    /// The end of the sender's bytes.
    Fin,
}

impl Payload {
    pub(super) fn wire_bytes(&self) -> u64 {
        let data = match self {
            Self::Data(bytes) => bytes.len(),
            _ => 0,
        };
        u64::try_from(data + IP_TCP_HEADERS).unwrap_or(u64::MAX)
    }
}

/// Why a connection ended, as the applications' next call reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(super) kind: io::ErrorKind,
    pub(super) why: String,
}

impl Failure {
    pub(super) fn new(kind: io::ErrorKind, why: impl Into<String>) -> Self {
        Self {
            kind,
            why: why.into(),
        }
    }

    pub(super) fn error(&self) -> io::Error {
        io::Error::new(self.kind, self.why.clone())
    }
}

/// Where a connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Connecting,
    Open,
    Failed(Failure),
}

/// Who holds an end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Handle {
    /// The server end before its ACK arrives.
    NotYet,
    /// The server end in its listener's accept queue.
    Queued,
    /// An application's handle.
    Live,
    /// Its handle was dropped.
    Dropped,
}

impl Handle {
    pub(super) fn held(self) -> bool {
        matches!(self, Self::Queued | Self::Live)
    }
}

/// One end: what it sends and what it receives.
#[derive(Debug)]
pub(super) struct End {
    pub(super) handle: Handle,
    /// Handshake segments to send, ahead of any data.
    pub(super) control: VecDeque<Payload>,
    /// Bytes written and not yet cut into segments.
    pub(super) unsent: VecDeque<u8>,
    /// Its application has shut the write side down (a FIN follows the bytes).
    pub(super) shut: bool,
    pub(super) fin_sent: bool,
    /// The number of the next new segment.
    pub(super) next_index: u64,
    /// Segments lost to a partition, sent again before anything new.
    pub(super) lost: BTreeMap<u64, Payload>,
    /// Bytes written and not yet read at the other end (the window in use).
    pub(super) unacked: usize,
    /// When its last segment finished serializing at the route's narrowest link.
    pub(super) busy_until: Duration,
    /// The latest arrival time given to one of its segments.
    pub(super) last_arrival: Duration,
    /// The number of the next segment to hand to the application.
    pub(super) expected: u64,
    /// Segments that arrived ahead of a lost one.
    pub(super) early: BTreeMap<u64, Payload>,
    /// Bytes for the application to read.
    pub(super) readable: VecDeque<u8>,
    /// The other side's FIN was read in order.
    pub(super) eof: bool,
    /// Bytes read whose window update is still to be sent.
    pub(super) window_owed: usize,
    pub(super) read_waker: Option<Waker>,
    pub(super) write_waker: Option<Waker>,
    pub(super) connect_waker: Option<Waker>,
}

impl End {
    pub(super) fn new(handle: Handle) -> Self {
        Self {
            handle,
            control: VecDeque::new(),
            unsent: VecDeque::new(),
            shut: false,
            fin_sent: false,
            next_index: 0,
            lost: BTreeMap::new(),
            unacked: 0,
            busy_until: Duration::ZERO,
            last_arrival: Duration::ZERO,
            expected: 0,
            early: BTreeMap::new(),
            readable: VecDeque::new(),
            eof: false,
            window_owed: 0,
            read_waker: None,
            write_waker: None,
            connect_waker: None,
        }
    }

    pub(super) fn wake_all(&mut self) {
        for slot in [
            &mut self.read_waker,
            &mut self.write_waker,
            &mut self.connect_waker,
        ] {
            wake(slot);
        }
    }

    /// Puts one segment on the route at the wire's now (see the module docs for its timing).
    pub(super) fn transmit(&mut self, route: &Route, send: Sending, wire: &mut dyn Wire) {
        let now = wire.now();
        let departure = match route.bandwidth_bps {
            None => now,
            Some(bps) => {
                let done = now
                    .max(self.busy_until)
                    .saturating_add(serialization_time(send.payload.wire_bytes(), bps));
                self.busy_until = done;
                done
            }
        };
        let arrival = departure
            .saturating_add(one_way(route, wire))
            .max(self.last_arrival);
        self.last_arrival = arrival;
        wire.schedule(
            arrival,
            TcpEvent::Segment {
                conn: send.conn,
                from: send.from,
                index: send.index,
                payload: send.payload,
                generation: send.generation,
            },
        );
    }
}

/// A segment about to leave.
pub(super) struct Sending {
    pub(super) conn: u64,
    pub(super) from: Side,
    pub(super) index: u64,
    pub(super) payload: Payload,
    pub(super) generation: u64,
}

pub(super) fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// The route's latency plus a jitter draw per jittery link.
pub(super) fn one_way(route: &Route, wire: &mut dyn Wire) -> Duration {
    route.jitters.iter().fold(route.latency, |total, max| {
        total.saturating_add(wire.jitter(*max))
    })
}

/// One connection.
#[derive(Debug)]
pub(super) struct Conn {
    /// `None` when the SYN goes nowhere (`unroutable` says why).
    pub(super) route: Option<Route>,
    pub(super) unroutable: Option<Unroutable>,
    pub(super) client_host: usize,
    /// Per side: its own address and its peer's, as that side sees them.
    pub(super) addrs: [(SocketAddrV4, SocketAddrV4); 2],
    /// The NAT ports it holds, freed when it fails or goes.
    pub(super) nat_ports: Vec<(usize, u16)>,
    pub(super) phase: Phase,
    pub(super) ends: [End; 2],
}

impl Conn {
    pub(super) fn end(&mut self, side: Side) -> &mut End {
        &mut self.ends[side.index()]
    }

    pub(super) fn host(&self, side: Side) -> Option<usize> {
        match side {
            Side::Client => Some(self.client_host),
            Side::Server => self.route.as_ref().map(|r| r.server),
        }
    }

    /// The server's host and port, where its listener must be.
    pub(super) fn listener(&self) -> Option<(usize, u16)> {
        let server = self.route.as_ref()?.server;
        Some((server, self.addrs[Side::Server.index()].0.port()))
    }

    pub(super) fn failure(&self) -> Option<&Failure> {
        match &self.phase {
            Phase::Failed(failure) => Some(failure),
            _ => None,
        }
    }

    /// Sends whatever `side` owes the other end, if its route is up: window updates, lost
    /// segments, handshake segments, bytes, the FIN.
    pub(super) fn pump(&mut self, id: u64, side: Side, wire: &mut dyn Wire) {
        if self.failure().is_some() {
            return;
        }
        let Some(route) = &self.route else {
            return;
        };
        let path = wire.path(&route.links);
        if !path.up {
            return;
        }
        let end = &mut self.ends[side.index()];
        if end.window_owed > 0 {
            let at = wire.now().saturating_add(one_way(route, wire));
            let bytes = std::mem::take(&mut end.window_owed);
            wire.schedule(
                at,
                TcpEvent::Window {
                    conn: id,
                    to: side.other(),
                    bytes,
                    generation: path.generation,
                },
            );
        }
        let mut out: Vec<(u64, Payload)> = std::mem::take(&mut end.lost).into_iter().collect();
        while let Some(payload) = end.control.pop_front() {
            out.push((end.next_index, payload));
            end.next_index += 1;
        }
        while !end.unsent.is_empty() {
            let size = route.mss.min(end.unsent.len());
            let chunk: Vec<u8> = end.unsent.drain(..size).collect();
            out.push((end.next_index, Payload::Data(chunk)));
            end.next_index += 1;
        }
        if end.shut && !end.fin_sent {
            end.fin_sent = true;
            out.push((end.next_index, Payload::Fin));
            end.next_index += 1;
        }
        for (index, payload) in out {
            let send = Sending {
                conn: id,
                from: side,
                index,
                payload,
                generation: path.generation,
            };
            end.transmit(route, send, wire);
        }
    }

    /// Schedules a reset that ends the connection one way later (the trip of an RST).
    pub(super) fn reset_back(&self, id: u64, failure: Failure, wire: &mut dyn Wire) {
        let delay = self
            .route
            .as_ref()
            .map_or(Duration::ZERO, |route| one_way(route, wire));
        let at = wire.now().saturating_add(delay);
        wire.schedule(at, TcpEvent::Reset { conn: id, failure });
    }
}
