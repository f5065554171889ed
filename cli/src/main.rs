//! `mesh`: the single binary. Thin by design: it parses the command line, calls the libraries,
//! and maps outcomes to exit codes.
//!
//! Exit codes (DESIGN.md): `shell`, `exec` and `proxy` pass the remote exit code through and use
//! 255 for mesh's own failures, usage errors included, as ssh does, so scripts can tell "the
//! command failed" from "mesh failed". Every other command exits 1 on failure and 2 on a usage
//! error. A command whose issue is still open exits 2 with one line saying so.

mod args;
mod exit;

use std::process::ExitCode;

use args::{Cli, Command, CoordinatorCommand, NodeCommand};
use exit::Failure;

fn main() -> ExitCode {
    let cli = match args::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return exit::usage_error(&e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Demo { .. } => Err(not_built("demo", 5)),
        Command::Coordinator(CoordinatorCommand::Init { .. }) => {
            Err(not_built("coordinator init", 5))
        }
        Command::Coordinator(CoordinatorCommand::Serve { .. }) => {
            Err(not_built("coordinator serve", 5))
        }
        Command::Coordinator(CoordinatorCommand::Grant { .. }) => {
            Err(not_built("coordinator grant", 5))
        }
        Command::Node(NodeCommand::Join(_)) => Err(not_built("node join", 5)),
        Command::Node(NodeCommand::Run) => Err(not_built("node run", 4)),
        Command::Login(_) => Err(not_built("login", 5)),
        Command::Hosts(_) => Err(not_built("hosts", 5)),
        Command::Shell(_) => Err(not_built("shell", 4)),
        Command::Exec(_) => Err(not_built("exec", 4)),
        Command::Path { .. } => Err(not_built("path", 8)),
        Command::Invite(_) => Err(not_built("invite", 5)),
        Command::Host(_) => Err(not_built("host set", 5)),
        Command::User(_) => Err(not_built("user", 5)),
        Command::Role(_) => Err(not_built("role", 5)),
        Command::Netsim(_) => Err(not_built("netsim", 7)),
        Command::Revoke(_) => Err(not_built("revoke", 6)),
        Command::Audit(_) => Err(not_built("audit", 6)),
        Command::Relay { .. } => Err(not_built("relay", 8)),
        Command::Cp(_) => Err(Failure::NotBuilt {
            command: "cp",
            issue: None,
        }),
        Command::Forward { .. } => Err(Failure::NotBuilt {
            command: "forward",
            issue: None,
        }),
        Command::Proxy { .. } => Err(Failure::NotBuilt {
            command: "proxy",
            issue: None,
        }),
    }
}

fn not_built(command: &'static str, issue: u32) -> Failure {
    Failure::NotBuilt {
        command,
        issue: Some(issue),
    }
}
