//! The per-session process: a re-exec of `mesh` that holds one session, so the agent can
//! restart without killing shells and no PTY or child lives inside the agent.
//!
//! The agent ([`spawn_session_process`]) starts it with one end of a Unix socket pair as its
//! stdin and sends [`Start`]. The session process ([`serve_session`]) looks the account up,
//! drops privileges completely (when it runs as root), builds the clean login environment,
//! starts the program in a PTY or on pipes, answers [`Started`], and from then on speaks the
//! session protocol on the socket until the program exits.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::Stdio;

use mesh_proto::messages::agent::{AgentMessage, Start, StartFailed, Started};
use nix::unistd::Uid;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use super::account::{Account, login_environment};
use super::exec::run_exec;
use super::privilege::become_account;
use super::pty::run_in_pty;
use crate::error::Error;
use crate::framed::{read_frame, write_frame};
use crate::inherited_fds::close_on_exec_above_stdio;

fn socket_error(what: &'static str, source: std::io::Error) -> Error {
    Error::Io {
        what,
        path: "session socket".into(),
        source,
    }
}

/// Agent side: starts `program args...` (the `mesh` binary's session-process entry) with its
/// stdin on a new socket, sends `start`, and waits for the answer. On success returns the child
/// and the socket, which now carries session frames.
pub async fn spawn_session_process(
    program: &Path,
    args: &[&str],
    start: Start,
) -> Result<(Child, UnixStream), Error> {
    let (ours, theirs) = StdUnixStream::pair().map_err(|e| socket_error("cannot create", e))?;
    let mut command = Command::new(program);
    // The session process starts from nothing of the agent's environment but its log
    // settings; what the session's program gets is built from the account, not inherited.
    command.env_clear();
    for name in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    // SAFETY: close_range/fcntl are async-signal-safe and touch no memory of the parent.
    // Descriptors the agent inherited stay out of the session process (and so out of the
    // user's programs); its socket goes in as stdin.
    unsafe {
        command.pre_exec(close_on_exec_above_stdio);
    }
    let child = command
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Never SIGKILL a session process from here: it could not hang its processes up. When
        // the agent lets go (or dies), the socket closes and the session process ends the
        // session itself; the host kills it only if that takes too long.
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| Error::Io {
            what: "cannot start the session process",
            path: program.to_owned(),
            source: e,
        })?;
    ours.set_nonblocking(true)
        .map_err(|e| socket_error("cannot configure", e))?;
    let mut socket = UnixStream::from_std(ours).map_err(|e| socket_error("cannot register", e))?;
    write_frame(&mut socket, &AgentMessage::Start(start)).await?;
    match read_frame::<AgentMessage, _>(&mut socket).await? {
        Some(AgentMessage::Started(_)) => Ok((child, socket)),
        Some(AgentMessage::StartFailed(failed)) => Err(Error::SessionStart(failed.reason)),
        Some(other) => Err(Error::Stream(format!(
            "unexpected {other:?} from session process"
        ))),
        None => Err(Error::SessionStart(
            "the session process exited before starting".into(),
        )),
    }
}

/// Session-process side: serves one session on `socket` (its stdin), as described above.
pub async fn serve_session(socket: UnixStream) -> Result<(), Error> {
    let (mut input, mut output) = socket.into_split();
    let start = match read_frame::<AgentMessage, _>(&mut input).await? {
        Some(AgentMessage::Start(start)) => start,
        other => return Err(Error::Stream(format!("expected Start, got {other:?}"))),
    };
    let account = match prepare(&start) {
        Ok(account) => account,
        Err(reason) => {
            write_frame(
                &mut output,
                &AgentMessage::StartFailed(StartFailed { reason }),
            )
            .await?;
            return Ok(());
        }
    };
    let term = start.pty.as_ref().map(|p| p.term.as_str());
    let env = login_environment(&account, term, &start.env);
    let started = Started {
        pid: std::process::id(),
    };
    write_frame(&mut output, &AgentMessage::Started(started)).await?;
    let command = start.command.as_deref();
    match (&start.pty, command) {
        (Some(pty), command) => {
            run_in_pty(&account, command, env, pty, &mut input, &mut output).await?;
        }
        (None, Some(command)) => {
            run_exec(&account, command, env, &mut input, &mut output).await?;
        }
        (None, None) => {
            // A shell without a terminal, as `ssh -T host`: the shell reads commands on stdin.
            run_exec(&account, "exec \"$SHELL\" -l", env, &mut input, &mut output).await?;
        }
    }
    Ok(())
}

