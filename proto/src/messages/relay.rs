//! Relay protocol: opaque packets between two authenticated keys.
//!
//! The packets are the inner QUIC connection's datagrams, already encrypted end to end; the
//! relay sees only who talks to whom and how much. The relay issue grows this set.

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::socket::MAX_UDP_PAYLOAD;

/// Room in a relay frame's payload for the packet's framing around it.
const PACKET_OVERHEAD: usize = 64;

crate::wire_messages! {
    /// A relay-protocol message.
    pub enum RelayMessage: protocol "relay", max_payload = (MAX_UDP_PAYLOAD + PACKET_OVERHEAD) as u32; {
        /// Peer → relay: forward `packet` to `to`.
        1 => Send(Send),
        /// Relay → peer: `packet` from `from`.
        2 => Deliver(Deliver),
        /// Relay → peer: `peer` is not connected to this relay (or may not be reached).
        3 => Unreachable(Unreachable),
    }
}

/// A packet to forward.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Send {
    /// The destination key.
    pub to: NodeId,
    /// Which of that key's processes (its path socket's instance), when known; otherwise the
    /// one that connected to the relay last.
    pub to_instance: Option<u64>,
    /// The sending process's instance: one key may run in several processes at once (two
    /// `mesh exec` on one laptop), and replies must find the right one.
    pub from_instance: u64,
    /// The opaque packet.
    #[serde(with = "serde_bytes")]
    pub packet: Vec<u8>,
}

/// A forwarded packet.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Deliver {
    /// The key that sent it (authenticated by the relay).
    pub from: NodeId,
    /// The sending process's instance, as it said (not authenticated: it only routes replies
    /// among processes of the same key).
    pub from_instance: u64,
    /// The opaque packet.
    #[serde(with = "serde_bytes")]
    pub packet: Vec<u8>,
}

/// A destination the relay cannot reach.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Unreachable {
    /// The unreachable key.
    pub peer: NodeId,
}
