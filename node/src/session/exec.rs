//! Running one command without a PTY, as `ssh host cmd` does: the command runs under the
//! account's shell with `-c`, stdin is streamed in with EOF, stdout and stderr come back
//! separately, and the exit status (code or signal) ends the session.
//!
//! This runs inside the per-session process, after [`become_account`](super::privilege): it
//! spawns as whoever it already is. Output is read in chunks and each chunk is written out
//! before the next is read, so a slow reader slows the command instead of growing memory.
//!
//! The command leads a Unix session of its own. When it ends, or when the agent closes the
//! session (the client vanished, or a limit), everything left in that session is hung up.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use mesh_proto::messages::session::{
    Data, Eof, ExitStatus, MAX_DATA_CHUNK, SessionMessage, Stream,
};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::account::Account;
use super::hangup::{HANGUP_GRACE, hang_up};
use crate::error::Error;
use crate::framed::{read_frame, write_frame};
use crate::inherited_fds::close_on_exec_above_stdio;

/// Size of each read from the command's output.
const READ_CHUNK: usize = 32 * 1024;
const _: () = assert!(READ_CHUNK <= MAX_DATA_CHUNK);

fn io_error(what: &'static str, source: std::io::Error) -> Error {
    Error::Io {
        what,
        path: "session command".into(),
        source,
    }
}

/// Runs `command` as described above, reading client frames from `input` and writing host
/// frames to `output`; returns how the command ended (also sent as `Exited`).
pub async fn run_exec<R, W>(
    account: &Account,
    command: &str,
    env: Vec<(String, String)>,
    input: &mut R,
    output: &mut W,
) -> Result<ExitStatus, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut builder = Command::new(account.shell_or_default());
    builder
        .arg("-c")
        .arg(command)
        .env_clear()
        .envs(env)
        .current_dir(account.working_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setsid and close_range/fcntl are async-signal-safe and touch no memory of the
    // parent. A session of its own lets the hangup find everything the command starts (see
    // `hangup`); descriptors this process inherited must not reach the user's command.
    unsafe {
        builder.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            close_on_exec_above_stdio()
        });
    }
    let mut child = builder.spawn().map_err(|e| io_error("cannot start", e))?;
    let sid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| Error::Stream("the command has no pid".into()))?;
    let result = serve_exec(&mut child, sid, input, output).await;
    // Whatever ended the session, nothing it started outlives it.
    hang_up(sid, HANGUP_GRACE).await;
    result
}