/// Finds the account and becomes it. Errors are one line for the client.
fn prepare(start: &Start) -> Result<Account, String> {
    let mut account = Account::lookup(&start.login)
        .ok_or_else(|| format!("no account {:?} here", start.login))?;
    if let (true, Some(shell)) = (account.shell.as_os_str().is_empty(), &start.default_shell) {
        account.shell = shell.into();
    }
    if Uid::effective().is_root() {
        become_account(&account).map_err(|e| e.to_string())?;
    } else if Uid::effective().as_raw() != account.uid {
        return Err(format!(
            "the agent is not root, so it can start sessions only as its own user, not {}",
            account.name
        ));
    }
    Ok(account)
}

/// Session-process entry: serves the session whose socket is this process's stdin.
pub async fn serve_session_on_stdin() -> Result<(), Error> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| socket_error("cannot take", e))?;
    let socket = StdUnixStream::from(stdin);
    socket
        .set_nonblocking(true)
        .map_err(|e| socket_error("cannot configure", e))?;
    serve_session(UnixStream::from_std(socket).map_err(|e| socket_error("cannot register", e))?)
        .await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_proto::messages::session::{Data, ExitStatus, SessionMessage};

    /// Set in the child: the test binary then acts as the session process.
    const CHILD: &str = "MESH_TEST_SESSION_PROCESS";
    const CHILD_TEST: &str = "session::process::tests::session_process_child";

    #[test]
    fn session_process_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(serve_session_on_stdin()).unwrap();
    }

    /// Starts the test binary as a session process (through `env`, so that this
    /// multi-threaded process's own environment is never mutated) and runs `command` as `login`.
    pub(crate) fn test_session_program() -> crate::session::host::SessionProgram {
        let exe = std::env::current_exe().unwrap();
        crate::session::host::SessionProgram {
            program: "/usr/bin/env".into(),
            args: vec![
                format!("{CHILD}=1"),
                exe.to_str().unwrap().to_owned(),
                "--exact".into(),
                CHILD_TEST.into(),
                "--nocapture".into(),
            ],
        }
    }

    async fn session(login: &str, command: &str) -> Result<(String, ExitStatus), Error> {
        let program = test_session_program();
        let args: Vec<&str> = program.args.iter().map(String::as_str).collect();
        let start = Start {
            login: login.into(),
            command: Some(command.into()),
            pty: None,
            env: vec![],
            default_shell: None,
        };
        let (mut child, mut socket) = spawn_session_process(&program.program, &args, start).await?;
        let mut out = Vec::new();
        let mut status = None;
        while let Some(frame) = read_frame::<SessionMessage, _>(&mut socket).await? {
            match frame {
                SessionMessage::Data(Data { bytes, .. }) => out.extend(bytes),
                SessionMessage::Exited(s) => status = Some(s),
                _ => {}
            }
        }
        assert!(
            child.wait().await.unwrap().success(),
            "the session process exits cleanly"
        );
        Ok((
            String::from_utf8_lossy(&out).into_owned(),
            status.expect("Exited was sent"),
        ))
    }

    #[tokio::test]
    async fn a_session_process_runs_the_command_and_reports_its_exit() {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        let (out, status) = session(&me, "echo hi; exit 4").await.unwrap();
        assert_eq!(out, "hi\n");
        assert_eq!(status, ExitStatus::Code(4));
    }

    #[tokio::test]
    async fn the_accounts_own_shell_runs_so_nologin_accounts_get_nothing() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root (CI runs as root)");
            return;
        }
        // nobody's shell is nologin: the command must not run, whatever it is.
        let (out, status) = session("nobody", "echo ran").await.unwrap();
        assert_eq!(status, ExitStatus::Code(1));
        assert!(!out.contains("ran"), "{out}");
        assert!(out.contains("not available"), "{out}");
    }

    #[tokio::test]
    async fn an_unknown_account_fails_to_start_with_one_line() {
        let err = session("no-such-user-here", "true").await.unwrap_err();
        assert!(
            matches!(err, Error::SessionStart(ref r) if r.contains("no account")),
            "{err}"
        );
    }
}
