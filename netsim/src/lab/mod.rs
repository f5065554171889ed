//! The kernel lab: a resolved [`Network`] built for real out of Linux network namespaces, veth
//! pairs and nftables rules, so the simulator's claims can be checked against Linux NAT.
//!
//! Layout, every name starting with the lab's own prefix `meshlab-<pid>-<n>-`:
//!
//! - `…inet`: the internet, a bridge `br0` joining every public-side veth. Public hosts and
//!   NATs on the internet get their address as a /32 with an on-link default route, so the
//!   three documentation ranges share one segment.
//! - `…nat-<name>`: one per NAT, a router. `wan` is its outside veth (its peer sits on the
//!   internet's bridge, or on the parent NAT's `lan` for carrier-grade stacking); `lan` is a
//!   bridge holding the gateway address (`.1/24`) and the veths of everything behind it. IP
//!   forwarding is on and the NAT's behavior is an nftables table ([`rules`] lists which
//!   construct builds which behavior, and what cannot be built).
//! - `…host-<name>`: one per host, with `eth0`, its address, and a default route via its NAT's
//!   gateway (or on-link on the internet).
//!
//! Veths are created directly inside the lab's namespaces (`ip -n NS link add … peer … netns
//! NS2`), so nothing — no address, route, interface or nftables rule — is ever added to the
//! root namespace; only the names under `/run/netns` are visible there.
//!
//! What the lab reproduces of links: loss (nftables `numgen random`, each direction) and MTU.
//! This kernel has no `tc netem`, so latency, jitter and bandwidth are not built; they are
//! listed by [`Lab::not_reproduced`].
//!
//! Teardown: [`Lab`]'s `Drop` (also during a panic) kills every process inside its namespaces
//! and deletes them, which takes their veths along. A crashed run can leave namespaces behind;
//! [`remove_leftovers`] (called by every [`Lab::build`]) deletes those whose prefix names a
//! process that no longer exists, and no namespace without the prefix.
//!
//! Everything here needs root, `ip` (iproute2) and `nft` (nftables); [`unsupported`] says why
//! the lab cannot run, for tests that skip. [`UdpProbe`] (python3) sends and receives datagrams
//! inside a host's namespace; [`PacketModel`] routes the same datagrams through the simulator's
//! [`NatBox`](crate::nat::NatBox) models of the same network, to compare.

pub mod model;
pub mod probe;
pub mod rules;

use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub use model::{Delivery, PacketModel};
pub use probe::UdpProbe;

use crate::topology::Network;

/// Every lab namespace's name starts with this.
pub const PREFIX: &str = "meshlab-";

/// Where `ip netns` keeps the names of network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The internet's bridge, inside the internet namespace.
const INTERNET_BRIDGE: &str = "br0";

/// Labs made by this process so far: the `<n>` in the prefix, so two labs of one process never
/// share names.
static LABS_MADE: AtomicU32 = AtomicU32::new(0);

/// Why the lab could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Not running as root.
    #[error("the kernel lab needs root to create network namespaces (CI runs as root)")]
    NotRoot,
    /// A program the lab runs is not installed.
    #[error("`{0}` is not installed; install iproute2, nftables and python3")]
    MissingTool(String),
    /// A NAT behavior Linux NAT cannot reproduce.
    #[error("NAT {nat:?}: {what} is not supported by the kernel lab")]
    Unsupported {
        /// The NAT.
        nat: String,
        /// Which part of its behavior.
        what: String,
    },
    /// No host or NAT of that name.
    #[error("the lab has no {kind} named {name:?}")]
    Unknown {
        /// `host` or `NAT`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command.
        command: String,
        /// What it printed on stderr (or its exit status).
        stderr: String,
    },
    /// A UDP probe misbehaved.
    #[error("the UDP probe in host {host:?} {what}")]
    Probe {
        /// The host it runs in.
        host: String,
        /// What went wrong.
        what: String,
    },
    /// Listing `/run/netns` failed.
    #[error("could not list {NETNS_DIR}: {0}")]
    ListNamespaces(#[source] std::io::Error),
}

/// Why the lab cannot run here, if it cannot: not root, or `ip` or `nft` missing.
pub fn unsupported() -> Option<String> {
    preflight().err().map(|e| e.to_string())
}

/// `Some(why)` when `program flag` cannot be run.
fn tool_missing(program: &str, flag: &str) -> Option<String> {
    match Command::new(program)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => None,
        Err(_) => Some(LabError::MissingTool(program.to_owned()).to_string()),
    }
}

