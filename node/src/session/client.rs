//! The client side of a session: open it with a grant, then carry the user's input and the
//! session's output until it ends, and turn how it ended into ssh's exit code.
//!
//! The terminal itself (raw mode, window size, signals) belongs to the `mesh` binary, which
//! feeds [`ClientEvent`]s and stdin chunks in; this module knows only the session protocol, so
//! it is tested without a terminal.

use mesh_proto::messages::session::EnvVar;
use mesh_proto::messages::session::{
    Closed, Data, Eof, ExitStatus, LoginRequest, Open, PtyRequest, Refusal, Refused,
    SessionMessage, Signal, Stream, WindowSize,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use crate::error::Error;
use crate::framed::{FrameReader, write_frame};

/// What to open.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The signed grant.
    pub grant: Vec<u8>,
    /// The account: a named one, or a temporary one the host makes.
    pub login: LoginRequest,
    /// The command for the remote shell's `-c`; `None` for a login shell.
    pub command: Option<String>,
    /// A PTY, if wanted.
    pub pty: Option<PtyRequest>,
    /// Environment offered (the host keeps only the locale).
    pub env: Vec<EnvVar>,
}

/// Why a session did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The host refused it; nothing ran.
    #[error("the host refused the session: {0}")]
    Refused(String),
    /// The stream or connection failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// A session the host accepted.
#[derive(Debug)]
pub struct OpenSession<S, R> {
    /// The host's id for it.
    pub session_id: u64,
    send: S,
    recv: FrameReader<R>,
}

/// Sends `request` on a fresh session stream and waits for the host's answer.
pub async fn open_session<S, R>(
    mut send: S,
    recv: R,
    request: SessionRequest,
) -> Result<OpenSession<S, R>, OpenError>
where
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let open = Open {
        grant: request.grant,
        login: request.login,
        command: request.command,
        pty: request.pty,
        env: request.env,
    };
    write_frame(&mut send, &SessionMessage::Open(open)).await?;
    let mut recv = FrameReader::new(recv);
    match recv.next::<SessionMessage>().await? {
        Some(SessionMessage::Opened(opened)) => Ok(OpenSession {
            session_id: opened.session_id,
            send,
            recv,
        }),
        Some(SessionMessage::Refused(Refused { reason })) => {
            Err(OpenError::Refused(match reason {
                Refusal::Grant(rejection) => rejection.to_string(),
                Refusal::Host(reason) => reason,
            }))
        }
        Some(other) => Err(Error::Stream(format!("expected Opened, got {other:?}")).into()),
        None => Err(Error::Stream("the host closed the session without answering".into()).into()),
    }
}

/// Something besides stdin that the client passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// The local terminal changed size.
    Resize(WindowSize),
    /// Deliver this signal to the remote session.
    Signal(i32),
}

/// How a session ended, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// The remote program exited.
    Exited(ExitStatus),
    /// The host ended the session (a limit) before the program reported an exit.
    Closed(String),
    /// The user disconnected with the `~.` escape.
    Disconnected,
    /// The stream ended without an exit status: the host or the path went away.
    Lost,
}

/// ssh's exit code convention: mesh's own failures are 255.
pub const MESH_FAILURE_EXIT: u8 = 255;

impl SessionOutcome {
    /// The exit code the client should end with: the remote code, 128 + N for a remote death by
    /// signal N, and 255 when mesh itself ended the session.
    pub fn exit_code(&self) -> u8 {
        match self {
            // Like a shell, only the low 8 bits of a code survive.
            Self::Exited(ExitStatus::Code(code)) => (*code & 0xff) as u8,
            Self::Exited(ExitStatus::Signal(n)) => 128u8.saturating_add((*n & 0x7f) as u8),
            Self::Closed(_) | Self::Disconnected | Self::Lost => MESH_FAILURE_EXIT,
        }
    }
}

/// Input to a running session: stdin chunks (a closed channel is stdin's EOF) and events.
#[derive(Debug)]
pub struct SessionInput {
    /// Chunks read from stdin.
    pub stdin: mpsc::Receiver<Vec<u8>>,
    /// Resizes and signals.
    pub events: mpsc::Receiver<ClientEvent>,
    /// For a terminal session: scan stdin for ssh's `~.` escape.
    pub escapes: bool,
}

