//! The coordinator: identity, permissions and rendezvous for a mesh.
//!
//! - [`model`]: users, devices, hosts and their settings, roles, invites.
//! - [`policy`]: [`authorize`](policy::authorize), the one pure function every request goes
//!   through.
//!
//! - [`store`]: the [`Store`](store::Store) trait and its SQLite and in-memory backends.
//! - [`server`]: the control protocol (enrollment, grants, the directory, administration,
//!   revocation, audit, presence) and the embedded relay's admission.
//! - [`relay`]: the relay server, embedded or standalone.
//! - [`standalone`]: `mesh relay`, the relay on its own with its control stream.
//! - [`home`]: a coordinator's home directory (CA key, key, database).
//!
//! See `ARCHITECTURE.md`.

pub mod home;
pub mod model;
pub mod policy;
pub mod reflector;
pub mod relay;
pub mod server;
pub mod standalone;
pub mod store;
