//! Sessions on the host side.
//!
//! - [`gate`]: the grant check every session passes before any process, PTY or file exists.
//! - [`account`]: the account a session runs as and its clean login environment.
//! - [`privilege`]: the complete, verified privilege drop of the per-session process.
//! - [`exec`]: running a command without a PTY, streams kept apart, exit status returned.
//! - [`pty`]: a shell or command in a real PTY: size, resize, signals, exit status.
//! - [`host`]: one session per QUIC stream: gate, then a session process, then bytes.
//! - [`process`]: the per-session process (privilege drop, then exec or PTY) and how the
//!   agent starts it.
//!
//! The session process that ties these together, PTY shells, limits and the client side arrive with the rest of
//! issue #4.

pub mod account;
pub mod client;
pub mod exec;
pub mod fake_shell;
pub mod gate;
pub mod hangup;
pub mod host;
pub mod limits;
pub mod privilege;
pub mod process;
pub mod pty;
