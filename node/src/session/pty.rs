//! Running a shell or command in a real PTY (`portable-pty`): the initial window size, resize,
//! signals to the session's process group, and the exit status (code or signal number).
//!
//! Like [`exec`](super::exec), this runs inside the per-session process after the privilege
//! drop, so the PTY it opens belongs to the session's user. PTY reads and writes are blocking,
//! so each has its own thread joined to the async side by a small bounded channel: a slow
//! client stops the reader thread, which stops reading the PTY, which stops the program.

use std::io::{Read, Write};

use mesh_proto::messages::session::{
    Data, Eof, ExitStatus, MAX_DATA_CHUNK, PtyRequest, SessionMessage, Stream, WindowSize,
};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::account::Account;
use super::hangup::{HANGUP_GRACE, hang_up};
use crate::error::Error;
use crate::framed::{FrameReader, write_frame};

/// Size of each read from the PTY.
const READ_CHUNK: usize = 16 * 1024;
const _: () = assert!(READ_CHUNK <= MAX_DATA_CHUNK);
/// Chunks in flight between a PTY thread and the async side.
const CHANNEL_CHUNKS: usize = 4;

fn pty_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Stream(format!("{what}: {e}"))
}

fn pty_size(size: WindowSize) -> PtySize {
    PtySize {
        rows: size.rows,
        cols: size.cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// Runs `command` (or, with `None`, the account's login shell) in a PTY of `pty.size`.
pub async fn run_in_pty<R, W>(
    account: &Account,
    command: Option<&str>,
    env: Vec<(String, String)>,
    pty: &PtyRequest,
    input: &mut R,
    output: &mut W,
) -> Result<ExitStatus, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let pair = native_pty_system()
        .openpty(pty_size(pty.size))
        .map_err(|e| pty_error("cannot open a PTY", e))?;
    let mut builder = CommandBuilder::new(account.shell_or_default());
    match command {
        Some(command) => builder.args(["-c", command]),
        // -l makes it a login shell, as sshd's "-bash" argv[0] does.
        None => builder.arg("-l"),
    }
    builder.env_clear();
    for (name, value) in env {
        builder.env(name, value);
    }
    builder.cwd(account.working_dir());
    let child = pair
        .slave
        .spawn_command(builder)
        .map_err(|e| pty_error("cannot start the shell", e))?;
    // Only the child may hold the slave, or the master never sees EOF when it exits.
    drop(pair.slave);
    let pid = child
        .process_id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| Error::Stream("the shell has no pid".into()))?;
    let master = pair.master;
    let mut reader = master
        .try_clone_reader()
        .map_err(|e| pty_error("cannot read the PTY", e))?;
    let mut writer = master
        .take_writer()
        .map_err(|e| pty_error("cannot write the PTY", e))?;

    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        // Ends at EOF, or EIO once every holder of the slave has exited.
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    std::thread::spawn(move || {
        while let Some(bytes) = in_rx.blocking_recv() {
            if writer
                .write_all(&bytes)
                .and_then(|()| writer.flush())
                .is_err()
            {
                break;
            }
        }
    });

    let result = serve_pty(pid, &*master, out_rx, in_tx, input, output).await;
    // Whatever ended the session, nothing it started outlives it.
    hang_up(pid, HANGUP_GRACE).await;
    drop(child);
    result
}

