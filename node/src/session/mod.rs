//! Sessions on the host side.
//!
//! - [`gate`]: the grant check every session passes before any process, PTY or file exists.
//!
//! Session processes (privilege drop, PTY, exec) and the client side arrive with the rest of
//! issue #4.

pub mod gate;
