//! Session protocol: opening a shell or command on a host and carrying its bytes.
//!
//! The client sends [`Open`] first, with the grant; the host verifies it before any process,
//! PTY or file exists, then answers [`Opened`] or [`Refused`]. After that, data, EOF, resize
//! and signal messages flow until [`SessionMessage::Exited`]. The model is ssh's: a shell is an open with no
//! command and a PTY; `exec` is a command with or without one.

use serde::{Deserialize, Serialize};

use crate::codec::{bounded_bytes, bounded_vec};
use crate::error::Rejection;

/// Most environment variables a client may pass (only `LANG`/`LC_*` are honoured).
pub const MAX_ENV_VARS: usize = 64;
/// Largest data chunk the session protocol carries in one message.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

crate::wire_messages! {
    /// A session-protocol message.
    pub enum SessionMessage: protocol "session", max_payload = 128 * 1024; {
        /// Client → host: open a session.
        1 => Open(Open),
        /// Host → client: the session started.
        2 => Opened(Opened),
        /// Host → client: the session was refused; nothing was started.
        3 => Refused(Refused),
        /// Either way: bytes on one of the session's streams.
        4 => Data(Data),
        /// Either way: no more bytes on that stream.
        5 => Eof(Eof),
        /// Client → host: the terminal changed size.
        6 => Resize(WindowSize),
        /// Client → host: deliver a signal to the session's process group.
        7 => Signal(Signal),
        /// Host → client: the session's process ended.
        8 => Exited(ExitStatus),
        /// Host → client: the host is ending the session (a limit, or shutdown) and hangs up
        /// its processes; `Exited` may still follow.
        9 => Closed(Closed),
    }
}

/// Which Unix account the session runs as.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LoginRequest {
    /// An existing account, by name.
    Named(String),
    /// A temporary account the host creates.
    Temporary,
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// A PTY request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PtyRequest {
    /// The client's `TERM`.
    pub term: String,
    /// The initial size.
    pub size: WindowSize,
}

/// One environment variable offered by the client.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Opens a session.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Open {
    /// The signed grant.
    #[serde(with = "serde_bytes")]
    pub grant: Vec<u8>,
    /// The account to run as.
    pub login: LoginRequest,
    /// The command to run with the login shell's `-c`; `None` for an interactive shell.
    pub command: Option<String>,
    /// A PTY, if wanted.
    pub pty: Option<PtyRequest>,
    /// Environment offered by the client; the host keeps only what its policy allows.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ENV_VARS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::vec_up_to(MAX_ENV_VARS)")
    )]
    pub env: Vec<EnvVar>,
}

/// The session started.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Opened {
    /// The host's id for the session, for audit and logs.
    pub session_id: u64,
}

/// Why a session was refused.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Refusal {
    /// The grant failed verification.
    Grant(Rejection),
    /// A host-side reason (limits, settings, resources), as one line.
    Host(String),
}

/// The session was refused.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
}

/// A session's byte streams, as in ssh.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Stream {
    /// Client → host.
    Stdin,
    /// Host → client (with a PTY, everything arrives here).
    Stdout,
    /// Host → client, without a PTY.
    Stderr,
}

/// Bytes on a stream.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Data {
    /// Which stream.
    pub stream: Stream,
    /// The bytes, at most [`MAX_DATA_CHUNK`]: a longer chunk is neither encoded nor decoded.
    #[serde(
        serialize_with = "bounded_bytes::serialize::<_, MAX_DATA_CHUNK>",
        deserialize_with = "bounded_bytes::deserialize::<_, MAX_DATA_CHUNK>"
    )]
    pub bytes: Vec<u8>,
}

/// End of a stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Eof {
    /// Which stream ended.
    pub stream: Stream,
}

/// A signal for the session's process group, by number (Linux numbering).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Signal {
    /// The signal number.
    pub number: i32,
}

/// How the session's process ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal; the client exits with 128 + the number, as ssh does.
    Signal(i32),
}

/// The host ended the session itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Closed {
    /// One line: why, naming the limit (`idle_timeout`, `max_duration`, ...).
    pub reason: String,
}
