//! The coordinator: identity, permissions and rendezvous for a mesh.
//!
//! - [`model`]: users, devices, hosts and their settings, roles, invites.
//! - [`policy`]: [`authorize`](policy::authorize), the one pure function every request goes
//!   through.
//!
//! - [`store`]: the [`Store`](store::Store) trait and its SQLite and in-memory backends.
//!
//! Still to come with issue #5: enrollment, grant issuing and the control protocol server.
//! See `ARCHITECTURE.md`.

pub mod home;
pub mod model;
pub mod policy;
pub mod relay;
pub mod server;
pub mod store;
