//! The command-line contract (DESIGN.md, "The command line"), as clap derive types.
//!
//! Names here are relied on by tests, docs and users' scripts: change them only with the
//! contract.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::ffi::OsString;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Parses the command line. `mesh --help` ends with a synopsis of every command, rendered from
/// these definitions so that it cannot drift from them.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    let synopsis = synopsis(&mut command);
    let matches = command.after_help(synopsis).try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// One line per leaf command, every option spelled out:
/// `mesh shell <HOST> [--login USER] [--temp] [--direct ADDR] [--grant FILE]`.
fn synopsis(root: &mut clap::Command) -> String {
    fn leaves(command: &clap::Command, path: &str, out: &mut Vec<String>) {
        let path = format!("{path} {}", command.get_name());
        let args: Vec<String> = command.get_arguments().filter_map(usage_of).collect();
        // A command with subcommands is a leaf too when it also runs on its own with
        // arguments (`mesh relay [--listen ADDR]` beside `mesh relay join`).
        if !command.has_subcommands() || !args.is_empty() {
            out.push(format!("{path} {}", args.join(" ")).trim_end().to_owned());
        }
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            leaves(sub, &path, out);
        }
    }
    root.build();
    let mut lines = Vec::new();
    for sub in root
        .get_subcommands()
        .filter(|s| s.get_name() != "help" && !s.is_hide_set())
    {
        leaves(sub, "mesh", &mut lines);
    }
    format!("Synopsis (global: --home DIR):\n  {}", lines.join("\n  "))
}

/// How one argument reads in the synopsis; `None` for help, version and global options.
fn usage_of(arg: &clap::Arg) -> Option<String> {
    if arg.is_global_set() || matches!(arg.get_id().as_str(), "help" | "version") {
        return None;
    }
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1)
        || matches!(arg.get_action(), clap::ArgAction::Append);
    let repeat = if many { "..." } else { "" };
    let text = if arg.is_positional() {
        let dashes = if arg.is_last_set() { "-- " } else { "" };
        format!("{dashes}{value}{repeat}")
    } else {
        let name = arg.get_long().map_or_else(
            || format!("-{}", arg.get_short().unwrap_or('?')),
            |long| format!("--{long}"),
        );
        if takes_value {
            format!("{name} {value}")
        } else {
            name
        }
    };
    let text = if arg.is_required_set() {
        text
    } else {
        format!("[{text}]")
    };
    // Positional lists show the dots on the value; repeatable options after the brackets.
    Some(if arg.is_positional() || repeat.is_empty() {
        text
    } else {
        format!("{text}{repeat}")
    })
}

