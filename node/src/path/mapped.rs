//! Mapped addresses: how the path socket presents each remote peer to quinn — one stable,
//! made-up IPv6 address per peer key, whatever path its packets take underneath — so a QUIC
//! connection never notices a move between the relay and direct addresses (the iroh pattern).
//!
//! The addresses come from a unique-local prefix (RFC 4193) that no real network routes to
//! mesh peers, and are never reused within a process: a stale connection cannot reach a new
//! peer by accident.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use mesh_proto::NodeId;

/// The /48 every mapped address lies in: `fd6d:6573:6800::/48` ("mesh" in ASCII hex).
const PREFIX: [u16; 3] = [0xfd6d, 0x6573, 0x6800];
/// The port of every mapped address (quinn needs one; it means nothing).
const PORT: u16 = 1;

/// Whether `addr` is a mapped address (and not a real one).
pub fn is_mapped(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => v6.ip().segments()[..3] == PREFIX,
        SocketAddr::V4(_) => false,
    }
}

/// One remote process: a peer key and, when known, which of that key's processes (its path
/// socket's random instance; one device may run several `mesh exec` at once). A client's
/// entry for a host it dials starts without an instance and learns it from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    /// The peer's key.
    pub key: NodeId,
    /// Its process, if known.
    pub instance: Option<u64>,
}

/// Peers ↔ mapped addresses, allocated on first use.
#[derive(Debug, Default)]
pub struct MappedAddrs {
    by_peer: HashMap<PeerId, SocketAddr>,
    by_addr: HashMap<SocketAddr, PeerId>,
    next: u64,
}

impl MappedAddrs {
    /// The peer's mapped address, allocating one the first time.
    pub fn addr_of(&mut self, peer: PeerId) -> SocketAddr {
        if let Some(addr) = self.by_peer.get(&peer) {
            return *addr;
        }
        self.next += 1;
        let n = self.next;
        // The 80 bits after the prefix hold the counter; 2^64 peers per process is plenty.
        let ip = Ipv6Addr::new(
            PREFIX[0],
            PREFIX[1],
            PREFIX[2],
            0,
            (n >> 48) as u16,
            (n >> 32) as u16,
            (n >> 16) as u16,
            n as u16,
        );
        let addr = SocketAddr::V6(SocketAddrV6::new(ip, PORT, 0, 0));
        self.by_peer.insert(peer, addr);
        self.by_addr.insert(addr, peer);
        addr
    }

    /// The peer's mapped address, if it has one already.
    pub fn known_addr_of(&self, peer: PeerId) -> Option<SocketAddr> {
        self.by_peer.get(&peer).copied()
    }

    /// Forgets `peer`'s address (never handed out again: the counter only grows).
    pub fn forget(&mut self, peer: PeerId) {
        if let Some(addr) = self.by_peer.remove(&peer) {
            self.by_addr.remove(&addr);
        }
    }

    /// How many peers have an address now.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// Whether no peer has an address.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// The peer behind a mapped address, if it is one of ours.
    pub fn peer_of(&self, addr: SocketAddr) -> Option<PeerId> {
        self.by_addr.get(&addr).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::SecretKey;

    #[test]
    fn each_peer_process_gets_one_stable_address_that_maps_back_and_is_never_real() {
        let key = |n| SecretKey::from_seed(&[n; 32]).node_id();
        let (a, b) = (
            PeerId {
                key: key(1),
                instance: None,
            },
            PeerId {
                key: key(1),
                instance: Some(7),
            },
        );
        let mut table = MappedAddrs::default();
        let addr_a = table.addr_of(a);
        assert_eq!(table.addr_of(a), addr_a, "stable");
        let addr_b = table.addr_of(b);
        assert_ne!(addr_a, addr_b);
        assert_eq!(table.peer_of(addr_a), Some(a));
        assert_eq!(table.peer_of(addr_b), Some(b));
        assert!(is_mapped(addr_a) && is_mapped(addr_b));
        for real in ["203.0.113.5:7422", "[2001:db8::1]:7422", "[fd00::1]:1"] {
            let real: SocketAddr = real.parse().unwrap();
            assert!(!is_mapped(real), "{real}");
            assert_eq!(table.peer_of(real), None);
        }
    }
}
