//! Scenarios: a network, the mesh on it, timed actions and expectations, in one TOML file
//! (`mesh netsim run FILE`), run in virtual time and reported.
//!
//! ```toml
//! name = "a laptop behind a home NAT runs a command on a public host"
//! duration = "20s"          # virtual time the run lasts
//! coordinator = "hub"       # the host running the coordinator
//! agents = ["edge"]         # hosts running the mesh agent (enrolled at the start)
//!
//! [[nat]]                   # the network: see `topology`
//! name = "home"
//! kind = "port-restricted"
//!
//! [[host]]
//! name = "hub"
//! [[host]]
//! name = "edge"
//! link = { latency = "50ms", loss = 0.01 }
//! [[host]]
//! name = "laptop"
//! behind = "home"
//!
//! [[client]]                # enrolled devices (each a user of its own with this role)
//! host = "laptop"
//! role = "admin"
//!
//! [[action]]
//! at = "1s"
//! do = "exec"               # exec | partition | heal | flush-nat | move | kill-agent |
//!                           # start-agent | kill-coordinator | start-coordinator
//! name = "hello"
//! client = "laptop"
//! host = "edge"
//! command = "cat"
//! stdin_bytes = 100000      # a numbered stream, checked on the way back
//!
//! [[expect]]
//! connection = "hello"
//! outcome = "exit 0"
//! path = "direct"
//! direct_within = "2s"
//! intact = true
//! ```
//!
//! `intact` compares the output with what the command must give back whole: `cat` its stdin,
//! `ticks N S` its N numbered lines, and an interactive shell (`command = ""`) the prompt `$ `
//! before each typed line plus each line's output, when every typed line is one whose output is
//! known (`echo`, `seq N`, `ticks N S`, `sleep S`, `exit`, a blank line). Otherwise any output,
//! or a clean exit, will do. `direct_after_first_byte = true` asks for a session that started
//! on the relay and moved: the path ends direct, and it became direct after the first byte of
//! output arrived. `path_changes_at_most = N` bounds how often the client's chosen path to
//! the host changed (relay → direct counts one, a direct path failing over to the relay
//! another), `path_failures_at_most = N` how often a confirmed direct path went silent under
//! traffic; the report gives both counts for every connection.
//!
//! The same file and seed give the same report, byte for byte: all randomness comes from the
//! seed, time is virtual, and reports hold no keys or random ids.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mesh::{ExecReport, Mesh};
use crate::topology::{HostSpec, NatSpec, Topology};
use crate::world::World;

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub name: String,
    /// Virtual time the run lasts (`"60s"`).
    pub duration: String,
    /// The host running the coordinator.
    pub coordinator: String,
    /// Hosts running the agent.
    #[serde(default)]
    pub agents: Vec<String>,
    /// NAT boxes.
    #[serde(default, rename = "nat")]
    pub nats: Vec<NatSpec>,
    /// Hosts.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// Client devices.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientSpec>,
    /// Timed actions.
    #[serde(default, rename = "action")]
    pub actions: Vec<Action>,
    /// Expectations checked at the end.
    #[serde(default, rename = "expect")]
    pub expectations: Vec<Expectation>,
}

/// A client device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// The host it runs on.
    pub host: String,
    /// Its user's role (`admin`, `operator`, ...).
    #[serde(default = "admin")]
    pub role: String,
}

fn admin() -> String {
    "admin".into()
}

/// One timed action.
#[derive(Clone, Debug, Deserialize)]
pub struct Action {
    /// When, in virtual time from the start (`"2s"`).
    pub at: String,
    /// What.
    #[serde(flatten)]
    pub what: ActionKind,
}