/// Carries one running command's streams until its output ends, then reports its status.
async fn serve_exec<R, W>(
    child: &mut Child,
    sid: Pid,
    input: &mut R,
    output: &mut W,
) -> Result<ExitStatus, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Error::Stream("child pipes missing".into()));
    };
    // Input and output run concurrently: writing stdin must never wait on a loop that is
    // also the only reader of stdout, or `cat` with a full pipe deadlocks both.
    let output_side = async {
        let (mut out_buf, mut err_buf) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                biased;
                read = stdout.read(&mut out_buf), if out_open => {
                    let n = read.map_err(|e| io_error("cannot read stdout of", e))?;
                    out_open = forward(output, Stream::Stdout, &out_buf[..n]).await?;
                }
                read = stderr.read(&mut err_buf), if err_open => {
                    let n = read.map_err(|e| io_error("cannot read stderr of", e))?;
                    err_open = forward(output, Stream::Stderr, &err_buf[..n]).await?;
                }
            }
        }
        Ok::<_, Error>(())
    };
    let input_side = async {
        let mut stdin = Some(stdin);
        loop {
            match read_frame::<SessionMessage, _>(input).await? {
                Some(SessionMessage::Data(Data {
                    stream: Stream::Stdin,
                    bytes,
                })) => {
                    if let Some(pipe) = stdin.as_mut() {
                        // A command that closed its stdin just stops receiving.
                        if pipe.write_all(&bytes).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(SessionMessage::Eof(Eof {
                    stream: Stream::Stdin,
                })) => stdin = None,
                Some(SessionMessage::Signal(signal)) => {
                    if let Ok(signal) = nix::sys::signal::Signal::try_from(signal.number) {
                        // Best effort, as ssh's signal request: the command may be gone.
                        let _ = nix::sys::signal::kill(sid, signal);
                    }
                }
                Some(other) => {
                    return Err(Error::Stream(format!(
                        "unexpected client message {other:?}"
                    )));
                }
                // The agent closed the session (client gone, or a limit): hang up now; the
                // output side then ends as the processes do.
                None => {
                    tokio::spawn(hang_up(sid, HANGUP_GRACE));
                    return Ok(());
                }
            }
        }
    };
    {
        tokio::pin!(output_side, input_side);
        let mut input_done = false;
        loop {
            tokio::select! {
                biased;
                done = &mut output_side => break done?,
                done = &mut input_side, if !input_done => {
                    input_done = true;
                    done?;
                }
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| io_error("cannot wait for", e))?;
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(-1),
    };
    write_frame(output, &SessionMessage::Exited(status)).await?;
    Ok(status)
}

/// Sends `bytes` on `stream`, or its EOF when `bytes` is empty; returns whether it stays open.
async fn forward<W: AsyncWrite + Unpin>(
    output: &mut W,
    stream: Stream,
    bytes: &[u8],
) -> Result<bool, Error> {
    if bytes.is_empty() {
        write_frame(output, &SessionMessage::Eof(Eof { stream })).await?;
        return Ok(false);
    }
    let data = Data {
        stream,
        bytes: bytes.to_vec(),
    };
    write_frame(output, &SessionMessage::Data(data)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::messages::session::Signal;

    use crate::session::account::tests::current_user as me;

    /// Runs `command` with `stdin` frames and returns (stdout, stderr, status, frames seen).
    async fn run(command: &str, stdin: Vec<SessionMessage>) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let mut input = Vec::new();
        for m in &stdin {
            input.extend(mesh_proto::codec::encode_frame(m).unwrap());
        }
        let (mut host_out, mut client_in) = tokio::io::duplex(1 << 20);
        let account = me();
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        // The input stays open until the command ends: a closed input means the client is gone.
        let (mut client_out, mut host_in) = tokio::io::duplex(1 << 20);
        client_out.write_all(&input).await.unwrap();
        let status = run_exec(&account, command, env, &mut host_in, &mut host_out)
            .await
            .unwrap();
        drop((host_out, client_out));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut exited = None;
        while let Some(frame) = read_frame::<SessionMessage, _>(&mut client_in)
            .await
            .unwrap()
        {
            match frame {
                SessionMessage::Data(Data {
                    stream: Stream::Stdout,
                    bytes,
                }) => out.extend(bytes),
                SessionMessage::Data(Data {
                    stream: Stream::Stderr,
                    bytes,
                }) => err.extend(bytes),
                SessionMessage::Exited(s) => exited = Some(s),
                _ => {}
            }
        }
        assert_eq!(exited, Some(status), "Exited is sent last");
        (out, err, status)
    }

    #[tokio::test]
    async fn stdout_stderr_and_exit_code_stay_apart() {
        let (out, err, status) = run("echo out; echo err >&2; exit 3", vec![]).await;
        assert_eq!(out, b"out\n");
        assert_eq!(err, b"err\n");
        assert_eq!(status, ExitStatus::Code(3));
    }

    #[tokio::test]
    async fn stdin_is_streamed_with_eof_and_bytes_survive() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let mut frames: Vec<SessionMessage> = payload
            .chunks(10_000)
            .map(|c| {
                SessionMessage::Data(Data {
                    stream: Stream::Stdin,
                    bytes: c.to_vec(),
                })
            })
            .collect();
        frames.push(SessionMessage::Eof(Eof {
            stream: Stream::Stdin,
        }));
        let (out, _, status) = run("cat", frames).await;
        assert_eq!(status, ExitStatus::Code(0));
        assert_eq!(out, payload);
    }

    #[tokio::test]
    async fn the_environment_is_exactly_what_was_given() {
        let (out, _, _) = run("env | sort", vec![]).await;
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("LD_"), "{text}");
        assert!(text.contains("PATH=/usr/bin:/bin"), "{text}");
    }

    #[tokio::test]
    async fn a_death_by_signal_is_reported_as_the_signal() {
        let frames = vec![
            SessionMessage::Signal(Signal { number: 15 }),
            SessionMessage::Eof(Eof {
                stream: Stream::Stdin,
            }),
        ];
        // `exec` so the signal reaches sleep itself, not a shell waiting on it.
        let (_, _, status) = run("exec sleep 30", frames).await;
        assert_eq!(status, ExitStatus::Signal(15));
    }
}
