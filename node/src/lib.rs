//! The peer library every mesh participant uses (host agent, client, coordinator, relay).
//!
//! What exists so far:
//! - [`keyfile`]: secret keys on disk, written 0600 and refused when others can read them.
//! - [`udp`]: real UDP behind the [`DatagramSocket`](mesh_proto::socket::DatagramSocket) seam.
//!
//! The QUIC endpoint over that seam, the path socket, hole punching, the relay client, the
//! session host and client and the agent arrive with their issues (see `ARCHITECTURE.md`).

pub mod error;
pub mod keyfile;
pub mod udp;

pub use error::Error;
