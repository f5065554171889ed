//! A peer's connection to a relay: QUIC to the relay's pinned key under ALPN `mesh/relay/1`,
//! with the peers' packets as QUIC datagrams (see the relay's module docs in
//! `mesh-coordinator`).

use std::net::SocketAddr;

use mesh_proto::NodeId;
use mesh_proto::codec::{decode_exact, encode_frame};
use mesh_proto::messages::RELAY_ALPN;
use mesh_proto::messages::relay::{self, RelayMessage};

use crate::endpoint::{Connection, Endpoint};
use crate::error::Error;

/// What arrives from a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromRelay {
    /// A packet from `from` (the relay vouches for the key: it saw it in TLS).
    Packet {
        /// The sender.
        from: NodeId,
        /// The sender's process.
        from_instance: u64,
        /// The packet.
        packet: Vec<u8>,
    },
    /// The relay could not reach `peer`.
    Unreachable {
        /// The peer.
        peer: NodeId,
    },
}

/// A connection to one relay.
#[derive(Debug, Clone)]
pub struct RelayClient {
    conn: Connection,
}

impl RelayClient {
    /// Connects to the relay `relay` at `addr` from `endpoint` (whose connections should start
    /// with an MTU that fits a whole peer packet plus framing: see
    /// [`EndpointOptions::initial_mtu`](crate::endpoint::EndpointOptions::initial_mtu)).
    pub async fn connect(
        endpoint: &Endpoint,
        addr: SocketAddr,
        relay: NodeId,
    ) -> Result<Self, Error> {
        let conn = endpoint.connect(addr, relay, RELAY_ALPN).await?;
        Ok(Self { conn })
    }

    /// A relay client on a connection already made to a relay under [`RELAY_ALPN`] (over
    /// UDP or a stream: see [`crate::path::dial`]).
    pub fn from_connection(conn: Connection) -> Self {
        Self { conn }
    }

    /// Sends `packet` from this process (`from_instance`) to `to`'s process `to_instance` (or
    /// its latest) through the relay. A packet that does not fit a datagram now is
    /// an error, like a UDP send of an oversized packet; a full queue drops it silently.
    pub fn send(
        &self,
        to: NodeId,
        to_instance: Option<u64>,
        from_instance: u64,
        packet: Vec<u8>,
    ) -> Result<(), Error> {
        let bytes = encode_frame(&RelayMessage::Send(relay::Send {
            to,
            to_instance,
            from_instance,
            packet,
        }))
        .map_err(Error::Protocol)?;
        match self.conn.quic().send_datagram(bytes.into()) {
            Ok(()) => Ok(()),
            Err(quinn::SendDatagramError::ConnectionLost(e)) => Err(Error::Connection(e)),
            Err(e) => Err(Error::Quic(e.to_string())),
        }
    }

    /// The next message from the relay; anything a relay must not send is skipped.
    pub async fn recv(&self) -> Result<FromRelay, Error> {
        loop {
            let datagram = self
                .conn
                .quic()
                .read_datagram()
                .await
                .map_err(Error::Connection)?;
            match decode_exact::<RelayMessage>(&datagram) {
                Ok(RelayMessage::Deliver(d)) => {
                    return Ok(FromRelay::Packet {
                        from: d.from,
                        from_instance: d.from_instance,
                        packet: d.packet,
                    });
                }
                Ok(RelayMessage::Unreachable(u)) => {
                    return Ok(FromRelay::Unreachable { peer: u.peer });
                }
                Ok(RelayMessage::Send(_)) | Err(_) => {
                    tracing::debug!("ignored a datagram from the relay that is no relay message");
                }
            }
        }
    }

    /// The relay's key.
    pub fn relay_key(&self) -> NodeId {
        self.conn.peer()
    }

    /// The address the relay connection goes to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.quic().remote_address()
    }

    /// Closes the relay connection.
    pub fn close(&self) {
        self.conn.quic().close(0u32.into(), b"closed");
    }

    /// Completes when the relay connection has closed.
    pub async fn closed(&self) {
        self.conn.quic().closed().await;
    }

    /// The largest peer packet that fits one datagram now.
    pub fn max_packet(&self) -> Option<usize> {
        self.conn
            .quic()
            .max_datagram_size()
            .map(|size| size.saturating_sub(RELAY_FRAMING))
    }
}

/// The UDP payload size relay connections start with and never go below: a peer's largest
/// packet ([`PEER_MTU`](crate::endpoint::PEER_MTU)) plus [`RELAY_FRAMING`] plus
/// [`RELAY_QUIC_OVERHEAD`] fits from the first packet, while staying well below a 1,500-byte
/// Ethernet MTU. (A path that cannot carry it cannot relay full-size peer packets over UDP.)
pub const RELAY_INITIAL_MTU: u16 = 1320;

/// Bytes a `Send` or `Deliver` frame adds around a packet, at worst: the frame header (7), the
/// variant (1), the key (32), the instances (an optional and a plain u64: at most 11 + 10 as
/// varints) and the packet's length (at most 3), rounded up.
pub const RELAY_FRAMING: usize = 64;

/// What a relay connection's own QUIC packet adds around a datagram, as quinn reckons it
/// (conservatively: a short header, a connection ID of up to 20 bytes, a 4-byte packet
/// number, the DATAGRAM frame's type and length and the AEAD tag).
pub const RELAY_QUIC_OVERHEAD: usize = 56;

// Every packet between peers fits one relay datagram from a relay connection's first packet
// on: a path change to the relay never meets a packet too big for it.
const _: () = assert!(
    crate::endpoint::PEER_MTU as usize + RELAY_FRAMING + RELAY_QUIC_OVERHEAD
        <= RELAY_INITIAL_MTU as usize
);