/// What an action does.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum ActionKind {
    /// `mesh exec` from a client to a host.
    Exec {
        /// A name for the connection in the report and expectations.
        name: String,
        /// The client's host.
        client: String,
        /// The target host.
        host: String,
        /// The command (the fake shell knows echo, cat, seq, ticks, sleep, exit); `""` opens
        /// an interactive shell with a terminal, as `mesh shell` does.
        #[serde(default = "default_command")]
        command: String,
        /// Bytes of numbered lines fed to stdin.
        #[serde(default)]
        stdin_bytes: usize,
        /// Text fed to stdin instead (the lines typed into a shell).
        #[serde(default)]
        input: Option<String>,
    },
    /// Takes a host's or a NAT's link down.
    Partition {
        /// A host or NAT name.
        target: String,
    },
    /// Brings it back.
    Heal {
        /// A host or NAT name.
        target: String,
    },
    /// A NAT forgets its mappings.
    FlushNat {
        /// The NAT.
        nat: String,
    },
    /// A host gets a new address on its network.
    Move {
        /// The host.
        host: String,
        /// The new address.
        ip: Ipv4Addr,
    },
    /// The agent on a host dies (SIGKILL).
    KillAgent {
        /// The host.
        host: String,
    },
    /// The agent on a host starts (again).
    StartAgent {
        /// The host.
        host: String,
    },
    /// The coordinator dies (SIGKILL); its store stays, as a database on disk would.
    KillCoordinator,
    /// The coordinator starts again.
    StartCoordinator,
}

fn default_command() -> String {
    "echo hello".into()
}

/// Something that must hold at the end.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The connection (an exec's name).
    pub connection: String,
    /// Its outcome, as reported (`"exit 0"`); a word before a colon matches the whole
    /// (`"lost"` matches `"lost: connection lost"`).
    pub outcome: Option<String>,
    /// Its path (`direct`, `relay`, `failed`).
    pub path: Option<String>,
    /// The path was direct within this long of the exec's start.
    pub direct_within: Option<String>,
    /// Its output equals what was sent (for `cat`), the numbered lines of `ticks`, or what a
    /// shell prints for the typed lines (see `expected_output`); or is present.
    pub intact: Option<bool>,
    /// The path is direct and became so after the first byte of output arrived (the session
    /// started on the relay and moved while it ran).
    pub direct_after_first_byte: Option<bool>,
    /// Its output contains this text.
    pub output_contains: Option<String>,
    /// The client's chosen path to the host changed at most this many times (relay → direct
    /// counts one, and so does a direct path failing over to the relay).
    pub path_changes_at_most: Option<u64>,
    /// A confirmed direct path failed (went silent under traffic) at most this many times.
    pub path_failures_at_most: Option<u64>,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Virtual milliseconds since the start.
    pub t_ms: f64,
    /// What happened.
    pub event: String,
}

/// One connection's summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionReport {
    /// Its name.
    pub name: String,
    /// Client host.
    pub client: String,
    /// Target host.
    pub host: String,
    /// `direct`, `relay` or `failed`.
    pub path: String,
    /// The address the session ran over.
    pub remote_addr: Option<String>,
    /// From the start of the exec to the first output byte.
    pub time_to_first_byte_ms: Option<f64>,
    /// From the start of the exec to a direct path.
    pub time_to_direct_ms: Option<f64>,
    /// quinn's smoothed round-trip time at the end.
    pub rtt_ms: Option<f64>,
    /// Bytes of stdin sent.
    pub bytes_up: u64,
    /// Bytes of output received.
    pub bytes_down: u64,
    /// QUIC bytes the client sent through the relay.
    pub relay_bytes: u64,
    /// How often the client's chosen path to the host changed (relay → direct counts one).
    pub path_changes: u64,
    /// How often a confirmed direct path failed under traffic (and the relay took over).
    pub path_failures: u64,
    /// How it ended.
    pub outcome: String,
    /// Whether the output was what it should be.
    pub intact: bool,
    /// The output itself (for expectations; not in the report).
    #[serde(skip)]
    pub output: Vec<u8>,
}

