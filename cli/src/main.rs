//! `mesh`: the single binary. Thin by design: it parses the command line, calls the libraries,
//! and maps outcomes to exit codes.
//!
//! Exit codes (DESIGN.md): `shell`, `exec` and `proxy` pass the remote exit code through and use
//! 255 for mesh's own failures, usage errors included, as ssh does, so scripts can tell "the
//! command failed" from "mesh failed". Every other command exits 1 on failure and 2 on a usage
//! error. A command whose issue is still open exits 2 with one line saying so.

mod args;
mod audit;
mod control;
mod demo;
mod exit;
mod netsim;
mod path;
mod relay;
mod remote;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use args::{
    Cli, Command, CoordinatorCommand, HostCommand, InviteCommand, NetsimCommand, NodeCommand,
    RelayCommand, RevokeCommand, RoleCommand, UserCommand,
};
use exit::Failure;
use mesh_node::session::host::SessionProgram;
use mesh_proto::messages::control::{
    ControlMessage, InviteTarget, RevokeRequest, RevokeWhat, RoleRemove, UserAdd, UserRemove,
    UserSetRole,
};

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
        Command::Demo { exec } => {
            logging("warn");
            demo::run(exec).map(ExitCode::from)
        }
        Command::Coordinator(CoordinatorCommand::Init { addr }) => {
            control::coordinator_init(&home_dir(home)?, addr)
        }
        Command::Coordinator(CoordinatorCommand::Serve { listen }) => {
            logging("info");
            control::coordinator_serve(&home_dir(home)?, listen)
        }
        Command::Coordinator(CoordinatorCommand::Grant {
            user,
            host,
            login,
            temp: _,
            ttl,
        }) => control::coordinator_grant(&home_dir(home)?, &user, &host, login.as_deref(), &ttl),
        Command::Node(NodeCommand::Join(enroll)) => control::enroll_home(
            &home_dir(home)?,
            &enroll.token,
            enroll.coordinator,
            control::EnrollAs::Host,
        ),
        Command::Node(NodeCommand::Run) => node_run(&home_dir(home)?),
        Command::Login(enroll) => control::enroll_home(
            &home_dir(home)?,
            &enroll.token,
            enroll.coordinator,
            control::EnrollAs::User,
        ),
        Command::Hosts(json) => control::hosts(&home_dir(home)?, json.json),
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
        Command::Path { host, json } => {
            logging("warn");
            path::path(&home_dir(home)?, &host, json.json)
        }
        Command::Invite(InviteCommand::Host { name, labels }) => {
            let labels = control::labels(&labels)?;
            control::invite(&home_dir(home)?, InviteTarget::Host { name, labels })
        }
        Command::Invite(InviteCommand::User { name, role }) => {
            let role = role.unwrap_or_else(|| "viewer".into());
            control::invite(&home_dir(home)?, InviteTarget::User { name, role })
        }
        Command::Invite(InviteCommand::Relay { name }) => {
            control::invite(&home_dir(home)?, InviteTarget::Relay { name })
        }
        Command::Invite(InviteCommand::List(json)) => {
            control::invite_list(&home_dir(home)?, json.json)
        }
        Command::Invite(InviteCommand::Revoke { id }) => {
            control::invite_revoke(&home_dir(home)?, id)
        }
        Command::Host(HostCommand::Set { host, settings }) => {
            control::host_set(&home_dir(home)?, host, &settings)
        }
        Command::User(UserCommand::List(json)) => control::user_list(&home_dir(home)?, json.json),
        Command::User(UserCommand::Add { name, role }) => {
            let role = role.unwrap_or_else(|| "viewer".into());
            let add = ControlMessage::UserAdd(UserAdd { name, role });
            control::admin_change(&home_dir(home)?, add)
        }
        Command::User(UserCommand::Remove { name }) => {
            let remove = ControlMessage::UserRemove(UserRemove { name });
            control::admin_change(&home_dir(home)?, remove)
        }
        Command::User(UserCommand::SetRole { name, role }) => {
            let set = ControlMessage::UserSetRole(UserSetRole { name, role });
            control::admin_change(&home_dir(home)?, set)
        }
        Command::Role(RoleCommand::List(json)) => control::role_list(&home_dir(home)?, json.json),
        Command::Role(RoleCommand::Add {
            name,
            permissions,
            hosts,
            logins,
        }) => control::role_add(&home_dir(home)?, name, permissions, &hosts, logins),
        Command::Role(RoleCommand::Remove { name }) => {
            let remove = ControlMessage::RoleRemove(RoleRemove { name });
            control::admin_change(&home_dir(home)?, remove)
        }
        Command::Netsim(NetsimCommand::Run {
            scenario,
            seed,
            json,
        }) => {
            netsim::logging();
            netsim::run(&scenario, seed, json.json)
        }
        Command::Netsim(NetsimCommand::Matrix { seeds, json }) => {
            netsim::logging();
            netsim::matrix(seeds, json.json)
        }
        Command::Netsim(NetsimCommand::Population { pairs, seed, json }) => {
            netsim::logging();
            netsim::population(pairs, seed, json.json)
        }
        Command::Revoke(revoke) => {
            let what = match revoke {
                RevokeCommand::Grant { id } => RevokeWhat::Grant(
                    id.parse()
                        .map_err(|e| Failure::Usage(format!("{id:?} is not a grant id: {e}")))?,
                ),
                RevokeCommand::Device { node_id } => {
                    RevokeWhat::Device(node_id.parse().map_err(|e| {
                        Failure::Usage(format!("{node_id:?} is not a node id: {e}"))
                    })?)
                }
                RevokeCommand::User { name } => RevokeWhat::User(name),
            };
            let request = ControlMessage::RevokeRequest(RevokeRequest { what });
            control::admin_change(&home_dir(home)?, request)
        }
        Command::Audit(args) => audit::run(&home_dir(home)?, args),
        Command::Relay {
            command: Some(RelayCommand::Join(enroll)),
            ..
        } => control::enroll_home(
            &home_dir(home)?,
            &enroll.token,
            enroll.coordinator,
            control::EnrollAs::Relay,
        ),
        Command::Relay {
            command: None,
            listen,
        } => {
            logging("info");
            relay::run(&home_dir(home)?, listen)
        }
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
    // Colors only for a person at a terminal: a pipe or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
        .block_on(mesh_node::agent::run(
            home,
            program,
            Arc::new(mesh_proto::SystemClock),
            shutdown_signal(),
        ))
        .map_err(|e| Failure::Failed(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// Completes at the first SIGTERM or SIGINT (never, if the handlers cannot be installed:
/// then the default actions end the process anyway).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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
