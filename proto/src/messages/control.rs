//! Control protocol: presence, observed addresses, coordinator time, pushed revocations.
//!
//! The coordinator issue grows this set (enrollment, grant requests, directory, settings).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::bounded_vec;
use crate::id::NodeId;
use crate::time::UnixTime;

/// Most listen addresses a node reports.
pub const MAX_LISTEN_ADDRS: usize = 32;

crate::wire_messages! {
    /// A control-protocol message.
    pub enum ControlMessage: protocol "control", max_payload = 64 * 1024; {
        /// Node → coordinator, first on a control connection.
        1 => Hello(Hello),
        /// Coordinator → node, the answer to [`Hello`].
        2 => Welcome(Welcome),
        /// Node → coordinator: asks for the coordinator's time, to measure clock offset.
        3 => TimeRequest(TimeRequest),
        /// Coordinator → node: the answer to [`TimeRequest`].
        4 => TimeReply(TimeReply),
        /// Coordinator → node: a signed revocation to enforce and persist.
        5 => Revoke(Revoke),
        /// Either way: a failure the other side should show.
        6 => Failure(Failure),
    }
}

/// Introduces a node on its control connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// The node's key (also proven in the TLS handshake).
    pub node: NodeId,
    /// The node's mesh version, for the directory.
    pub version: String,
    /// Addresses the node's socket listens on (LAN candidates).
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub listen_addrs: Vec<SocketAddr>,
}

/// The coordinator's answer to [`Hello`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Welcome {
    /// The node's address as the coordinator sees it (its reflexive address).
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::socket_addr()"))]
    pub observed_addr: SocketAddr,
    /// The coordinator's wall-clock time when it sent this.
    pub coordinator_time: UnixTime,
}

/// A request for the coordinator's time.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TimeRequest {
    /// Echoed in the reply, to match it.
    pub nonce: u64,
}

/// The coordinator's time, in answer to a [`TimeRequest`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TimeReply {
    /// The request's nonce.
    pub nonce: u64,
    /// The coordinator's wall-clock time when it answered.
    pub coordinator_time: UnixTime,
}

/// A signed revocation (see [`revocation`](crate::revocation)).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Revoke {
    /// The signed envelope.
    #[serde(with = "serde_bytes")]
    pub revocation: Vec<u8>,
}

/// A failure to report.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Failure {
    /// One line saying what happened and what to do.
    pub message: String,
}