/// An expectation's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// The expectation, in words.
    pub expected: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub seen: String,
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Virtual time the run lasted.
    pub duration_ms: f64,
    /// What happened, in order.
    pub timeline: Vec<TimelineEntry>,
    /// One summary per exec.
    pub connections: Vec<ConnectionReport>,
    /// The expectations' verdicts.
    pub expectations: Vec<Verdict>,
    /// Datagrams sent, delivered, and dropped by reason.
    pub packets: PacketCounts,
}

/// The world's packet counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PacketCounts {
    /// Sent by sockets.
    pub sent: u64,
    /// Delivered to sockets.
    pub delivered: u64,
    /// Dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

impl Report {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.expectations.iter().all(|v| v.ok)
    }

    /// The readable form: the timeline, one line per connection, the verdicts.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "{} (seed {})", self.scenario, self.seed);
        let _ = writeln!(out, "\ntimeline");
        for entry in &self.timeline {
            let _ = writeln!(out, "  {:>10.3}s  {}", entry.t_ms / 1000.0, entry.event);
        }
        let _ = writeln!(out, "\nconnections");
        for c in &self.connections {
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"));
            let _ = writeln!(
                out,
                "  {}: {} → {}  path {}{}  first byte {}  direct {}  rtt {}  up {} B  down {} B  relayed {} B  path changes {}  failures {}  {}{}",
                c.name,
                c.client,
                c.host,
                c.path,
                c.remote_addr
                    .as_ref()
                    .map_or_else(String::new, |a| format!(" ({a})")),
                ms(c.time_to_first_byte_ms),
                ms(c.time_to_direct_ms),
                ms(c.rtt_ms),
                c.bytes_up,
                c.bytes_down,
                c.relay_bytes,
                c.path_changes,
                c.path_failures,
                c.outcome,
                if c.intact { "" } else { "  NOT INTACT" },
            );
        }
        let _ = writeln!(
            out,
            "\npackets: {} sent, {} delivered, dropped {:?}",
            self.packets.sent, self.packets.delivered, self.packets.dropped
        );
        if !self.expectations.is_empty() {
            let _ = writeln!(out, "\nexpectations");
            for v in &self.expectations {
                let mark = if v.ok { "ok  " } else { "FAIL" };
                let _ = writeln!(out, "  {mark} {} (seen: {})", v.expected, v.seen);
            }
        }
        out
    }
}

/// The output a command must give back whole, when it is known: `cat` returns its stdin,
/// `ticks N S` prints N numbered lines, an interactive shell (`""`) what [`shell_output`]
/// says; empty when any output will do.
fn expected_output(command: &str, stdin: &[u8]) -> Vec<u8> {
    if command.is_empty() {
        return shell_output(stdin).unwrap_or_default();
    }
    match command.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["cat"] => stdin.to_vec(),
        ["ticks", n, _] => n
            .parse::<usize>()
            .map_or_else(|_| Vec::new(), |n| numbered_stream(n.min(999_999) * 7)),
        _ => Vec::new(),
    }
}

/// What the fake shell's interactive mode prints for these typed lines: `$ ` before reading
/// each line (lines end at `\n` or `\r`, as it reads them; what follows the last one is a line
/// too), then the line's output, up to `exit` or the end of the input (one more prompt). `None`
/// when some line's output is not known exactly (anything but `echo`, `seq N`, `ticks N S`,
/// `sleep S`, `exit` and blank lines) or a line is longer than the shell reads at once.
fn shell_output(typed: &[u8]) -> Option<Vec<u8>> {
    const PROMPT: &[u8] = b"$ ";
    // The fake shell's longest line (`node::session::fake_shell`).
    const MAX_LINE: usize = 4096;
    let mut out = Vec::new();
    let mut rest = typed;
    loop {
        out.extend_from_slice(PROMPT);
        if rest.is_empty() {
            return Some(out);
        }
        let end = rest.iter().position(|b| *b == b'\n' || *b == b'\r');
        let line = &rest[..end.unwrap_or(rest.len())];
        if line.len() > MAX_LINE {
            return None;
        }
        rest = end.map_or(&[][..], |end| &rest[end + 1..]);
        let line = std::str::from_utf8(line).ok()?;
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [] | ["sleep", _] => {}
            ["exit", ..] => return Some(out),
            ["echo", words @ ..] => {
                out.extend_from_slice(format!("{}\n", words.join(" ")).as_bytes());
            }
            ["seq", n] => {
                // Past a million lines, any output will do rather than a huge expectation.
                let n = n.parse::<u64>().ok().filter(|n| *n <= 1_000_000)?;
                for i in 1..=n {
                    out.extend_from_slice(format!("{i}\n").as_bytes());
                }
            }
            ["ticks", n, _] => {
                let n = n.parse::<usize>().ok()?.min(999_999);
                out.extend_from_slice(&numbered_stream(n * 7));
            }
            _ => return None,
        }
    }
}

