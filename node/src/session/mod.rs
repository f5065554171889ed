//! Sessions on the host side.
//!
//! - [`gate`]: the grant check every session passes before any process, PTY or file exists.
//! - [`account`]: the account a session runs as and its clean login environment.
//! - [`privilege`]: the complete, verified privilege drop of the per-session process.
//!
//! Session processes (privilege drop, PTY, exec) and the client side arrive with the rest of
//! issue #4.

pub mod account;
pub mod gate;
pub mod privilege;
