//! `mesh`: the single binary. Thin by design: it parses the command line, calls the libraries,
//! and maps outcomes to exit codes.
//!
//! Exit codes (DESIGN.md): `shell`, `exec` and `proxy` pass the remote exit code through and use
//! 255 for mesh's own failures, usage errors included, as ssh does, so scripts can tell "the
//! command failed" from "mesh failed". Every other command exits 1 on failure and 2 on a usage
//! error. A command whose issue is still open exits 2 with one line saying so.

mod args;
mod exit;
mod remote;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use args::{Cli, Command, CoordinatorCommand, NodeCommand};
use exit::Failure;
use mesh_node::session::host::SessionProgram;

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
    let home = cli.home.clone();
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
        Command::Node(NodeCommand::Run) => node_run(&home_dir(home)?),
        Command::Login(_) => Err(not_built("login", 5)),
        Command::Hosts(_) => Err(not_built("hosts", 5)),
        Command::Shell(args) => {
            logging("warn");
            let request = remote::Request {
                target: args.target,
                command: None,
                force_pty: false,
            };
            remote::run(&ssh_home(home)?, request).map(ExitCode::from)
        }
        Command::Exec(args) => {
            logging("warn");
            let request = remote::Request {
                target: args.target,
                // As ssh: the words are joined with spaces for the remote shell's -c.
                command: Some(args.command.join(" ")),
                force_pty: args.tty,
            };
            remote::run(&ssh_home(home)?, request).map(ExitCode::from)
        }
        Command::SessionProcess => session_process(),
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

/// The home directory: `--home`, else `$MESH_HOME` (both through clap), else `~/.mesh`.
fn home_dir(home: Option<PathBuf>) -> Result<PathBuf, Failure> {
    home.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".mesh")))
        .ok_or_else(|| Failure::Failed("no home directory: pass --home DIR".into()))
}

/// [`home_dir`] for `shell` and `exec`, whose failures exit 255.
fn ssh_home(home: Option<PathBuf>) -> Result<PathBuf, Failure> {
    home_dir(home).map_err(|f| match f {
        Failure::Failed(message) => Failure::Session(message),
        other => other,
    })
}

/// Logs to stderr; `RUST_LOG` overrides `default`.
fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `mesh node run`: the host agent, in the foreground, until SIGTERM or SIGINT.
fn node_run(home: &std::path::Path) -> Result<ExitCode, Failure> {
    logging("info");
    let exe = std::env::current_exe().map_err(|e| {
        Failure::Failed(format!(
            "cannot find the mesh binary to start sessions: {e}"
        ))
    })?;
    let program = SessionProgram {
        program: exe,
        args: vec!["session-process".into()],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut term, mut int) = (
                signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
                signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
            );
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            };
            mesh_node::agent::run(home, program, shutdown)
                .await
                .map_err(|e| e.to_string())
        })
        .map_err(Failure::Failed)?;
    Ok(ExitCode::SUCCESS)
}

/// The hidden per-session process the agent starts (DESIGN.md, "Sessions").
fn session_process() -> Result<ExitCode, Failure> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Failure::Failed(
            "session-process is started by `mesh node run` with a socket as its stdin; \
             it is not for interactive use"
                .into(),
        ));
    }
    logging("warn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(mesh_node::session::process::serve_session_on_stdin())
        .map_err(|e| Failure::Failed(format!("session process: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

fn not_built(command: &'static str, issue: u32) -> Failure {
    Failure::NotBuilt {
        command,
        issue: Some(issue),
    }
}
