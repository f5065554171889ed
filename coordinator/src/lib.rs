//! The coordinator: identity, permissions and rendezvous for a mesh.
//!
//! Empty until the coordinator issue (#5) lands. It will hold the store (SQLite by default, an
//! in-memory store for the simulator, behind one trait), enrollment, users and roles, grant
//! issuing with the [`mesh_proto`] signed formats, rendezvous and the embedded relay, with its
//! endpoints built on [`mesh_node`]'s endpoint layer. See `ARCHITECTURE.md`.
