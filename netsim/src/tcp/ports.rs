//! Port numbers for simulated TCP: a host's local ports (listeners and the ephemeral ports of
//! its outbound connections) and a NAT's external ports for the connections it translates.
//!
//! TCP has its own port space, apart from UDP's, as in a real kernel and a real NAT's connection
//! tracking table, so streams never shift the ports UDP sockets or UDP mappings get. Allocation
//! is sequential (one past the last port handed out, skipping ports in use, wrapping around),
//! which needs no randomness: a run with streams draws no more random numbers for ports than one
//! without.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// The ports of one range, each free or in use.
#[derive(Clone, Debug)]
pub(crate) struct PortPool {
    first: u16,
    last: u16,
    /// Where the next search for a free port starts.
    next: u16,
    used: BTreeSet<u16>,
}

impl PortPool {
    /// A pool handing out `range`, all free. An empty range hands out nothing.
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let (first, last) = range.into_inner();
        Self {
            first,
            last,
            next: first,
            used: BTreeSet::new(),
        }
    }

    /// A free port from the range, now in use; `None` when every one is taken.
    pub(crate) fn allocate(&mut self) -> Option<u16> {
        if self.first > self.last {
            return None;
        }
        let size = usize::from(self.last - self.first) + 1;
        let mut candidate = self.next.clamp(self.first, self.last);
        for _ in 0..size {
            let following = if candidate == self.last {
                self.first
            } else {
                candidate + 1
            };
            if self.used.insert(candidate) {
                self.next = following;
                return Some(candidate);
            }
            candidate = following;
        }
        None
    }

    /// Takes `port` (in the range or not, as a listener may bind any port); false when it is
    /// already in use.
    pub(crate) fn take(&mut self, port: u16) -> bool {
        self.used.insert(port)
    }

    /// Gives `port` back.
    pub(crate) fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    /// Whether `port` is in use.
    #[cfg(test)]
    fn in_use(&self, port: u16) -> bool {
        self.used.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_in_sequence_skip_those_in_use_and_wrap() {
        let mut pool = PortPool::new(10..=13);
        assert!(pool.take(11));
        assert_eq!(pool.allocate(), Some(10));
        assert_eq!(pool.allocate(), Some(12));
        assert_eq!(pool.allocate(), Some(13));
        assert_eq!(pool.allocate(), None, "all four are in use");
        pool.release(12);
        assert!(!pool.in_use(12));
        assert_eq!(pool.allocate(), Some(12));
        pool.release(10);
        assert_eq!(pool.allocate(), Some(10), "wrapped around to the start");
    }

    #[test]
    fn a_port_in_use_cannot_be_taken_again_and_an_empty_range_gives_nothing() {
        let mut pool = PortPool::new(100..=200);
        assert!(pool.take(80));
        assert!(!pool.take(80));
        assert!(pool.in_use(80));
        #[allow(clippy::reversed_empty_ranges)]
        let mut empty = PortPool::new(5..=4);
        assert_eq!(empty.allocate(), None);
    }
}