impl<S, R> OpenSession<S, R>
where
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    /// Runs the session to its end: input goes up, output comes down to `stdout` and
    /// `stderr`. The two directions run apart, each with its own backpressure: output is
    /// read from the host only as fast as `stdout` takes it.
    pub async fn run<O, E>(
        self,
        input: SessionInput,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<SessionOutcome, Error>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let Self { send, mut recv, .. } = self;
        let SessionInput {
            stdin: mut stdin_rx,
            events: mut events_rx,
            escapes,
        } = input;
        let mut send = send;
        let output_done = Notify::new();
        let disconnect = Notify::new();

        let upstream = async {
            let mut escape = EscapeScanner::default();
            let mut stdin_open = true;
            let mut events_open = true;
            loop {
                tokio::select! {
                    biased;
                    () = output_done.notified() => break,
                    event = events_rx.recv(), if events_open => {
                        let message = match event {
                            Some(ClientEvent::Resize(size)) => SessionMessage::Resize(size),
                            Some(ClientEvent::Signal(number)) => {
                                SessionMessage::Signal(Signal { number })
                            }
                            None => {
                                // No more events; stdin and the session's end still matter.
                                events_open = false;
                                continue;
                            }
                        };
                        if write_frame(&mut send, &message).await.is_err() {
                            break;
                        }
                    }
                    chunk = stdin_rx.recv(), if stdin_open => {
                        let Some(bytes) = chunk else {
                            stdin_open = false;
                            let eof = SessionMessage::Eof(Eof { stream: Stream::Stdin });
                            if write_frame(&mut send, &eof).await.is_err() {
                                break;
                            }
                            continue;
                        };
                        let (bytes, escaped) = if escapes {
                            escape.scan(&bytes)
                        } else {
                            (bytes, false)
                        };
                        if !bytes.is_empty() {
                            let data = SessionMessage::Data(Data { stream: Stream::Stdin, bytes });
                            if write_frame(&mut send, &data).await.is_err() {
                                break;
                            }
                        }
                        if escaped {
                            disconnect.notify_one();
                            break;
                        }
                    }
                }
            }
            send
        };

        let downstream = async {
            let mut status = None;
            let mut closed = None;
            let outcome = loop {
                let frame = tokio::select! {
                    biased;
                    () = disconnect.notified() => break Ok(SessionOutcome::Disconnected),
                    frame = recv.next::<SessionMessage>() => frame,
                };
                match frame {
                    Ok(Some(SessionMessage::Data(Data { stream, bytes }))) => {
                        let out: &mut (dyn AsyncWrite + Unpin) = match stream {
                            Stream::Stderr => stderr,
                            _ => stdout,
                        };
                        // The local reader is gone (a closed pipe): nothing more to show.
                        if out.write_all(&bytes).await.is_err() || out.flush().await.is_err() {
                            break Ok(SessionOutcome::Lost);
                        }
                    }
                    Ok(Some(SessionMessage::Eof(_))) => {}
                    Ok(Some(SessionMessage::Exited(exit))) => status = Some(exit),
                    Ok(Some(SessionMessage::Closed(Closed { reason }))) => closed = Some(reason),
                    Ok(Some(other)) => {
                        break Err(Error::Stream(format!("unexpected host message {other:?}")));
                    }
                    Ok(None) => {
                        break Ok(match (status, closed) {
                            (_, Some(reason)) => SessionOutcome::Closed(reason),
                            (Some(exit), None) => SessionOutcome::Exited(exit),
                            (None, None) => SessionOutcome::Lost,
                        });
                    }
                    Err(_) if status.is_some() => {
                        break Ok(SessionOutcome::Exited(
                            status.unwrap_or(ExitStatus::Code(0)),
                        ));
                    }
                    Err(e) => break Err(e),
                }
            };
            output_done.notify_one();
            outcome
        };

        let (mut send, outcome) = tokio::join!(upstream, downstream);
        // Done with the stream either way: a clean finish tells the host we saw the end.
        let _ = send.shutdown().await;
        outcome
    }
}

/// ssh's escape sequences on a terminal: after a newline (or at the start), `~.` disconnects
/// and `~~` sends one `~`; a `~` followed by anything else is sent as typed.
#[derive(Debug, Clone)]
pub struct EscapeScanner {
    at_line_start: bool,
    pending_tilde: bool,
}

impl Default for EscapeScanner {
    fn default() -> Self {
        Self {
            at_line_start: true,
            pending_tilde: false,
        }
    }
}

