//! The errors of `mesh-node`.

use std::io;
use std::path::PathBuf;

/// What went wrong in the peer library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A secret key file can be read by group or others; like OpenSSH, we refuse to use it.
    #[error(
        "permissions {mode:04o} for {} are too open: a secret key must be readable only by its owner; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is not a plain file (a symbolic link, FIFO, device or directory): reading it
    /// could follow an attacker's link or block forever, so it is not used.
    #[error(
        "{} is {kind}, not a regular file: a secret key must be a plain file; replace it with the key file itself",
        path.display()
    )]
    KeyFileNotRegular {
        /// The key file.
        path: PathBuf,
        /// What it is instead ("a symbolic link", "a FIFO", ...).
        kind: &'static str,
    },
    /// A key file belongs to another user than the one running mesh, who could read or replace
    /// it; like OpenSSH, we refuse to use it.
    #[error(
        "{} is owned by uid {owner}, but mesh runs as uid {euid}: a secret key must belong to the user who uses it; run `chown {euid} {}` or run mesh as its owner",
        path.display(),
        path.display()
    )]
    KeyFileWrongOwner {
        /// The key file.
        path: PathBuf,
        /// The uid that owns it.
        owner: u32,
        /// The effective uid reading it.
        euid: u32,
    },
    /// A key file is missing.
    #[error("no key at {}: {hint}", path.display())]
    KeyFileMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// What to do.
        hint: &'static str,
    },
    /// Writing a new key would replace an existing one.
    #[error("{} already exists; refusing to overwrite a key (move it away first)", path.display())]
    KeyFileExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file's content is not what it should be.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: mesh_proto::Error,
    },
    /// TLS could not be set up (a key rustls refuses, for example).
    #[error("TLS setup failed: {0}")]
    Tls(#[source] rustls::Error),
    /// The QUIC endpoint could not be set up or could not start a connection.
    #[error("QUIC: {0}")]
    Quic(String),
    /// A QUIC connection failed or was closed.
    #[error("connection failed: {0}")]
    Connection(#[source] quinn::ConnectionError),
    /// The peer at the address is not the node we meant to reach.
    #[error("the peer presented key {presented}, not the expected {expected}")]
    WrongHostKey {
        /// The key we expected.
        expected: mesh_proto::NodeId,
        /// The key it presented.
        presented: mesh_proto::NodeId,
    },
    /// A peer sent bytes that are not a valid frame of the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[source] mesh_proto::Error),
    /// A configuration file is invalid; nothing was started.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// The agent could not listen on its address.
    #[error(
        "cannot listen on {addr}: {source} (is another agent running? set listen in config.toml)"
    )]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The coordinator (or a local check) refused a request; the text says why.
    #[error("{0}")]
    Refused(String),
    /// A session process could not start the session; nothing runs.
    #[error("session could not start: {0}")]
    SessionStart(String),
    /// A byte stream failed.
    #[error("stream failed: {0}")]
    Stream(String),
    /// An I/O operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}