fn preflight() -> Result<(), LabError> {
    if !effective_uid_is_root() {
        return Err(LabError::NotRoot);
    }
    for (program, flag) in [("ip", "-V"), ("nft", "--version")] {
        if tool_missing(program, flag).is_some() {
            return Err(LabError::MissingTool(program.to_owned()));
        }
    }
    Ok(())
}

/// Whether this process runs with effective uid 0, read from `/proc/self/status` (no libc
/// dependency for one number).
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A NAT as built: its namespace.
#[derive(Debug)]
struct LabNat {
    namespace: String,
}

/// A host as built: its namespace.
#[derive(Debug)]
struct LabHost {
    namespace: String,
}

/// A network built in the kernel (see the module docs). Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    network: Network,
    prefix: String,
    internet: String,
    nats: Vec<LabNat>,
    hosts: Vec<LabHost>,
    /// Namespaces created so far, in order: what teardown deletes (a half-built lab too).
    created: Vec<String>,
    not_reproduced: Vec<String>,
}

impl Lab {
    /// Builds `network` in the kernel. Needs root, `ip` and `nft`; refuses, before creating
    /// anything, a NAT behavior the lab cannot build. Removes leftovers of crashed runs first.
    pub fn build(network: &Network) -> Result<Self, LabError> {
        preflight()?;
        let mut nat_rules = Vec::with_capacity(network.nats.len());
        for nat in &network.nats {
            nat_rules.push(rules::nat_ruleset(nat).map_err(|rules::Unsupported(what)| {
                LabError::Unsupported {
                    nat: nat.name.clone(),
                    what,
                }
            })?);
        }
        if let Err(e) = remove_leftovers() {
            tracing::warn!("kernel lab: removing leftovers of earlier runs: {e}");
        }

        let prefix = format!(
            "{PREFIX}{}-{}-",
            std::process::id(),
            LABS_MADE.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            network: network.clone(),
            internet: format!("{prefix}inet"),
            nats: network
                .nats
                .iter()
                .map(|n| LabNat {
                    namespace: format!("{prefix}nat-{}", n.name),
                })
                .collect(),
            hosts: network
                .hosts
                .iter()
                .map(|h| LabHost {
                    namespace: format!("{prefix}host-{}", h.name),
                })
                .collect(),
            prefix,
            created: Vec::new(),
            not_reproduced: Vec::new(),
        };
        // On an error, `lab` is dropped here and deletes whatever was already created.
        lab.build_internet()?;
        for (index, ruleset) in nat_rules.iter().enumerate() {
            lab.build_nat(index, ruleset)?;
        }
        for index in 0..network.hosts.len() {
            lab.build_host(index)?;
        }
        Ok(lab)
    }

