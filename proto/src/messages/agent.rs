//! Agent protocol: the host agent and one of its per-session processes, over a Unix socket.
//!
//! The agent sends [`Start`] first; the session process answers [`Started`] once it has
//! dropped privileges and started the program, or [`StartFailed`]. After that the socket
//! carries [`SessionMessage`](super::session::SessionMessage) frames both ways, unchanged from
//! the client's stream, so the agent only copies bytes.

use serde::{Deserialize, Serialize};

use super::session::{EnvVar, MAX_ENV_VARS, PtyRequest};
use crate::codec::bounded_vec;

crate::wire_messages! {
    /// An agent-protocol message.
    pub enum AgentMessage: protocol "agent", max_payload = 64 * 1024; {
        /// Agent → session process: what to run, as whom.
        1 => Start(Start),
        /// Session process → agent: running.
        2 => Started(Started),
        /// Session process → agent: could not start; nothing runs.
        3 => StartFailed(StartFailed),
    }
}

/// What a session process is to run. The agent has already checked the grant.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Start {
    /// The Unix account to become.
    pub login: String,
    /// The command for the shell's `-c`; `None` for an interactive login shell.
    pub command: Option<String>,
    /// A PTY, if wanted.
    pub pty: Option<PtyRequest>,
    /// The client's offered environment; the session process keeps only the locale.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ENV_VARS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::vec_up_to(MAX_ENV_VARS)")
    )]
    pub env: Vec<EnvVar>,
    /// The shell for an account whose own shell field is empty (the host's `default_shell`).
    pub default_shell: Option<String>,
}

/// The session's program is running.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Started {
    /// The session process's pid, for limits and cleanup.
    pub pid: u32,
}

/// The session could not start.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StartFailed {
    /// One line: what failed.
    pub reason: String,
}