/// `n` bytes of numbered lines (`000001\n000002\n...`, the last one cut to fit): a stream
/// whose gaps and repeats are easy to see.
pub fn numbered_stream(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    let mut line = 1u64;
    while out.len() < n {
        out.extend_from_slice(format!("{line:06}\n").as_bytes());
        line += 1;
    }
    out.truncate(n);
    out
}

fn duration(what: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{what} {text:?}: {e}"))
}

fn ms(d: Duration) -> f64 {
    // Microsecond resolution keeps reports short and exact.
    (d.as_micros() as f64) / 1000.0
}

impl Scenario {
    /// Parses a scenario file.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The scenario's network.
    pub fn topology(&self) -> Topology {
        Topology {
            nats: self.nats.clone(),
            hosts: self.hosts.clone(),
        }
    }

    /// Runs it with `seed` in a fresh paused current-thread runtime and reports.
    pub fn run(&self, seed: u64) -> Result<Report, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| format!("cannot start the simulation's runtime: {e}"))?;
        // A client session's output writers are not `Send`; everything runs on this one
        // thread anyway.
        let local = tokio::task::LocalSet::new();
        runtime.block_on(local.run_until(self.run_in_runtime(seed)))
    }

    async fn run_in_runtime(&self, seed: u64) -> Result<Report, String> {
        let network = self.topology().resolve()?;
        let total = duration("duration", &self.duration)?;
        let world = World::new(network, seed);
        crate::mark_run_start();
        tokio::spawn(world.clone().drive());
        let timeline: Arc<Mutex<Vec<TimelineEntry>>> = Arc::default();
        let log = {
            let timeline = timeline.clone();
            let world = world.clone();
            move |event: String| {
                timeline
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(TimelineEntry {
                        t_ms: ms(world.now()),
                        event,
                    });
            }
        };
        let mesh = Arc::new(tokio::sync::Mutex::new(Mesh::new(world.clone(), seed)?));
        {
            let mut m = mesh.lock().await;
            m.start_coordinator(&self.coordinator)?;
            log(format!("coordinator started on {}", self.coordinator));
            for agent in &self.agents {
                m.start_agent(agent).await?;
                log(format!("agent on {agent} enrolled and started"));
            }
            for client in &self.clients {
                m.enroll_client(&client.host, &client.role).await?;
                log(format!(
                    "client on {} enrolled ({})",
                    client.host, client.role
                ));
            }
        }
        let mut actions: Vec<(Duration, &Action)> = self
            .actions
            .iter()
            .map(|a| Ok((duration("action at", &a.at)?, a)))
            .collect::<Result<_, String>>()?;
        // Stable: actions at the same time keep their order in the file.
        actions.sort_by_key(|(at, _)| *at);
        let start = tokio::time::Instant::now() - world.now();
        let mut execs: Vec<PendingExec> = Vec::new();
        for (at, action) in actions {
            tokio::time::sleep_until(start + at).await;
            match &action.what {
                ActionKind::Exec {
                    name,
                    client,
                    host,
                    command,
                    stdin_bytes,
                    input,
                } => {
                    if command.is_empty() {
                        log(format!("{name}: {client} opens a shell on {host}"));
                    } else {
                        log(format!("{name}: {client} runs `{command}` on {host}"));
                    }
                    let stdin = match input {
                        Some(text) => text.clone().into_bytes(),
                        None => numbered_stream(*stdin_bytes),
                    };
                    let expected = expected_output(command, &stdin);
                    let device = mesh.lock().await.client(client)?;
                    let (host_name, cmd) = (host.clone(), command.clone());
                    let log = log.clone();
                    let label = name.clone();
                    let task = tokio::task::spawn_local(async move {
                        let report = device.exec(&host_name, &cmd, stdin).await;
                        log(format!("{label}: {}", report.outcome));
                        report
                    });
                    execs.push(PendingExec {
                        name: name.clone(),
                        client: client.clone(),
                        host: host.clone(),
                        expected,
                        task,
                    });
                }
                other => {
                    let mut m = mesh.lock().await;
                    let event = apply_event(&mut m, other)?;
                    log(event);
                }
            }
        }
        tokio::time::sleep_until(start + total).await;
        let mut connections = Vec::new();
        for PendingExec {
            name,
            client,
            host,
            expected,
            task,
        } in execs
        {
            let report = if task.is_finished() {
                task.await.map_err(|e| format!("{name}: {e}"))?
            } else {
                task.abort();
                ExecReport::unfinished()
            };
            let intact = if expected.is_empty() {
                !report.stdout.is_empty() || report.outcome == "exit 0"
            } else {
                report.stdout == expected
            };
            connections.push(ConnectionReport {
                name,
                client,
                host,
                path: report.path.clone(),
                remote_addr: report.remote_addr.map(|a| a.to_string()),
                time_to_first_byte_ms: report.time_to_first_byte.map(ms),
                time_to_direct_ms: report.time_to_direct.map(ms),
                rtt_ms: report.rtt.map(ms),
                bytes_up: report.bytes_up,
                bytes_down: u64::try_from(report.stdout.len() + report.stderr.len())
                    .unwrap_or(u64::MAX),
                relay_bytes: report.relay_bytes,
                path_changes: report.path_changes,
                path_failures: report.path_failures,
                outcome: report.outcome,
                intact,
                output: report.stdout,
            });
        }
        mesh.lock().await.shut_down();
        let expectations = self
            .expectations
            .iter()
            .map(|e| judge(e, &connections))
            .collect::<Result<Vec<_>, String>>()?;
        let counters = world.counters();
        let timeline = timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(Report {
            scenario: self.name.clone(),
            seed,
            duration_ms: ms(total),
            timeline,
            connections,
            expectations,
            packets: PacketCounts {
                sent: counters.sent,
                delivered: counters.delivered,
                dropped: counters
                    .dropped
                    .iter()
                    .map(|(reason, n)| (format!("{reason:?}"), *n))
                    .collect(),
            },
        })
    }
}