/// mesh: remote shells on edge hosts over direct, NAT-punched QUIC, with signed, short-lived
/// grants and an end-to-end encrypted relay as fallback.
#[derive(Debug, Parser)]
#[command(
    name = "mesh",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// State directory of this identity (keys, config.toml, caches). Several identities can
    /// live side by side on one machine, each with its own home.
    #[arg(long, global = true, env = "MESH_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start a coordinator and a host on loopback in a temporary home, then open a shell.
    Demo {
        /// Run this command on the demo host instead of an interactive shell.
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
    },
    /// Run or administer the coordinator (identity, permissions, rendezvous).
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    /// Enroll and run this machine as a host.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Enroll this device as a user's client.
    Login(Enroll),
    /// List hosts: name, online, path (direct/relay), labels, settings.
    Hosts(JsonFlag),
    /// Open an interactive shell on a host.
    Shell(ShellArgs),
    /// Run a command on a host; exit code, stdout and stderr come back as with ssh.
    Exec(ExecArgs),
    /// Show how this device reaches a host and why: candidates, NAT type, chosen path.
    Path {
        /// The host's name.
        host: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Create, list or withdraw one-time enrollment tokens (admins).
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Change a host's settings (remote-shell=on|off, temp-users=on|off).
    #[command(subcommand)]
    Host(HostCommand),
    /// Administer users (admins).
    #[command(subcommand)]
    User(UserCommand),
    /// Administer roles: permissions × host selectors × allowed logins (admins).
    #[command(subcommand)]
    Role(RoleCommand),
    /// Simulate networks of NATs running the real mesh code.
    #[command(subcommand)]
    Netsim(NetsimCommand),
    /// Revoke a grant, a device or a user; live sessions under it end within seconds.
    #[command(subcommand)]
    Revoke(RevokeCommand),
    /// Show audit events: sessions started and ended, refusals.
    Audit(AuditArgs),
    /// Copy files to or from a host (HOST:PATH on either side).
    Cp(CpArgs),
    /// Forward a local port through a host.
    Forward {
        /// The host to forward through.
        host: String,
        /// Listen on local LPORT; connect to THOST:TPORT from the host.
        #[arg(value_name = "LPORT:THOST:TPORT")]
        spec: String,
    },
    /// Connect stdin/stdout to a port on a host (for ssh's ProxyCommand).
    Proxy {
        /// The host.
        host: String,
        /// The port on the host (default 22).
        port: Option<u16>,
    },
    /// Internal: the per-session process the host agent starts; its stdin is the agent's
    /// socket. Not for interactive use.
    #[command(hide = true)]
    SessionProcess,
    /// Run a standalone relay (enroll it first with `mesh relay join`).
    #[command(args_conflicts_with_subcommands = true)]
    Relay {
        /// Enroll this machine as a relay.
        #[command(subcommand)]
        command: Option<RelayCommand>,
        /// Address to listen on (UDP and TCP; default 0.0.0.0:7402).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Enroll this machine as a standalone relay (a token from `mesh invite relay`).
    Join(Enroll),
}

/// `--json` for listing commands.
#[derive(Debug, Args)]
pub(crate) struct JsonFlag {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A token to enroll with.
#[derive(Debug, Args)]
pub(crate) struct Enroll {
    /// The enrollment token, or `-` to read it from stdin (keeps it out of argv and history).
    #[arg(value_name = "TOKEN|-")]
    pub(crate) token: String,
    /// Reach the coordinator at this address instead of the one in the token.
    #[arg(long, value_name = "ADDR")]
    pub(crate) coordinator: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CoordinatorCommand {
    /// Create the CA key and the database; print the first admin's token alone on stdout.
    Init {
        /// Address (HOST:PORT) clients and hosts reach the coordinator at; goes into every token.
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
    },
    /// Serve the control protocol.
    Serve {
        /// Address to listen on (default: the init address).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Mint an offline grant file with the CA key (admins, on the coordinator's machine).
    Grant {
        /// The user the grant is for.
        #[arg(long, value_name = "U")]
        user: String,
        /// The host the grant is for.
        #[arg(long, value_name = "H")]
        host: String,
        /// The Unix login it allows.
        #[arg(long, value_name = "L", required_unless_present = "temp")]
        login: Option<String>,
        /// A temporary root-capable account instead of a login (the host must allow
        /// temporary users, and the user's role must hold the temp-users permission).
        #[arg(long, conflicts_with = "login")]
        temp: bool,
        /// How long it is valid (e.g. 8h, 2d; at most 7d).
        #[arg(long, value_name = "DUR")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Enroll this machine as a host; its name and labels come from the invite.
    Join(Enroll),
    /// Run the host agent in the foreground (logs to stderr; see the systemd unit in the docs).
    Run,
}

/// How to reach a host and as whom; shared by `shell` and `exec`.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The host's name.
    pub(crate) host: String,
    /// Unix login on the host (default: your role's first allowed login).
    #[arg(long, short = 'l', value_name = "USER")]
    pub(crate) login: Option<String>,
    /// Ask for a temporary root-capable account instead of an existing login.
    #[arg(long, conflicts_with = "login")]
    pub(crate) temp: bool,
    /// Connect straight to this address (no coordinator needed with --grant).
    #[arg(long, value_name = "ADDR")]
    pub(crate) direct: Option<SocketAddr>,
    /// Use this grant file instead of asking the coordinator.
    #[arg(long, value_name = "FILE")]
    pub(crate) grant: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    #[command(flatten)]
    pub(crate) target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Run the command in a PTY (for programs that need a terminal).
    #[arg(short = 't')]
    pub(crate) tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum InviteCommand {
    /// A token that enrolls one host under a name and labels chosen here.
    Host {
        /// The host's name.
        #[arg(long, value_name = "N")]
        name: String,
        /// A label for the host (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// A token that enrolls one device of a user.
    User {
        /// The user's name.
        name: String,
        /// The user's role (default: viewer).
        #[arg(long, value_name = "R")]
        role: Option<String>,
    },
    /// A token that enrolls one standalone relay under a name chosen here.
    Relay {
        /// The relay's name.
        #[arg(long, value_name = "N")]
        name: String,
    },
    /// List pending tokens.
    List(JsonFlag),
    /// Withdraw a pending token.
    Revoke {
        /// The invite's id, as `mesh invite list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HostCommand {
    /// Set a host's settings, e.g. `mesh host set edge-01 remote-shell=off`.
    Set {
        /// The host's name.
        host: String,
        /// remote-shell=on|off, temp-users=on|off.
        #[arg(required = true, value_name = "KEY=on|off")]
        settings: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user.
    Add {
        /// The user's name.
        name: String,
        /// The user's role.
        #[arg(long, value_name = "R")]
        role: Option<String>,
    },
    /// List users.
    List(JsonFlag),
    /// Remove a user and their devices, revoking their grants (open sessions end).
    Remove {
        /// The user's name.
        name: String,
    },
    /// Change a user's role.
    SetRole {
        /// The user's name.
        name: String,
        /// The new role.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoleCommand {
    /// Define a role.
    Add {
        /// The role's name.
        name: String,
        /// A permission (repeatable): shell, exec, offline, host-settings, temp-users,
        /// issue-credentials, admin.
        #[arg(long = "permission", value_name = "P")]
        permissions: Vec<String>,
        /// Hosts the role applies to: a name, a label k=v, or * for all (repeatable).
        #[arg(long = "hosts", value_name = "SELECTOR")]
        hosts: Vec<String>,
        /// A Unix login the role allows (repeatable; $user is the user's own name, * any;
        /// none means no login).
        #[arg(long = "login", value_name = "L")]
        logins: Vec<String>,
    },
    /// List roles.
    List(JsonFlag),
    /// Remove a role.
    Remove {
        /// The role's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NetsimCommand {
    /// Run a scenario file.
    Run {
        /// The scenario (TOML).
        scenario: PathBuf,
        /// Seed for every random choice; the same seed replays the same run.
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run every pair of NAT types over seeds 1 to N and print the table (exit 1 if a pair
    /// failed).
    Matrix {
        /// Run each pair once with every seed from 1 to N.
        #[arg(long, value_name = "N", default_value_t = mesh_netsim::matrix::DEFAULT_SEEDS,
              value_parser = clap::value_parser!(u64).range(1..))]
        seeds: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run a population of pairs whose sites are drawn from a fixed mix of NAT types and
    /// report how many went direct (exit 1 if a pair failed).
    Population {
        /// How many pairs to draw and run.
        #[arg(long, value_name = "N", default_value_t = mesh_netsim::population::DEFAULT_PAIRS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        pairs: usize,
        /// Seed of the draws; the same seed gives the same population and runs.
        #[arg(long, value_name = "S", default_value_t = mesh_netsim::population::DEFAULT_SEED)]
        seed: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RevokeCommand {
    /// Revoke one grant.
    Grant {
        /// The grant's id.
        id: String,
    },
    /// Revoke a device key: it gets no new grants and its live sessions end.
    Device {
        /// The device's node id.
        node_id: String,
    },
    /// Revoke every device and grant of a user.
    User {
        /// The user's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only events on this host.
    #[arg(long, value_name = "H")]
    pub(crate) host: Option<String>,
    /// Only events of this user.
    #[arg(long, value_name = "U")]
    pub(crate) user: Option<String>,
    /// Only events after this time (RFC 3339, or a duration such as 1h meaning "ago").
    #[arg(long, value_name = "T")]
    pub(crate) since: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonFlag,
}

#[derive(Debug, Args)]
pub(crate) struct CpArgs {
    /// Copy directories recursively.
    #[arg(short = 'r')]
    pub(crate) recursive: bool,
    /// Sources then the destination; HOST:PATH names a path on a host.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub(crate) paths: Vec<String>,
}
