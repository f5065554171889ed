//! Exit codes and the one-line failure messages behind them.

use std::ffi::OsString;
use std::process::ExitCode;

/// The exit code of mesh's own failures in `shell`, `exec` and `proxy` (ssh's convention).
pub(crate) const SSH_LIKE_FAILURE: u8 = 255;
/// The exit code of a usage error (and of a command not built yet) elsewhere.
pub(crate) const USAGE: u8 = 2;
/// Commands that pass a remote exit code through, and so keep 255 for their own failures.
const SSH_LIKE_COMMANDS: [&str; 3] = ["shell", "exec", "proxy"];

/// Why a command did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command is part of the contract but its issue is still open.
    NotBuilt {
        command: &'static str,
        issue: Option<u32>,
    },
    /// `shell`/`exec` could not connect, were refused, or lost the session: exit 255.
    Session(String),
    /// Any other command failed: exit 1.
    Failed(String),
    /// A command's arguments make no sense together: exit 2.
    Usage(String),
}

impl Failure {
    /// Prints the failure as one line on stderr and returns the exit code for it.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Self::NotBuilt { command, issue } => {
                let tracked = issue.map_or_else(
                    || "no issue is open for it yet".to_owned(),
                    |n| format!("it arrives with issue #{n}"),
                );
                eprintln!("mesh {command}: not built yet ({tracked})");
                // Exit 2 for every command, ssh-like or not: nothing was attempted.
                ExitCode::from(USAGE)
            }
            Self::Session(message) => {
                eprintln!("mesh: {message}");
                ExitCode::from(SSH_LIKE_FAILURE)
            }
            Self::Failed(message) => {
                eprintln!("mesh: {message}");
                ExitCode::FAILURE
            }
            Self::Usage(message) => {
                eprintln!("mesh: {message}");
                ExitCode::from(USAGE)
            }
        }
    }
}

/// Prints clap's message and returns the exit code: 0 for `--help`/`--version`, 255 for a usage
/// error in an ssh-like command, 2 otherwise.
pub(crate) fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if !error.use_stderr() {
        return ExitCode::SUCCESS;
    }
    let ssh_like = subcommand_name(std::env::args_os().skip(1))
        .is_some_and(|name| SSH_LIKE_COMMANDS.contains(&name.as_str()));
    ExitCode::from(if ssh_like { SSH_LIKE_FAILURE } else { USAGE })
}

/// The first argument that is not an option (nor `--home`'s value): the subcommand's name.
fn subcommand_name(args: impl Iterator<Item = OsString>) -> Option<String> {
    let mut args = args.map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        if arg == "--home" {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(args: &[&str]) -> Option<String> {
        subcommand_name(args.iter().map(OsString::from))
    }

    #[test]
    fn finds_the_subcommand_past_global_options() {
        assert_eq!(name(&["exec", "h"]), Some("exec".into()));
        assert_eq!(name(&["--home", "/x", "shell"]), Some("shell".into()));
        assert_eq!(name(&["--home=/x", "proxy", "h"]), Some("proxy".into()));
        assert_eq!(name(&["--bogus"]), None);
    }
}
