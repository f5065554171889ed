//! The message sets of mesh's three protocols, each carried in [`codec`](crate::codec) frames:
//!
//! - [`control`]: hosts and clients to the coordinator (ALPN `mesh/control/1`).
//! - [`session`]: a client to a host, one session per stream (ALPN `mesh/session/1`).
//! - [`relay`]: peers to a relay, which forwards packets it cannot read (ALPN `mesh/relay/1`).
//! - [`agent`]: the host agent to its per-session processes, over a Unix socket.
//!
//! Type codes are fixed forever; new messages take new codes.

pub mod agent;
pub mod control;
pub mod relay;
pub mod session;

/// ALPN of the control protocol.
pub const CONTROL_ALPN: &[u8] = b"mesh/control/1";
/// ALPN of the session protocol.
pub const SESSION_ALPN: &[u8] = b"mesh/session/1";
/// ALPN of the relay protocol.
pub const RELAY_ALPN: &[u8] = b"mesh/relay/1";

#[cfg(test)]
pub(crate) mod tests;