/// Carries the terminal's bytes until the shell has exited and the terminal has no writer
/// left, then reports how the shell ended.
async fn serve_pty<R, W>(
    pid: Pid,
    master: &dyn MasterPty,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    in_tx: mpsc::Sender<Vec<u8>>,
    input: &mut R,
    output: &mut W,
) -> Result<ExitStatus, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Reap it ourselves: portable-pty reports signals by name only, we need the number.
    let mut exited = tokio::task::spawn_blocking(move || waitpid(pid, None));
    let mut status = None;
    let mut input_open = true;
    let mut input = FrameReader::new(input);
    loop {
        tokio::select! {
            biased;
            chunk = out_rx.recv() => match chunk {
                Some(bytes) => {
                    let data = Data { stream: Stream::Stdout, bytes };
                    write_frame(output, &SessionMessage::Data(data)).await?;
                }
                None => break,
            },
            waited = &mut exited, if status.is_none() => {
                status = Some(exit_status(waited)?);
                // A background job may still hold the terminal open; the shell's exit ends
                // the session, so hang it up and let the output drain to EOF.
                tokio::spawn(hang_up(pid, HANGUP_GRACE));
            }
            frame = input.next::<SessionMessage>(), if input_open => match frame? {
                Some(SessionMessage::Data(Data { stream: Stream::Stdin, bytes })) => {
                    // The writer thread is gone only if the PTY is; output will end too.
                    let _ = in_tx.send(bytes).await;
                }
                Some(SessionMessage::Resize(size)) => {
                    master.resize(pty_size(size)).map_err(|e| pty_error("cannot resize", e))?;
                }
                Some(SessionMessage::Signal(signal)) => {
                    if let Ok(signal) = Signal::try_from(signal.number) {
                        // The shell leads its own session and process group (setsid).
                        let _ = kill(Pid::from_raw(-pid.as_raw()), signal);
                    }
                }
                // A terminal has no separate EOF: ^D travels as a byte.
                Some(SessionMessage::Eof(Eof { stream: Stream::Stdin })) => {}
                Some(other) => {
                    return Err(Error::Stream(format!("unexpected client message {other:?}")));
                }
                // The agent closed the session (client gone, or a limit): hang up, as a
                // terminal whose line dropped; the shell's exit and the output's end follow.
                None => {
                    input_open = false;
                    tokio::spawn(hang_up(pid, HANGUP_GRACE));
                }
            },
        }
    }
    write_frame(
        output,
        &SessionMessage::Eof(Eof {
            stream: Stream::Stdout,
        }),
    )
    .await?;
    let status = match status {
        Some(status) => status,
        None => exit_status(exited.await)?,
    };
    write_frame(output, &SessionMessage::Exited(status)).await?;
    Ok(status)
}

/// How the shell ended, from the blocking `waitpid`'s result.
fn exit_status(
    waited: Result<nix::Result<WaitStatus>, tokio::task::JoinError>,
) -> Result<ExitStatus, Error> {
    let waited = waited
        .map_err(|e| pty_error("waiting for the shell", e))?
        .map_err(|e| pty_error("waiting for the shell", e))?;
    match waited {
        WaitStatus::Exited(_, code) => Ok(ExitStatus::Code(code)),
        WaitStatus::Signaled(_, signal, _) => Ok(ExitStatus::Signal(signal as i32)),
        other => Err(Error::Stream(format!("unexpected wait status {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::codec::encode_frame;
    use mesh_proto::messages::session::Signal as SignalMessage;

    use crate::session::account::tests::current_user as me;

    fn request(cols: u16, rows: u16) -> PtyRequest {
        PtyRequest {
            term: "xterm".into(),
            size: WindowSize { cols, rows },
        }
    }

    /// Runs `command` in a PTY, feeding `frames` (then holding input open), and returns the
    /// terminal output and the status.
    async fn run(
        command: &str,
        pty: PtyRequest,
        frames: &[SessionMessage],
    ) -> (String, ExitStatus) {
        let (mut client_out, mut host_in) = tokio::io::duplex(1 << 16);
        let (mut host_out, mut client_in) = tokio::io::duplex(1 << 20);
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend(encode_frame(f).unwrap());
        }
        tokio::io::AsyncWriteExt::write_all(&mut client_out, &bytes)
            .await
            .unwrap();
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let status = run_in_pty(&me(), Some(command), env, &pty, &mut host_in, &mut host_out)
            .await
            .unwrap();
        drop(host_out);
        let mut text = Vec::new();
        while let Some(frame) = crate::framed::read_frame::<SessionMessage, _>(&mut client_in)
            .await
            .unwrap()
        {
            if let SessionMessage::Data(Data { bytes, .. }) = frame {
                text.extend(bytes);
            }
        }
        drop(client_out);
        (String::from_utf8_lossy(&text).into_owned(), status)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_initial_size_is_the_requested_one_and_the_exit_code_comes_back() {
        let (text, status) = run("stty size; exit 7", request(100, 30), &[]).await;
        assert!(text.contains("30 100"), "{text:?}");
        assert_eq!(status, ExitStatus::Code(7));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_resize_reaches_the_terminal() {
        let frames = [
            SessionMessage::Resize(WindowSize {
                cols: 132,
                rows: 43,
            }),
            SessionMessage::Data(Data {
                stream: Stream::Stdin,
                bytes: b"go\n".to_vec(),
            }),
        ];
        // The shell waits for a line, sent after the resize, then reports the size.
        let (text, status) = run("read line; stty size", request(80, 24), &frames).await;
        assert!(text.contains("43 132"), "{text:?}");
        assert_eq!(status, ExitStatus::Code(0));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_signal_reaches_the_process_group_and_comes_back_as_its_number() {
        let frames = [SessionMessage::Signal(SignalMessage { number: 9 })];
        let (_, status) = run("exec sleep 30", request(80, 24), &frames).await;
        assert_eq!(status, ExitStatus::Signal(9));
    }
}