/// An exec under way: its labels, the output `cat` should give back, and its task.
struct PendingExec {
    name: String,
    client: String,
    host: String,
    expected: Vec<u8>,
    task: tokio::task::JoinHandle<ExecReport>,
}

/// Applies a network or process event; returns its timeline line.
fn apply_event(mesh: &mut Mesh, event: &ActionKind) -> Result<String, String> {
    let network = mesh.world().network();
    let host_or_nat = |name: &str| -> Result<Result<usize, usize>, String> {
        if let Some(h) = network.host(name) {
            return Ok(Ok(h));
        }
        network
            .nats
            .iter()
            .position(|n| n.name == name)
            .map(Err)
            .ok_or_else(|| format!("no host or NAT named {name:?}"))
    };
    let nat_index = |name: &str| {
        network
            .nats
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("no NAT named {name:?}"))
    };
    Ok(match event {
        ActionKind::Partition { target } | ActionKind::Heal { target } => {
            let up = matches!(event, ActionKind::Heal { .. });
            match host_or_nat(target)? {
                Ok(host) => mesh.world().set_host_link(host, up),
                Err(nat) => mesh.world().set_nat_link(nat, up),
            }
            format!(
                "{target}'s link {}",
                if up { "is back" } else { "goes down" }
            )
        }
        ActionKind::FlushNat { nat } => {
            mesh.world().flush_nat(nat_index(nat)?);
            format!("NAT {nat} forgets its mappings")
        }
        ActionKind::Move { host, ip } => {
            let index = network
                .host(host)
                .ok_or_else(|| format!("no host named {host:?}"))?;
            mesh.world().move_host(index, *ip)?;
            format!("{host} moves to {ip}")
        }
        ActionKind::KillAgent { host } => {
            mesh.kill_agent(host)?;
            format!("the agent on {host} is killed")
        }
        ActionKind::StartAgent { host } => {
            mesh.restart_agent(host)?;
            format!("the agent on {host} starts")
        }
        ActionKind::KillCoordinator => {
            mesh.kill_coordinator()?;
            "the coordinator is killed".to_owned()
        }
        ActionKind::StartCoordinator => {
            mesh.restart_coordinator()?;
            "the coordinator starts again".to_owned()
        }
        ActionKind::Exec { .. } => return Err("exec is not an event".into()),
    })
}

