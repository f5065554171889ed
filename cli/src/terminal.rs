//! The local terminal during a session: raw mode that is always restored, and its size.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use mesh_proto::messages::session::WindowSize;
use nix::sys::termios::{self, SetArg, Termios};

/// Raw mode on stdin, restored when dropped — on a normal end, an error, or a panic's
/// unwinding. Signals that end the client are caught by the caller, which drops this first.
pub(crate) struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode (as ssh does for a PTY session).
    pub(crate) fn enable() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing useful to do if the terminal is gone.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Whether stdin is a terminal.
pub(crate) fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The size of the terminal on stdout (else stdin), or 80×24.
pub(crate) fn window_size() -> WindowSize {
    let size = terminal_size::terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdin()));
    match size {
        Some((terminal_size::Width(cols), terminal_size::Height(rows))) => {
            WindowSize { cols, rows }
        }
        None => WindowSize { cols: 80, rows: 24 },
    }
}
