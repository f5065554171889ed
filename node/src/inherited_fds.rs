//! Keeping inherited file descriptors out of the programs a host starts.
//!
//! Whatever started the agent (an init system, a shell, a test harness) may have left it
//! descriptors without close-on-exec: a root-owned log opened for writing, a socket. Unix
//! passes those through every `exec`, so without care they would reach the session process
//! and from it the user's command, which could then write where only root may. The standard
//! library closes only what it opened itself; this module marks everything else above
//! stderr close-on-exec.
//!
//! [`close_on_exec_above_stdio`] is async-signal-safe (one or a few raw syscalls, no
//! allocation), so it may run in a `pre_exec` hook between `fork` and `exec`, where it is
//! used: descriptors the standard library still needs until `exec` (its error-reporting
//! pipe) stay open until then and are closed by the kernel at `exec`.

use std::io;

/// `CLOSE_RANGE_CLOEXEC` from `<linux/close_range.h>` (Linux 5.11); the libc crate does not
/// export it for Linux.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// The highest descriptor the fallback loop visits when the limit is unknown or huge; a
/// process of ours never holds more, and checking a million would slow every spawn.
const FALLBACK_LAST_FD: libc::c_int = 65_535;

/// Marks every descriptor from 3 up close-on-exec. Async-signal-safe.
///
/// Uses `close_range(2)` with `CLOSE_RANGE_CLOEXEC`; on kernels without it, sets the flag
/// with `fcntl` on each descriptor up to the soft `RLIMIT_NOFILE` (capped).
pub fn close_on_exec_above_stdio() -> io::Result<()> {
    // SAFETY: a raw syscall with integer arguments; it touches no memory of ours.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked == 0 {
        return Ok(());
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`, which lives on this stack frame.
    let last = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        libc::c_int::try_from(limit.rlim_cur.saturating_sub(1))
            .unwrap_or(FALLBACK_LAST_FD)
            .min(FALLBACK_LAST_FD)
    } else {
        FALLBACK_LAST_FD
    };
    for fd in 3..=last {
        // SAFETY: fcntl on a descriptor number that may or may not be open; EBADF is the
        // only outcome for a closed one, and it changes nothing else.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn is_close_on_exec(fd: libc::c_int) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "descriptor {fd} should be open");
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn an_inheritable_descriptor_becomes_close_on_exec_and_stdio_is_left_alone() {
        // dup() makes a descriptor without close-on-exec, as an inherited one would be.
        let file = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup of a descriptor we own; the result is owned by `inheritable` below.
        let raw = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(raw > 2);
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let inheritable = unsafe { OwnedFd::from_raw_fd(raw) };
        assert!(!is_close_on_exec(inheritable.as_raw_fd()));
        let stderr_before = is_close_on_exec(2);

        close_on_exec_above_stdio().unwrap();

        assert!(is_close_on_exec(inheritable.as_raw_fd()));
        assert_eq!(is_close_on_exec(2), stderr_before);
    }
}