impl EscapeScanner {
    /// Filters one chunk of typed bytes: returns what to send and whether `~.` was typed (the
    /// bytes before it are still sent).
    pub fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + 1);
        for &byte in input {
            if self.pending_tilde {
                self.pending_tilde = false;
                match byte {
                    b'.' => return (out, true),
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if byte == b'~' && self.at_line_start {
                self.pending_tilde = true;
                continue;
            }
            out.push(byte);
            self.at_line_start = byte == b'\r' || byte == b'\n';
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_after_a_newline_disconnects_and_nothing_else_does() {
        let mut scanner = EscapeScanner::default();
        assert_eq!(scanner.scan(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(scanner.scan(b"~."), (Vec::new(), true));

        let mut scanner = EscapeScanner::default();
        // Mid-line tildes are plain text.
        assert_eq!(scanner.scan(b"a~.b"), (b"a~.b".to_vec(), false));
        // `~~` sends one tilde; `~x` sends both.
        assert_eq!(scanner.scan(b"\r~~.\r~x"), (b"\r~.\r~x".to_vec(), false));
        // Split across reads, and at the very start.
        let mut scanner = EscapeScanner::default();
        assert_eq!(scanner.scan(b"~"), (Vec::new(), false));
        assert_eq!(scanner.scan(b"."), (Vec::new(), true));
        let mut scanner = EscapeScanner::default();
        assert_eq!(scanner.scan(b"echo\n~"), (b"echo\n".to_vec(), false));
        assert_eq!(scanner.scan(b"q"), (b"~q".to_vec(), false));
    }

    /// A host that answers Opened, echoes stdin until its EOF, then reports exit 3.
    async fn fake_host(stream: tokio::io::DuplexStream) {
        let (read, mut write) = tokio::io::split(stream);
        let mut read = FrameReader::new(read);
        let Some(SessionMessage::Open(_)) = read.next::<SessionMessage>().await.unwrap() else {
            panic!("expected Open");
        };
        let opened =
            SessionMessage::Opened(mesh_proto::messages::session::Opened { session_id: 1 });
        write_frame(&mut write, &opened).await.unwrap();
        while let Some(frame) = read.next::<SessionMessage>().await.unwrap() {
            match frame {
                SessionMessage::Data(Data { bytes, .. }) => {
                    let data = Data {
                        stream: Stream::Stdout,
                        bytes,
                    };
                    write_frame(&mut write, &SessionMessage::Data(data))
                        .await
                        .unwrap();
                }
                SessionMessage::Eof(_) => break,
                _ => {}
            }
        }
        let exited = SessionMessage::Exited(ExitStatus::Code(3));
        write_frame(&mut write, &exited).await.unwrap();
        write.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_session_ends_when_the_host_does_even_with_no_event_source() {
        let (client, host) = tokio::io::duplex(1 << 16);
        tokio::spawn(fake_host(host));
        let (read, write) = tokio::io::split(client);
        let request = SessionRequest {
            grant: vec![1],
            login: LoginRequest::Named("me".into()),
            command: Some("cat".into()),
            pty: None,
            env: vec![],
        };
        let session = open_session(write, read, request).await.unwrap();
        let (stdin_tx, stdin) = mpsc::channel(1);
        let (events_tx, events) = mpsc::channel(1);
        // No terminal, so no resize events: the sender goes at once.
        drop(events_tx);
        stdin_tx.send(b"typed".to_vec()).await.unwrap();
        drop(stdin_tx);
        let input = SessionInput {
            stdin,
            events,
            escapes: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = session.run(input, &mut out, &mut err);
        // A stuck input loop would hang here forever; make it a failure instead.
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .expect("the session ended")
            .unwrap();
        assert_eq!(outcome, SessionOutcome::Exited(ExitStatus::Code(3)));
        assert_eq!(out, b"typed");
    }

    #[test]
    fn exit_codes_follow_ssh() {
        assert_eq!(SessionOutcome::Exited(ExitStatus::Code(7)).exit_code(), 7);
        assert_eq!(
            SessionOutcome::Exited(ExitStatus::Code(256 + 3)).exit_code(),
            3
        );
        assert_eq!(
            SessionOutcome::Exited(ExitStatus::Signal(9)).exit_code(),
            137
        );
        assert_eq!(SessionOutcome::Closed("idle".into()).exit_code(), 255);
        assert_eq!(SessionOutcome::Lost.exit_code(), 255);
    }
}
