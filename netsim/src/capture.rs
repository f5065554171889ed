//! Recording what one simulated host sends and receives, for tests: every UDP datagram its
//! sockets send or are handed, every stream byte its applications write or are handed, with the
//! virtual time and the direction.
//!
//! A test uses it to prove what did or did not cross a host's wire, e.g. that a canary typed
//! into a relayed session never appears in the relay's traffic. It keeps everything until the
//! [`Capture`] is dropped, so it is bounded only by the traffic of the test that opened it: not
//! for long runs. A world with no capture open pays one emptiness check per datagram.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Whether the host sent it or received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the host: a datagram a socket sent, or bytes an application wrote to a stream.
    Sent,
    /// Received by the host: a datagram put in a socket's queue, or stream bytes arriving in
    /// order for the application to read.
    Received,
}

/// How it travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One UDP datagram.
    Udp,
    /// A run of bytes of a simulated TCP stream (a write, or a segment's payload).
    Stream,
}

/// One thing a host sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// Virtual time since the world began.
    pub at: Duration,
    /// Sent or received.
    pub direction: Direction,
    /// UDP or stream.
    pub transport: Transport,
    /// The host's own address (its socket's, or its end of the stream's).
    pub local: SocketAddr,
    /// The other end's address as this host sees it.
    pub remote: SocketAddr,
    /// The payload.
    pub data: Vec<u8>,
}

type Records = Mutex<Vec<Captured>>;

/// What one host sent and received since the capture was opened (see the module docs). Clones
/// share the same record.
#[derive(Clone, Debug)]
pub struct Capture {
    host: usize,
    records: Arc<Records>,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, Vec<Captured>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host it records.
    pub fn host(&self) -> usize {
        self.host
    }

    /// Everything, in the order it happened.
    pub fn records(&self) -> Vec<Captured> {
        self.lock().clone()
    }

    /// The UDP datagrams only, in order.
    pub fn datagrams(&self) -> Vec<Captured> {
        self.lock()
            .iter()
            .filter(|r| r.transport == Transport::Udp)
            .cloned()
            .collect()
    }

    /// Every payload, sent and received, UDP and stream, concatenated in order.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock()
            .iter()
            .flat_map(|r| r.data.iter().copied())
            .collect()
    }

    /// Whether `needle` appears in one datagram, or anywhere in the bytes of one direction of
    /// one stream (so a needle split across two writes or segments is still found, and one
    /// made up of pieces of unrelated traffic is not). An empty needle is always found.
    pub fn contains(&self, needle: &[u8]) -> bool {
        let records = self.lock();
        let found = |haystack: &[u8]| {
            needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
        };
        if records
            .iter()
            .any(|r| r.transport == Transport::Udp && found(&r.data))
        {
            return true;
        }
        let mut flows: Vec<((Direction, SocketAddr, SocketAddr), Vec<u8>)> = Vec::new();
        for r in records.iter().filter(|r| r.transport == Transport::Stream) {
            let key = (r.direction, r.local, r.remote);
            match flows.iter_mut().find(|(k, _)| *k == key) {
                Some((_, bytes)) => bytes.extend_from_slice(&r.data),
                None => flows.push((key, r.data.clone())),
            }
        }
        flows.iter().any(|(_, bytes)| found(bytes))
    }
}

/// The open captures of a world.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    taps: Vec<(usize, Weak<Records>)>,
}

impl Taps {
    /// Starts recording `host`.
    pub(crate) fn open(&mut self, host: usize) -> Capture {
        let records = Arc::new(Mutex::new(Vec::new()));
        self.taps.push((host, Arc::downgrade(&records)));
        Capture { host, records }
    }

    /// Records what `make` builds with every open capture of `host`; builds nothing when there
    /// is none.
    pub(crate) fn record(&mut self, host: usize, make: impl FnOnce() -> Captured) {
        if self.taps.is_empty() {
            return;
        }
        self.taps.retain(|(_, records)| records.strong_count() > 0);
        if !self.taps.iter().any(|(h, _)| *h == host) {
            return;
        }
        let record = make();
        for (_, records) in self.taps.iter().filter(|(h, _)| *h == host) {
            if let Some(records) = records.upgrade() {
                records
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(record.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(direction: Direction, transport: Transport, remote: u16, data: &[u8]) -> Captured {
        Captured {
            at: Duration::ZERO,
            direction,
            transport,
            local: SocketAddr::from(([10, 0, 0, 10], 1000)),
            remote: SocketAddr::from(([203, 0, 113, 1], remote)),
            data: data.to_vec(),
        }
    }

    #[test]
    fn a_needle_split_across_one_stream_is_found_and_one_spliced_from_two_flows_is_not() {
        let mut taps = Taps::default();
        let capture = taps.open(3);
        let stream = Transport::Stream;
        taps.record(3, || record(Direction::Sent, stream, 443, b"xxCANA"));
        taps.record(3, || record(Direction::Received, stream, 443, b"RYxx"));
        taps.record(3, || record(Direction::Sent, stream, 80, b"BIRDyy"));
        taps.record(3, || record(Direction::Sent, Transport::Udp, 53, b"SO"));
        taps.record(3, || record(Direction::Sent, Transport::Udp, 53, b"NG"));
        taps.record(4, || {
            record(Direction::Sent, Transport::Udp, 53, b"other host")
        });
        assert!(!capture.contains(b"CANARY"), "two directions");
        assert!(!capture.contains(b"SONG"), "two datagrams");
        assert!(capture.contains(b"CANA"));
        taps.record(3, || record(Direction::Sent, stream, 443, b"RY"));
        assert!(capture.contains(b"CANARY"), "one direction of one stream");
        assert_eq!(capture.datagrams().len(), 2);
        assert_eq!(capture.records().len(), 6);
        assert_eq!(capture.bytes(), b"xxCANARYxxBIRDyySONGRY".to_vec());
        assert!(!capture.contains(b"other"));
    }

    #[test]
    fn a_dropped_capture_stops_recording_and_none_builds_nothing() {
        let mut taps = Taps::default();
        taps.record(0, || unreachable!("no capture is open"));
        let capture = taps.open(0);
        drop(capture);
        taps.record(0, || unreachable!("its capture was dropped"));
        assert!(taps.taps.is_empty());
    }
}
