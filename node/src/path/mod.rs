//! The path layer (DESIGN.md, "Connections"): under the QUIC endpoint, one socket that sends
//! each peer's packets on the best live path — a confirmed direct address or the relay — and
//! keeps probing the others, and hole punching to find direct paths through NATs.
//!
//! - [`dial`]: reaching a coordinator or relay over UDP, or over TLS-over-TCP when UDP does
//!   not answer.
//! - [`local`]: this machine's own addresses (LAN candidates).
//! - [`mapped`]: the stable made-up address quinn sees for each peer.
//! - [`net`]: a node's path socket, endpoint and relay connection, started together.
//! - [`punch`]: hole punching's plan from both sides' NAT mappings, and its constants.
//! - [`relay_client`]: a connection to a relay, peers' packets as QUIC datagrams.
//! - [`socket`]: the path socket quinn runs on.
//! - [`state`]: one peer's candidate paths and the choice between them, a state machine that
//!   takes `now`.
//! - [`stream`]: datagram sockets whose datagrams travel as frames on byte streams, for
//!   sites that allow only TCP.
//! - [`tls_stream`]: those byte streams as TLS over TCP, authenticated by node keys.
//!
//! Probes themselves (signed pings and pongs, replay protection) are
//! [`mesh_proto::probe`].

pub mod dial;
pub mod local;
pub mod mapped;
pub mod net;
pub mod punch;
pub mod relay_client;
pub mod socket;
pub mod state;
pub mod stream;
pub mod tls_stream;
