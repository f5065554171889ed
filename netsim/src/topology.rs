//! The description of a network: hosts, NAT boxes and the links between them, as a scenario's
//! TOML writes it. The simulator ([`crate::world`]) and the kernel lab ([`crate::lab`]) both
//! build from it, so one description means the same network in both.
//!
//! The shape is a tree. The internet is the root network; every NAT box sits on the internet or
//! inside another NAT's network (a home router behind a carrier-grade NAT); every host sits on
//! the internet or inside one NAT's network. A host's `link` is its access link; a NAT's
//! `uplink` joins its inside network to the network above.
//!
//! [`Topology::resolve`] checks names and parents and hands out addresses: public addresses from
//! the documentation ranges (203.0.113.0/24, then 198.51.100.0/24, then 192.0.2.0/24), and to the
//! inside of the n-th NAT the network 10.(n / 256).(n % 256).0/24, hosts from .10 up.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a NAT chooses the external address and port of a mapping (RFC 4787, section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One mapping per internal address and port, whatever the destination ("cone").
    EndpointIndependent,
    /// A new mapping per destination address.
    AddressDependent,
    /// A new mapping per destination address and port ("symmetric").
    AddressAndPortDependent,
}

/// How a NAT picks the external port of a new mapping (RFC 4787, section 4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAllocation {
    /// The internal port when it is free, else the next free one.
    Preserving,
    /// One more than the last port handed out.
    Sequential,
    /// Uniformly random among the free ports.
    Random,
}

/// Which inbound packets a NAT lets through a mapping (RFC 4787, section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone may send to a mapped port ("full cone").
    EndpointIndependent,
    /// Only addresses the inside host has sent to ("address-restricted").
    AddressDependent,
    /// Only address-and-port pairs the inside host has sent to ("port-restricted").
    AddressAndPortDependent,
}

/// The common kinds of NAT, as presets for [`NatBehavior`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering, ports preserved.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (Linux `masquerade`).
    PortRestricted,
    /// A new random port per destination, port-restricted filtering (`masquerade random`).
    SymmetricRandom,
    /// A new sequential port per destination, port-restricted filtering.
    SymmetricSequential,
}

impl NatKind {
    /// Every preset, in a fixed order.
    pub const ALL: [Self; 5] = [
        Self::FullCone,
        Self::AddressRestricted,
        Self::PortRestricted,
        Self::SymmetricRandom,
        Self::SymmetricSequential,
    ];

    /// Its name in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Self::FullCone => "full-cone",
            Self::AddressRestricted => "address-restricted",
            Self::PortRestricted => "port-restricted",
            Self::SymmetricRandom => "symmetric-random",
            Self::SymmetricSequential => "symmetric-sequential",
        }
    }
}

/// Linux conntrack's timeout for a UDP flow that has seen replies (`nf_conntrack_udp_timeout`
/// is 30 s unreplied; many home routers keep mappings for about two minutes).
pub const DEFAULT_MAPPING_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything a NAT box does with UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatBehavior {
    /// Mapping.
    pub mapping: Mapping,
    /// Port allocation.
    pub allocation: PortAllocation,
    /// Filtering.
    pub filtering: Filtering,
    /// A mapping with no packet through it for this long is gone.
    pub mapping_timeout: Duration,
    /// Whether a packet from inside to the NAT's own external address comes back in.
    pub hairpin: bool,
}

impl NatBehavior {
    /// The behavior of a preset, with the default timeout and no hairpinning.
    pub fn preset(kind: NatKind) -> Self {
        let (mapping, allocation, filtering) = match kind {
            NatKind::FullCone => (
                Mapping::EndpointIndependent,
                PortAllocation::Preserving,
                Filtering::EndpointIndependent,
            ),
            NatKind::AddressRestricted => (
                Mapping::EndpointIndependent,
                PortAllocation::Preserving,
                Filtering::AddressDependent,
            ),
            NatKind::PortRestricted => (
                Mapping::EndpointIndependent,
                PortAllocation::Preserving,
                Filtering::AddressAndPortDependent,
            ),
            NatKind::SymmetricRandom => (
                Mapping::AddressAndPortDependent,
                PortAllocation::Random,
                Filtering::AddressAndPortDependent,
            ),
            NatKind::SymmetricSequential => (
                Mapping::AddressAndPortDependent,
                PortAllocation::Sequential,
                Filtering::AddressAndPortDependent,
            ),
        };
        Self {
            mapping,
            allocation,
            filtering,
            mapping_timeout: DEFAULT_MAPPING_TIMEOUT,
            hairpin: false,
        }
    }
}