    fn create_namespace(&mut self, namespace: &str) -> Result<(), LabError> {
        run("ip", &["netns", "add", namespace], None)?;
        self.created.push(namespace.to_owned());
        // IPv6 would only add neighbor discovery noise; the lab is IPv4 like the topology.
        // Missing when the kernel has no IPv6: then there is nothing to turn off.
        set_sysctls(
            namespace,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1", false),
                ("net/ipv6/conf/default/disable_ipv6", "1", false),
            ],
        )?;
        ip(namespace, &["link", "set", "dev", "lo", "up"])
    }

    fn build_internet(&mut self) -> Result<(), LabError> {
        let ns = self.internet.clone();
        self.create_namespace(&ns)?;
        ip(
            &ns,
            &["link", "add", "name", INTERNET_BRIDGE, "type", "bridge"],
        )?;
        ip(&ns, &["link", "set", "dev", INTERNET_BRIDGE, "up"])
    }

    /// The namespace and bridge of the network a node with `parent` sits on.
    fn network_of(&self, parent: Option<usize>) -> (String, &'static str) {
        match parent {
            None => (self.internet.clone(), INTERNET_BRIDGE),
            Some(p) => (self.nats[p].namespace.clone(), rules::LAN),
        }
    }

    /// A veth from `inside` (in `ns`) to `outside` (in the parent network's namespace, on its
    /// bridge), both up, with `mtu`.
    fn plug(
        &self,
        ns: &str,
        inside: &str,
        parent: Option<usize>,
        outside: &str,
        mtu: u32,
    ) -> Result<(), LabError> {
        let (parent_ns, bridge) = self.network_of(parent);
        ip(
            ns,
            &[
                "link", "add", "name", inside, "type", "veth", "peer", "name", outside, "netns",
                &parent_ns,
            ],
        )?;
        let mtu = mtu.to_string();
        ip(
            &parent_ns,
            &[
                "link", "set", "dev", outside, "master", bridge, "mtu", &mtu, "up",
            ],
        )?;
        ip(ns, &["link", "set", "dev", inside, "mtu", &mtu, "up"])
    }

    /// Gives `iface` in `ns` the address `ip` on the network `parent`, with a default route.
    fn address(
        &self,
        ns: &str,
        iface: &str,
        address: Ipv4Addr,
        parent: Option<usize>,
    ) -> Result<(), LabError> {
        match parent {
            None => {
                ip(ns, &["addr", "add", &format!("{address}/32"), "dev", iface])?;
                ip(ns, &["route", "add", "default", "dev", iface])
            }
            Some(p) => {
                ip(ns, &["addr", "add", &format!("{address}/24"), "dev", iface])?;
                let gateway = self.network.nats[p].gateway.to_string();
                ip(ns, &["route", "add", "default", "via", &gateway])
            }
        }
    }

    fn build_nat(&mut self, index: usize, ruleset: &str) -> Result<(), LabError> {
        let nat = self.network.nats[index].clone();
        let ns = self.nats[index].namespace.clone();
        self.create_namespace(&ns)?;
        self.plug(
            &ns,
            rules::WAN,
            nat.parent,
            &format!("n{index}"),
            nat.uplink.mtu,
        )?;
        self.address(&ns, rules::WAN, nat.external_ip, nat.parent)?;
        ip(&ns, &["link", "add", "name", rules::LAN, "type", "bridge"])?;
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", nat.gateway),
                "dev",
                rules::LAN,
            ],
        )?;
        ip(&ns, &["link", "set", "dev", rules::LAN, "up"])?;
        run_in(&ns, "nft", &["-f", "-"], Some(ruleset))?;
        // After the ruleset: its NAT rules are what brings conntrack into the namespace, where
        // the conntrack module is not built in. These sysctls are per network namespace.
        let timeout = rules::timeout_secs(nat.behavior.mapping_timeout).to_string();
        set_sysctls(
            &ns,
            &[
                ("net/ipv4/ip_forward", "1", true),
                ("net/netfilter/nf_conntrack_udp_timeout", &timeout, true),
                (
                    "net/netfilter/nf_conntrack_udp_timeout_stream",
                    &timeout,
                    true,
                ),
            ],
        )?;
        self.note_link(&format!("NAT {:?} uplink", nat.name), &nat.uplink);
        Ok(())
    }

    fn build_host(&mut self, index: usize) -> Result<(), LabError> {
        let host = self.network.hosts[index].clone();
        let ns = self.hosts[index].namespace.clone();
        self.create_namespace(&ns)?;
        self.plug(
            &ns,
            rules::HOST_IF,
            host.parent,
            &format!("h{index}"),
            host.link.mtu,
        )?;
        self.address(&ns, rules::HOST_IF, host.ip, host.parent)?;
        if let Some(ruleset) = rules::host_ruleset(host.link.loss) {
            run_in(&ns, "nft", &["-f", "-"], Some(&ruleset))?;
        }
        self.note_link(&format!("host {:?} link", host.name), &host.link);
        Ok(())
    }

    fn note_link(&mut self, what: &str, link: &crate::topology::LinkConfig) {
        let defaults = crate::topology::LinkConfig::default();
        if link.latency != defaults.latency {
            self.not_reproduced
                .push(format!("{what}: latency {:?}", link.latency));
        }
        if !link.jitter.is_zero() {
            self.not_reproduced
                .push(format!("{what}: jitter {:?}", link.jitter));
        }
        if let Some(bps) = link.bandwidth_bps {
            self.not_reproduced
                .push(format!("{what}: bandwidth {bps} bit/s"));
        }
    }

    /// The network it was built from.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The prefix of all its namespaces' names (`meshlab-<pid>-<n>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Link properties of the description the lab did not build (latency, jitter, bandwidth:
    /// this kernel has no `netem`), one readable line each.
    pub fn not_reproduced(&self) -> &[String] {
        &self.not_reproduced
    }

    fn host_index(&self, name: &str) -> Result<usize, LabError> {
        self.network.host(name).ok_or_else(|| LabError::Unknown {
            kind: "host",
            name: name.to_owned(),
        })
    }

    fn nat_index(&self, name: &str) -> Result<usize, LabError> {
        self.network
            .nats
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| LabError::Unknown {
                kind: "NAT",
                name: name.to_owned(),
            })
    }

    /// The network namespace of host `name` (for `ip netns exec` or `nsenter`).
    pub fn host_namespace(&self, name: &str) -> Result<&str, LabError> {
        Ok(&self.hosts[self.host_index(name)?].namespace)
    }

    /// The network namespace of NAT `name`.
    pub fn nat_namespace(&self, name: &str) -> Result<&str, LabError> {
        Ok(&self.nats[self.nat_index(name)?].namespace)
    }

    /// `program` to run inside host `name`'s namespace (`ip netns exec NS program`); add its
    /// arguments, environment and pipes as for any [`Command`]. Whatever still runs there at
    /// teardown is killed.
    pub fn host_command(&self, name: &str, program: &str) -> Result<Command, LabError> {
        Ok(netns_command(self.host_namespace(name)?, program))
    }

    /// `program` to run inside NAT `name`'s namespace (to look at its ruleset or conntrack).
    pub fn nat_command(&self, name: &str, program: &str) -> Result<Command, LabError> {
        Ok(netns_command(self.nat_namespace(name)?, program))
    }

    /// Host `name`'s address.
    pub fn host_ip(&self, name: &str) -> Result<Ipv4Addr, LabError> {
        Ok(self.network.hosts[self.host_index(name)?].ip)
    }

    /// NAT `name`'s address on the network above it.
    pub fn nat_external_ip(&self, name: &str) -> Result<Ipv4Addr, LabError> {
        Ok(self.network.nats[self.nat_index(name)?].external_ip)
    }

    /// Tears the lab down now, reporting the first failure (dropping it does the same,
    /// logging failures instead).
    pub fn shutdown(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        let mut first_error = None;
        // Hosts first, then NATs innermost first, the internet last; every one is attempted.
        while let Some(ns) = self.created.pop() {
            if let Err(e) = remove_namespace(&ns) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("kernel lab {}: teardown: {e}", self.prefix);
        }
    }
}

