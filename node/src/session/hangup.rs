//! Ending what a session left running: SIGHUP to every process of the session, then SIGKILL to
//! whatever is still there after a short grace.
//!
//! Each session's program is started as the leader of a new Unix session (`setsid`: the PTY
//! backend does it for the controlling terminal, exec does it in `pre_exec`), so everything it
//! starts — background jobs in their own process groups included — shares its session id and
//! is found in `/proc` even after the leader has exited. A process that calls `setsid` itself
//! (a daemon) escapes, as it does from sshd.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long hung-up processes get to exit on SIGHUP before SIGKILL.
pub const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// How long processes sent SIGKILL may take to be gone.
const KILL_SETTLE: Duration = Duration::from_secs(1);
/// How often the grace period checks whether everything has exited.
const POLL: Duration = Duration::from_millis(50);

/// The live (non-zombie) processes whose session id is `sid`, from `/proc`.
pub fn session_members(sid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (parse_session(&stat)? == (sid.as_raw(), true)).then(|| Pid::from_raw(pid))
        })
        .collect()
}

/// From a `/proc/PID/stat` line: the session id, and whether the process is alive (not a
/// zombie). The command name may contain spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_session(stat: &str) -> Option<(i32, bool)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((session, state != "Z" && state != "X"))
}

/// Hangs up session `sid`: SIGHUP to every member, then, after up to `grace`, SIGKILL to any
/// that remain. Returns how many had to be killed.
pub async fn hang_up(sid: Pid, grace: Duration) -> usize {
    signal_all(sid, Signal::SIGHUP);
    // SIGHUP does not wake a stopped job; SIGCONT lets it act on the hangup, as the kernel does.
    signal_all(sid, Signal::SIGCONT);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if session_members(sid).is_empty() {
            return 0;
        }
        tokio::time::sleep(POLL).await;
    }
    let killed = signal_all(sid, Signal::SIGKILL);
    // SIGKILL is delivered asynchronously; give the kernel a moment to finish them.
    let deadline = tokio::time::Instant::now() + KILL_SETTLE;
    while !session_members(sid).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    killed
}

/// Sends `signal` to every member of `sid`; returns how many there were.
fn signal_all(sid: Pid, signal: Signal) -> usize {
    let members = session_members(sid);
    for pid in &members {
        // It may have exited since the scan; that is the outcome we want anyway.
        let _ = kill(*pid, signal);
    }
    members.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn parses_the_session_past_a_command_name_with_parens_and_spaces() {
        let stat = "4242 (a) b (c) S 1 4242 4240 34816 4242 4194560 0";
        assert_eq!(parse_session(stat), Some((4240, true)));
        let zombie = "77 (sh) Z 1 77 77 0 -1";
        assert_eq!(parse_session(zombie), Some((77, false)));
        assert_eq!(parse_session("garbage"), None);
    }

    /// A session leader that starts a background job which ignores SIGHUP, then waits: the
    /// hangup must find both (the job in its own process group) and kill the stubborn one.
    #[tokio::test]
    async fn a_hangup_ends_every_process_of_the_session_even_one_ignoring_sighup() {
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", "set -m; (trap '' HUP; exec sleep 300) & sleep 300"]);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().unwrap();
        let sid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        // Wait (bounded) until both sleeps run: the job's trap is set before its exec.
        let sleeps = || {
            session_members(sid)
                .iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "sleep")
                })
                .count()
        };
        for _ in 0..500 {
            if sleeps() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = session_members(sid);
        assert!(before.len() >= 3, "leader, job and sleep: {before:?}");
        let killed = hang_up(sid, Duration::from_millis(300)).await;
        let _ = child.wait();
        assert!(killed >= 1, "the job ignoring SIGHUP needed SIGKILL");
        assert!(session_members(sid).is_empty());
        for pid in before {
            assert!(
                kill(pid, None).is_err() || is_zombie(pid),
                "{pid} still runs"
            );
        }
    }

    fn is_zombie(pid: Pid) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_session(&s))
            .is_some_and(|(_, alive)| !alive)
    }
}
