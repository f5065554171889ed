//! The peer library every mesh participant uses (host agent, client, coordinator, relay).
//!
//! What exists so far (see `ARCHITECTURE.md` for each module's job):
//! - [`keyfile`]: secret keys on disk, written 0600 and refused when others can read them.
//! - [`udp`]: real UDP behind the [`DatagramSocket`](mesh_proto::socket::DatagramSocket) seam.
//! - [`tls`] and [`endpoint`]: QUIC (quinn) over that seam, TLS 1.3 authenticated by node keys
//!   presented as raw public keys.
//! - [`framed`]: protocol frames on async byte streams, length-capped before allocating.
//! - [`session`]: the host's side of sessions (gate, limits, per-session processes, PTYs,
//!   privilege drop) and the client's.
//! - [`control`] and [`grant_cache`]: talking to the coordinator; offline grants kept by clients.
//! - [`agent`]: `mesh node run` — config, presence, revocations.
//! - [`audit`]: audit events — the fsync'd spool, session admission against it, the uploader.
//! - [`inherited_fds`]: no inherited descriptor reaches a user's program.
//! - [`temp_accounts`] and [`durable`]: temporary root accounts; files replaced crash-safely.
//!
//! - [`path`]: the path layer: the path socket under QUIC, direct paths and the relay,
//!   hole punching, TCP fallback.
//! - [`tasks`]: tasks that end with their owner.
//! - [`rendezvous`]: the node side of a rendezvous: NAT checks, a client's offer, punching
//!   from the coordinator's start time.

pub mod agent;
pub mod audit;
pub mod control;
pub mod durable;
pub mod endpoint;
pub mod error;
pub mod framed;
pub mod grant_cache;
pub mod inherited_fds;
pub mod keyfile;
pub mod path;
pub mod rendezvous;
pub mod session;
pub mod tasks;
pub mod temp_accounts;
pub mod tls;
pub mod udp;

pub use error::Error;