/// The names of the network namespaces whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        // No namespace was ever named on this machine.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::ListNamespaces(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes lab namespaces left by runs that are gone: those named `meshlab-<pid>-…` where no
/// process `<pid>` exists. Namespaces of running labs, and every namespace without the prefix,
/// are left alone. Returns the names it deleted.
pub fn remove_leftovers() -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    for name in namespaces_with_prefix(PREFIX)? {
        let owner = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        remove_namespace(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// Kills every process in `ns`, then deletes it (its veths go with it).
fn remove_namespace(ns: &str) -> Result<(), LabError> {
    let pids = run("ip", &["netns", "pids", ns], None)?;
    let pids: Vec<&str> = pids
        .split_whitespace()
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if !pids.is_empty() {
        // The shell's builtin `kill`: no procps needed. A process that exits meanwhile makes it
        // fail, which is fine; the namespace goes once the last process has.
        let mut args = vec!["-c", "kill -9 \"$@\" 2>/dev/null; true", "sh"];
        args.extend(pids);
        run("sh", &args, None)?;
    }
    run("ip", &["netns", "del", ns], None).map(drop)
}

fn netns_command(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// `ip -n NS ARGS…`.
fn ip(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all, None).map(drop)
}

/// Runs `program args…` inside `ns`.
fn run_in(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all, stdin)
}

/// Writes `/proc/sys` entries inside `ns` (the network ones there are the namespace's own).
/// Each is `(path under /proc/sys, value, required)`; an optional one may be missing.
fn set_sysctls(ns: &str, entries: &[(&str, &str, bool)]) -> Result<(), LabError> {
    let mut script = String::from("set -e\n");
    for (path, value, required) in entries {
        let tail = if *required {
            ""
        } else {
            " 2>/dev/null || true"
        };
        script.push_str(&format!("echo {value} > /proc/sys/{path}{tail}\n"));
    }
    run_in(ns, "sh", &["-c", &script], None).map(drop)
}

/// Runs a command to completion; its stdout, or an error naming it with its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let shown = || {
        let mut shown = program.to_owned();
        for arg in args {
            shown.push(' ');
            // The probe's and the rulesets' text would drown the message.
            if arg.contains('\n') {
                shown.push_str("<script>");
            } else {
                shown.push_str(arg);
            }
        }
        shown
    };
    let spawn_error = |source: std::io::Error| {
        if source.kind() == ErrorKind::NotFound {
            LabError::MissingTool(program.to_owned())
        } else {
            LabError::Spawn {
                command: shown(),
                source,
            }
        }
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the command's own failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        Err(LabError::Command {
            command: shown(),
            stderr: if stderr.is_empty() {
                output.status.to_string()
            } else {
                stderr.replace('\n', "; ")
            },
        })
    }
}