/// A link as written: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One-way latency (`"20ms"`).
    pub latency: Option<String>,
    /// Extra delay, uniform between zero and this, per packet.
    pub jitter: Option<String>,
    /// Share of packets lost, 0.0–1.0.
    pub loss: Option<f64>,
    /// Bits per second (`"10Mbit"`, `"1Gbit"`, `"500kbit"`); unlimited when absent.
    pub bandwidth: Option<String>,
    /// Largest IP packet (bytes); larger ones are dropped, as with the don't-fragment bit set.
    pub mtu: Option<u32>,
}

/// A link, resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way latency.
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter]`, per packet (packets may be reordered).
    pub jitter: Duration,
    /// Share of packets lost.
    pub loss: f64,
    /// Bits per second; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Largest IP packet in bytes (UDP payload + 28 bytes of IPv4 and UDP headers).
    pub mtu: u32,
}

/// The IPv4 and UDP headers a datagram carries on a link, counted against the MTU.
pub const IP_UDP_HEADERS: u32 = 28;

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth_bps: None,
            mtu: 1500,
        }
    }
}

impl LinkSpec {
    /// The link this describes.
    pub fn resolve(&self, what: &str) -> Result<LinkConfig, String> {
        let defaults = LinkConfig::default();
        let duration = |field: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| format!("{what}: {field} {text:?}: {e}")),
        };
        let loss = self.loss.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&loss) {
            return Err(format!("{what}: loss {loss} is not between 0 and 1"));
        }
        let mtu = self.mtu.unwrap_or(defaults.mtu);
        if !(576..=65_535).contains(&mtu) {
            return Err(format!("{what}: mtu {mtu} is not between 576 and 65535"));
        }
        Ok(LinkConfig {
            latency: duration("latency", &self.latency, defaults.latency)?,
            jitter: duration("jitter", &self.jitter, defaults.jitter)?,
            loss,
            bandwidth_bps: self
                .bandwidth
                .as_deref()
                .map(|text| parse_bandwidth(text).map_err(|e| format!("{what}: {e}")))
                .transpose()?,
            mtu,
        })
    }
}

/// `"10Mbit"` → 10,000,000. Units: bit, kbit, Mbit, Gbit (case-insensitive, decimal).
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("bandwidth {text:?}: expected a number and a unit like 10Mbit"))?;
    let scale = match unit.trim() {
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        _ => {
            return Err(format!(
                "bandwidth {text:?}: the unit is bit, kbit, Mbit or Gbit"
            ));
        }
    };
    let bps = number * scale;
    if !(1.0..=1e12).contains(&bps) {
        return Err(format!("bandwidth {text:?} is out of range"));
    }
    // In range and positive: the cast neither truncates meaningfully nor wraps.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bps as u64)
}

/// A NAT box as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSpec {
    /// Its name.
    pub name: String,
    /// A preset; the fields below override parts of it. Without one, they must all be given.
    pub kind: Option<NatKind>,
    /// Mapping.
    pub mapping: Option<Mapping>,
    /// Port allocation.
    pub allocation: Option<PortAllocation>,
    /// Filtering.
    pub filtering: Option<Filtering>,
    /// Mapping timeout (`"30s"`).
    pub timeout: Option<String>,
    /// Hairpinning.
    #[serde(default)]
    pub hairpin: bool,
    /// The NAT whose inside network this one sits on; the internet when absent.
    pub behind: Option<String>,
    /// Its external address (on the network above); handed out when absent.
    pub public_ip: Option<Ipv4Addr>,
    /// The link from its inside network to the network above.
    #[serde(default)]
    pub uplink: LinkSpec,
    /// A firewall on this box drops every UDP packet crossing it (either way).
    #[serde(default)]
    pub block_udp: bool,
}

/// A host as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Its name.
    pub name: String,
    /// The NAT whose inside network it sits on; the internet when absent.
    pub behind: Option<String>,
    /// Its address; handed out when absent.
    pub ip: Option<Ipv4Addr>,
    /// Its access link.
    #[serde(default)]
    pub link: LinkSpec,
}

/// A whole network as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The NAT boxes.
    #[serde(default, rename = "nat")]
    pub nats: Vec<NatSpec>,
    /// The hosts.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
}

/// A NAT box, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Nat {
    /// Its name.
    pub name: String,
    /// What it does with UDP.
    pub behavior: NatBehavior,
    /// The NAT it sits behind (an index into [`Network::nats`]); `None`: the internet.
    pub parent: Option<usize>,
    /// Its address on the network above.
    pub external_ip: Ipv4Addr,
    /// Its inside network, a /24: this is its first address (`.0`).
    pub lan: Ipv4Addr,
    /// Its address on its inside network (`.1`, the hosts' gateway).
    pub gateway: Ipv4Addr,
    /// The link to the network above.
    pub uplink: LinkConfig,
    /// Drops all UDP crossing it.
    pub block_udp: bool,
}

/// A host, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// Its name.
    pub name: String,
    /// The NAT it sits behind (an index into [`Network::nats`]); `None`: the internet.
    pub parent: Option<usize>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its access link.
    pub link: LinkConfig,
}

/// A network whose names, parents and addresses are checked and complete.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// The NAT boxes, each after the one it sits behind.
    pub nats: Vec<Nat>,
    /// The hosts.
    pub hosts: Vec<Host>,
}

impl Network {
    /// The index of the host named `name`.
    pub fn host(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    /// The chain of NATs from `parent` up to the internet (innermost first).
    pub fn nat_chain(&self, mut parent: Option<usize>) -> Vec<usize> {
        let mut chain = Vec::new();
        while let Some(index) = parent {
            chain.push(index);
            parent = self.nats[index].parent;
        }
        chain
    }
}

/// The public addresses handed out, in order.
fn public_pool() -> impl Iterator<Item = Ipv4Addr> {
    [[203, 0, 113], [198, 51, 100], [192, 0, 2]]
        .into_iter()
        .flat_map(|[a, b, c]| (1..=254).map(move |d| Ipv4Addr::new(a, b, c, d)))
}

impl Topology {
    /// Parses a topology from TOML (a scenario file holds one at its top level).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks names and parents and hands out addresses (see the module docs).
    pub fn resolve(&self) -> Result<Network, String> {
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        for (i, nat) in self.nats.iter().enumerate() {
            check_name(&nat.name)?;
            if index_of.insert(&nat.name, i).is_some() {
                return Err(format!("two NATs are named {:?}", nat.name));
            }
        }
        // Order NATs so each comes after its parent; reject unknown parents and cycles.
        let mut order: Vec<usize> = Vec::new();
        let mut placed = vec![false; self.nats.len()];
        while order.len() < self.nats.len() {
            let before = order.len();
            for (i, nat) in self.nats.iter().enumerate() {
                if placed[i] {
                    continue;
                }
                let ready = match &nat.behind {
                    None => true,
                    Some(parent) => {
                        let p = *index_of.get(parent.as_str()).ok_or_else(|| {
                            format!("NAT {:?} is behind {parent:?}, which is no NAT", nat.name)
                        })?;
                        placed[p]
                    }
                };
                if ready {
                    placed[i] = true;
                    order.push(i);
                }
            }
            if order.len() == before {
                return Err("the NATs' `behind` fields form a cycle".into());
            }
        }
        let new_index: HashMap<usize, usize> = order
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new))
            .collect();

        let mut public = public_pool();
        let mut used_public: Vec<Ipv4Addr> = self
            .nats
            .iter()
            .filter(|n| n.behind.is_none())
            .filter_map(|n| n.public_ip)
            .chain(
                self.hosts
                    .iter()
                    .filter(|h| h.behind.is_none())
                    .filter_map(|h| h.ip),
            )
            .collect();
        let mut next_public = |used: &mut Vec<Ipv4Addr>| -> Result<Ipv4Addr, String> {
            let ip = public
                .by_ref()
                .find(|ip| !used.contains(ip))
                .ok_or("more than 762 public addresses are needed; put hosts behind NATs")?;
            used.push(ip);
            Ok(ip)
        };
        // Next host number on each NAT's inside network.
        let mut next_inside: Vec<u8> = vec![10; self.nats.len()];
        let lan_of = |n: usize| -> Result<Ipv4Addr, String> {
            let n = u16::try_from(n).map_err(|_| "more than 65536 NATs".to_owned())?;
            let [hi, lo] = n.to_be_bytes();
            Ok(Ipv4Addr::new(10, hi, lo, 0))
        };

        let mut nats: Vec<Nat> = Vec::with_capacity(self.nats.len());
        for &old in &order {
            let spec = &self.nats[old];
            let what = format!("NAT {:?}", spec.name);
            let parent = spec
                .behind
                .as_ref()
                .map(|p| new_index[&index_of[p.as_str()]]);
            let behavior = behavior_of(spec)?;
            let external_ip = match (spec.public_ip, parent) {
                (Some(ip), _) => ip,
                (None, None) => next_public(&mut used_public)?,
                (None, Some(p)) => inside_address(&mut next_inside[p], nats[p].lan, &what)?,
            };
            let lan = lan_of(nats.len())?;
            let [a, b, c, _] = lan.octets();
            nats.push(Nat {
                name: spec.name.clone(),
                behavior,
                parent,
                external_ip,
                lan,
                gateway: Ipv4Addr::new(a, b, c, 1),
                uplink: spec.uplink.resolve(&what)?,
                block_udp: spec.block_udp,
            });
        }
        let mut hosts = Vec::with_capacity(self.hosts.len());
        let mut host_names: HashMap<&str, ()> = HashMap::new();
        for spec in &self.hosts {
            check_name(&spec.name)?;
            if host_names.insert(&spec.name, ()).is_some()
                || index_of.contains_key(spec.name.as_str())
            {
                return Err(format!("the name {:?} is used twice", spec.name));
            }
            let what = format!("host {:?}", spec.name);
            let parent = match &spec.behind {
                None => None,
                Some(p) => Some(
                    new_index[index_of
                        .get(p.as_str())
                        .ok_or_else(|| format!("{what} is behind {p:?}, which is no NAT"))?],
                ),
            };
            let ip = match (spec.ip, parent) {
                (Some(ip), _) => ip,
                (None, None) => next_public(&mut used_public)?,
                (None, Some(p)) => inside_address(&mut next_inside[p], nats[p].lan, &what)?,
            };
            hosts.push(Host {
                name: spec.name.clone(),
                parent,
                ip,
                link: spec.link.resolve(&what)?,
            });
        }
        let mut all: Vec<Ipv4Addr> = hosts.iter().map(|h| h.ip).collect();
        all.extend(nats.iter().map(|n| n.external_ip));
        all.sort_unstable();
        if let Some(pair) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("the address {} is given twice", pair[0]));
        }
        Ok(Network { nats, hosts })
    }
}

/// The next free address on a NAT's inside /24.
fn inside_address(next: &mut u8, lan: Ipv4Addr, what: &str) -> Result<Ipv4Addr, String> {
    if *next == 255 {
        return Err(format!("{what}: its NAT's network is full (245 addresses)"));
    }
    let [a, b, c, _] = lan.octets();
    let ip = Ipv4Addr::new(a, b, c, *next);
    *next += 1;
    Ok(ip)
}

fn behavior_of(spec: &NatSpec) -> Result<NatBehavior, String> {
    let what = format!("NAT {:?}", spec.name);
    let base = spec.kind.map(NatBehavior::preset);
    let pick = |field: &str| format!("{what}: give `kind` or `{field}`");
    let mut behavior = NatBehavior {
        mapping: spec
            .mapping
            .or(base.map(|b| b.mapping))
            .ok_or_else(|| pick("mapping"))?,
        allocation: spec
            .allocation
            .or(base.map(|b| b.allocation))
            .ok_or_else(|| pick("allocation"))?,
        filtering: spec
            .filtering
            .or(base.map(|b| b.filtering))
            .ok_or_else(|| pick("filtering"))?,
        mapping_timeout: DEFAULT_MAPPING_TIMEOUT,
        hairpin: spec.hairpin,
    };
    if let Some(timeout) = &spec.timeout {
        behavior.mapping_timeout = humantime::parse_duration(timeout)
            .map_err(|e| format!("{what}: timeout {timeout:?}: {e}"))?;
    }
    Ok(behavior)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the name {name:?} must be 1-32 letters, digits, '-' or '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME_BEHIND_CGNAT: &str = r#"
        [[nat]]
        name = "home"
        kind = "port-restricted"
        behind = "carrier"
        timeout = "45s"

        [[nat]]
        name = "carrier"
        kind = "symmetric-sequential"
        uplink = { latency = "20ms", bandwidth = "100Mbit" }

        [[host]]
        name = "laptop"
        behind = "home"
        link = { latency = "2ms", loss = 0.01 }

        [[host]]
        name = "server"
    "#;

    #[test]
    fn a_cgnat_topology_resolves_parents_first_with_addresses() {
        let net = Topology::from_toml(HOME_BEHIND_CGNAT)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(net.nats[0].name, "carrier");
        assert_eq!(net.nats[0].parent, None);
        assert_eq!(net.nats[0].external_ip, Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(net.nats[1].name, "home");
        assert_eq!(net.nats[1].parent, Some(0));
        assert_eq!(net.nats[1].external_ip, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(
            net.nats[1].behavior.mapping_timeout,
            Duration::from_secs(45)
        );
        assert_eq!(net.nats[0].uplink.bandwidth_bps, Some(100_000_000));
        let laptop = &net.hosts[net.host("laptop").unwrap()];
        assert_eq!(laptop.ip, Ipv4Addr::new(10, 0, 1, 10));
        assert_eq!(laptop.link.loss, 0.01);
        assert_eq!(net.nat_chain(laptop.parent), vec![1, 0]);
        let server = &net.hosts[net.host("server").unwrap()];
        assert_eq!(server.ip, Ipv4Addr::new(203, 0, 113, 2));
        assert_eq!(server.parent, None);
    }

    #[test]
    fn bad_descriptions_are_refused_with_the_reason() {
        let cases = [
            (
                "[[host]]\nname = \"a\"\nbehind = \"nope\"\n",
                "which is no NAT",
            ),
            (
                "[[nat]]\nname = \"a\"\nkind = \"full-cone\"\nbehind = \"b\"\n[[nat]]\nname = \"b\"\nkind = \"full-cone\"\nbehind = \"a\"\n",
                "cycle",
            ),
            ("[[nat]]\nname = \"a\"\n", "give `kind` or `mapping`"),
            (
                "[[host]]\nname = \"a\"\nlink = { loss = 2.0 }\n",
                "not between 0 and 1",
            ),
            (
                "[[host]]\nname = \"a\"\n[[host]]\nname = \"a\"\n",
                "used twice",
            ),
            (
                "[[host]]\nname = \"a\"\nlink = { bandwidth = \"fast\" }\n",
                "expected a number",
            ),
        ];
        for (text, expected) in cases {
            let err = Topology::from_toml(text)
                .and_then(|t| t.resolve())
                .unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(Topology::from_toml("[[host]]\nname = \"a\"\nspeed = 1\n").is_err());
    }

    #[test]
    fn bandwidth_units() {
        assert_eq!(parse_bandwidth("10Mbit"), Ok(10_000_000));
        assert_eq!(parse_bandwidth("1.5 Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_bandwidth("500kbit"), Ok(500_000));
        assert!(parse_bandwidth("10 furlongs").is_err());
    }
}