fn judge(expectation: &Expectation, connections: &[ConnectionReport]) -> Result<Verdict, String> {
    let name = &expectation.connection;
    let c = connections
        .iter()
        .find(|c| &c.name == name)
        .ok_or_else(|| {
            format!("an expectation names the connection {name:?}, which no exec has")
        })?;
    let mut wanted = Vec::new();
    let mut ok = true;
    if let Some(outcome) = &expectation.outcome {
        wanted.push(format!("outcome {outcome}"));
        // "lost" also matches "lost: connection timed out", and so on.
        ok &= &c.outcome == outcome || c.outcome.starts_with(&format!("{outcome}:"));
    }
    if let Some(path) = &expectation.path {
        wanted.push(format!("path {path}"));
        ok &= &c.path == path;
    }
    if let Some(within) = &expectation.direct_within {
        let limit = duration("direct_within", within)?;
        wanted.push(format!("direct within {within}"));
        ok &= c.path == "direct" && c.time_to_direct_ms.is_some_and(|t| t <= ms(limit));
    }
    if let Some(intact) = expectation.intact {
        wanted.push(if intact { "intact" } else { "not intact" }.to_owned());
        ok &= c.intact == intact;
    }
    if let Some(after) = expectation.direct_after_first_byte {
        wanted.push(
            if after {
                "direct after the first byte"
            } else {
                "not direct after the first byte"
            }
            .to_owned(),
        );
        let moved = c.path == "direct"
            && matches!(
                (c.time_to_first_byte_ms, c.time_to_direct_ms),
                (Some(first), Some(direct)) if direct > first
            );
        ok &= moved == after;
    }
    if let Some(text) = &expectation.output_contains {
        wanted.push(format!("output contains {text:?}"));
        let needle = text.as_bytes();
        ok &= !needle.is_empty() && c.output.windows(needle.len()).any(|w| w == needle);
    }
    if let Some(most) = expectation.path_changes_at_most {
        wanted.push(format!("at most {most} path changes"));
        ok &= c.path_changes <= most;
    }
    if let Some(most) = expectation.path_failures_at_most {
        wanted.push(format!("at most {most} path failures"));
        ok &= c.path_failures <= most;
    }
    let mut seen = format!(
        "{}, path {}, direct {}, {}",
        c.outcome,
        c.path,
        c.time_to_direct_ms
            .map_or_else(|| "never".to_owned(), |t| format!("after {t:.0} ms")),
        if c.intact { "intact" } else { "not intact" }
    );
    if expectation.path_changes_at_most.is_some() || expectation.path_failures_at_most.is_some() {
        seen.push_str(&format!(
            ", {} path changes, {} failures",
            c.path_changes, c.path_failures
        ));
    }
    if expectation.direct_after_first_byte.is_some() {
        seen.push_str(&c.time_to_first_byte_ms.map_or_else(
            || ", no output".to_owned(),
            |t| format!(", first byte after {t:.0} ms"),
        ));
    }
    Ok(Verdict {
        expected: format!("{name}: {}", wanted.join(", ")),
        ok,
        seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_expected_to_print_its_prompts_and_each_known_lines_output() {
        let typed = b"echo a  b\r\nseq 2\nticks 3 0.1\nsleep 1\nexit\necho after\n";
        let mut want = b"$ a b\n$ $ 1\n2\n$ ".to_vec();
        want.extend_from_slice(&numbered_stream(21));
        want.extend_from_slice(b"$ $ ");
        assert_eq!(shell_output(typed), Some(want));
        // Without `exit` the shell prompts once more before stdin's end; a last line without
        // a newline is still a line.
        assert_eq!(shell_output(b"echo x"), Some(b"$ x\n$ ".to_vec()));
        assert_eq!(shell_output(b""), Some(b"$ ".to_vec()));
        // A line whose output is not known exactly: any output will do.
        assert_eq!(shell_output(b"echo x\nstty size\nexit\n"), None);
        assert_eq!(shell_output(b"ticks many 0.1\n"), None);
        assert!(expected_output("", b"cat\n").is_empty());
        // Numbered stdin typed into a shell is not a command line the shell knows.
        assert!(expected_output("", &numbered_stream(70)).is_empty());
    }

    #[test]
    fn path_change_and_failure_bounds_are_judged_and_shown() {
        let connection = ConnectionReport {
            name: "shell".into(),
            client: "laptop".into(),
            host: "server".into(),
            path: "direct".into(),
            remote_addr: None,
            time_to_first_byte_ms: Some(300.0),
            time_to_direct_ms: Some(11_500.0),
            rtt_ms: None,
            bytes_up: 0,
            bytes_down: 0,
            relay_bytes: 0,
            path_changes: 3,
            path_failures: 1,
            outcome: "exit 0".into(),
            intact: true,
            output: Vec::new(),
        };
        let expect = |changes: Option<u64>, failures: Option<u64>| Expectation {
            connection: "shell".into(),
            outcome: None,
            path: None,
            direct_within: None,
            intact: None,
            direct_after_first_byte: None,
            output_contains: None,
            path_changes_at_most: changes,
            path_failures_at_most: failures,
        };
        let connections = [connection];
        let judged = |changes, failures| judge(&expect(changes, failures), &connections).unwrap();
        let within = judged(Some(3), Some(1));
        assert!(within.ok);
        assert_eq!(
            within.expected,
            "shell: at most 3 path changes, at most 1 path failures"
        );
        assert!(
            within.seen.ends_with(", 3 path changes, 1 failures"),
            "{within:?}"
        );
        assert!(!judged(Some(2), None).ok);
        assert!(!judged(None, Some(0)).ok);
        assert!(!judged(None, None).seen.contains("path changes"));
        // The text report shows both counts.
        let report = Report {
            scenario: "s".into(),
            seed: 1,
            duration_ms: 0.0,
            timeline: Vec::new(),
            connections: connections.to_vec(),
            expectations: Vec::new(),
            packets: PacketCounts {
                sent: 0,
                delivered: 0,
                dropped: BTreeMap::new(),
            },
        };
        assert!(
            report.to_text().contains("path changes 3  failures 1"),
            "{}",
            report.to_text()
        );
        // And a scenario file can ask for them.
        let parsed: Expectation = toml::from_str(
            "connection = \"shell\"\npath_changes_at_most = 1\npath_failures_at_most = 0\n",
        )
        .unwrap();
        assert_eq!(parsed.path_changes_at_most, Some(1));
        assert_eq!(parsed.path_failures_at_most, Some(0));
    }
}
