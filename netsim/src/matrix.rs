//! `mesh netsim matrix`: every pair of site types — a client at one, a host at the other, the
//! coordinator on the public internet — run as a scenario, with the outcome RFC 4787 reasoning
//! expects next to the one observed.
//!
//! Expected outcomes: `direct` where some traversal technique can open a direct path (a public
//! side; two endpoint-independent mappings; an endpoint-dependent side against an
//! endpoint-independent one, by birthday probing or, for a sequential allocator, prediction;
//! two sequential allocators, predicted; a shared LAN), `relay` otherwise (two endpoint-
//! dependent mappings of which one is random; UDP blocked on either side). Each pair opens an
//! interactive shell (as `mesh shell` does) and types a line; a pair counts as connected only if
//! the shell answers it. Observed values fall short of the expectation until hole punching
//! exists: a direct path today is only to an address the host lists (its LAN address, or the
//! mapping its NAT made toward the coordinator); everything else goes through the relay (over
//! TCP when UDP is blocked), and `failed` would mean no session at all.

use serde::Serialize;

use crate::scenario::{Action, ActionKind, ClientSpec, Scenario};
use crate::topology::{HostSpec, LinkSpec, NatKind, NatSpec};

/// How long one pair's run lasts in virtual time.
const RUN_FOR: &str = "15s";
/// The seed of every pair's run.
const SEED: u64 = 7;

/// Where one side of a pair sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// On the internet.
    Public,
    /// Behind one NAT of this kind.
    Nat(NatKind),
    /// Behind a port-restricted home NAT behind a port-restricted carrier-grade NAT.
    PortRestrictedBehindCgnat,
    /// Behind a NAT whose network drops all UDP.
    UdpBlocked,
    /// On the same LAN as the other side, behind one port-restricted NAT without hairpinning
    /// (only ever paired with itself).
    SameLanNoHairpin,
}

impl Site {
    /// The sites paired with one another (every ordered pair), in table order.
    pub const PAIRED: [Self; 8] = [
        Self::Public,
        Self::Nat(NatKind::FullCone),
        Self::Nat(NatKind::AddressRestricted),
        Self::Nat(NatKind::PortRestricted),
        Self::Nat(NatKind::SymmetricRandom),
        Self::Nat(NatKind::SymmetricSequential),
        Self::PortRestrictedBehindCgnat,
        Self::UdpBlocked,
    ];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Nat(kind) => kind.name(),
            Self::PortRestrictedBehindCgnat => "port-restricted-cgnat",
            Self::UdpBlocked => "udp-blocked",
            Self::SameLanNoHairpin => "same-lan-no-hairpin",
        }
    }

    /// How its NAT maps, for the expected outcome.
    fn mapping(self) -> Mapping {
        match self {
            Self::Public => Mapping::Open,
            Self::Nat(NatKind::FullCone) => Mapping::Eim { open_filter: true },
            Self::Nat(NatKind::AddressRestricted | NatKind::PortRestricted)
            | Self::PortRestrictedBehindCgnat
            | Self::SameLanNoHairpin => Mapping::Eim { open_filter: false },
            Self::Nat(NatKind::SymmetricRandom) => Mapping::Edm { sequential: false },
            Self::Nat(NatKind::SymmetricSequential) => Mapping::Edm { sequential: true },
            Self::UdpBlocked => Mapping::Blocked,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mapping {
    Open,
    Eim { open_filter: bool },
    Edm { sequential: bool },
    Blocked,
}

/// The outcome RFC 4787 reasoning expects for a client at `a` and a host at `b`: `direct` or
/// `relay`.
///
/// `direct` when a direct path can be opened: a public side (the other side dials it, or is
/// dialed back through its own mapping); two endpoint-independent mappings (each side learns
/// the other's one mapping from the coordinator and both send at once); an endpoint-dependent
/// mapping against an endpoint-independent one (the endpoint-dependent side opens many
/// mappings toward the other's known one and the other probes many ports — birthday probing —,
/// or predicts a sequential allocator's next port); a shared LAN (the LAN addresses).
///
/// `relay` when two endpoint-dependent mappings meet, sequential or random: each side's
/// mapping toward the other is a new one, so both would have to predict the other's next
/// mapping exactly, and any third mapping either NAT makes in between (another flow of the
/// same machine, another machine behind a shared NAT) breaks it; Tailscale relays hard × hard
/// too. And when either side's UDP is blocked (only a relay over TCP reaches it).
pub fn expected(a: Site, b: Site) -> &'static str {
    use Mapping::{Blocked, Edm, Eim, Open};
    if a == Site::SameLanNoHairpin && b == Site::SameLanNoHairpin {
        return "direct";
    }
    match (a.mapping(), b.mapping()) {
        (Blocked, _) | (_, Blocked) => "relay",
        (Open, _) | (_, Open) | (Eim { .. }, Eim { .. }) => "direct",
        // Birthday probing from the endpoint-dependent side, or prediction of a sequential
        // allocator.
        (Eim { .. }, Edm { .. }) | (Edm { .. }, Eim { .. }) => "direct",
        (Edm { .. }, Edm { .. }) => "relay",
    }
}

/// One pair's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The client's site.
    pub a: String,
    /// The host's site.
    pub b: String,
    /// What RFC 4787 reasoning expects.
    pub expected: String,
    /// What happened: `direct`, `relay` or `failed`.
    pub observed: String,
    /// Virtual milliseconds from the exec's start to the direct path, if there was one.
    pub time_to_direct_ms: Option<f64>,
    /// How the exec ended.
    pub outcome: String,
}

/// Puts a side at `site`: its NATs (named after `side`) and the host itself.
fn place(site: Site, side: &str, nats: &mut Vec<NatSpec>, hosts: &mut Vec<HostSpec>) {
    let link = LinkSpec {
        latency: Some("20ms".into()),
        ..LinkSpec::default()
    };
    let behind = match site {
        Site::Public => None,
        Site::Nat(kind) => {
            nats.push(NatSpec {
                name: format!("{side}-nat"),
                kind: Some(kind),
                ..NatSpec::default()
            });
            Some(format!("{side}-nat"))
        }
        Site::PortRestrictedBehindCgnat => {
            nats.push(NatSpec {
                name: format!("{side}-carrier"),
                kind: Some(NatKind::PortRestricted),
                ..NatSpec::default()
            });
            nats.push(NatSpec {
                name: format!("{side}-nat"),
                kind: Some(NatKind::PortRestricted),
                behind: Some(format!("{side}-carrier")),
                ..NatSpec::default()
            });
            Some(format!("{side}-nat"))
        }
        Site::UdpBlocked => {
            nats.push(NatSpec {
                name: format!("{side}-nat"),
                kind: Some(NatKind::PortRestricted),
                block_udp: true,
                ..NatSpec::default()
            });
            Some(format!("{side}-nat"))
        }
        Site::SameLanNoHairpin => {
            if !nats.iter().any(|n| n.name == "lan-nat") {
                nats.push(NatSpec {
                    name: "lan-nat".into(),
                    kind: Some(NatKind::PortRestricted),
                    hairpin: false,
                    ..NatSpec::default()
                });
            }
            Some("lan-nat".into())
        }
    };
    hosts.push(HostSpec {
        name: side.into(),
        behind,
        ip: None,
        link,
    });
}

/// The scenario of one pair.
pub fn scenario(a: Site, b: Site) -> Scenario {
    let mut nats = Vec::new();
    let mut hosts = vec![HostSpec {
        name: "coordinator".into(),
        behind: None,
        ip: None,
        link: LinkSpec {
            latency: Some("10ms".into()),
            ..LinkSpec::default()
        },
    }];
    place(a, "client", &mut nats, &mut hosts);
    place(b, "host", &mut nats, &mut hosts);
    Scenario {
        name: format!("{} → {}", a.name(), b.name()),
        duration: RUN_FOR.into(),
        coordinator: "coordinator".into(),
        agents: vec!["host".into()],
        nats,
        hosts,
        clients: vec![ClientSpec {
            host: "client".into(),
            role: "admin".into(),
        }],
        actions: vec![Action {
            at: "2s".into(),
            what: ActionKind::Exec {
                name: "pair".into(),
                client: "client".into(),
                host: "host".into(),
                // An interactive shell, as `mesh shell` opens, with a line typed into it.
                command: String::new(),
                stdin_bytes: 0,
                input: Some(format!("echo {TYPED}\nexit\n")),
            },
        }],
        expectations: Vec::new(),
    }
}

/// What each pair's shell is asked to echo: its answer proves the session carried both ways.
const TYPED: &str = "hello-through-the-mesh";

/// Every pair: each ordered pair of [`Site::PAIRED`], then the shared LAN.
pub fn pairs() -> Vec<(Site, Site)> {
    let mut pairs: Vec<(Site, Site)> = Site::PAIRED
        .iter()
        .flat_map(|&a| Site::PAIRED.iter().map(move |&b| (a, b)))
        .collect();
    pairs.push((Site::SameLanNoHairpin, Site::SameLanNoHairpin));
    pairs
}

/// Runs one pair.
pub fn run_pair(a: Site, b: Site) -> Row {
    let (observed, time_to_direct_ms, outcome) = match scenario(a, b).run(SEED) {
        Ok(report) => match report.connections.first() {
            Some(c) => {
                let answered = c.output.windows(TYPED.len()).any(|w| w == TYPED.as_bytes());
                let observed = if c.outcome == "exit 0" && answered {
                    c.path.clone()
                } else {
                    "failed".to_owned()
                };
                (observed, c.time_to_direct_ms, c.outcome.clone())
            }
            None => ("failed".to_owned(), None, "no connection".to_owned()),
        },
        // A pair whose setup failed (a side that cannot even enroll) failed.
        Err(e) => ("failed".to_owned(), None, e),
    };
    Row {
        a: a.name().into(),
        b: b.name().into(),
        expected: expected(a, b).into(),
        observed,
        time_to_direct_ms,
        outcome,
    }
}

/// Runs every pair.
pub fn run() -> Vec<Row> {
    pairs().into_iter().map(|(a, b)| run_pair(a, b)).collect()
}

/// The table as text.
pub fn to_text(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<24} {:<24} {:<9} {:<9} {:>10}\n",
        "client (a)", "host (b)", "expected", "observed", "direct ms"
    );
    for r in rows {
        let ms = r
            .time_to_direct_ms
            .map_or_else(|| "-".to_owned(), |t| format!("{t:.0}"));
        let mark = if r.expected == r.observed {
            ""
        } else {
            "  ≠"
        };
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:<9} {:<9} {:>10}{mark}",
            r.a, r.b, r.expected, r.observed, ms
        );
    }
    let matched = rows.iter().filter(|r| r.expected == r.observed).count();
    let _ = writeln!(out, "\n{matched} of {} pairs as expected", rows.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_follow_rfc_4787_reasoning() {
        let sym = Site::Nat(NatKind::SymmetricRandom);
        let seq = Site::Nat(NatKind::SymmetricSequential);
        let pr = Site::Nat(NatKind::PortRestricted);
        // Two endpoint-dependent mappings relay, sequential or not.
        assert_eq!(expected(sym, sym), "relay");
        assert_eq!(expected(sym, seq), "relay");
        assert_eq!(expected(seq, sym), "relay");
        assert_eq!(expected(seq, seq), "relay");
        assert_eq!(expected(pr, sym), "direct");
        assert_eq!(expected(seq, pr), "direct");
        assert_eq!(expected(Site::Public, sym), "direct");
        assert_eq!(expected(sym, Site::Nat(NatKind::FullCone)), "direct");
        assert_eq!(expected(Site::UdpBlocked, Site::Public), "relay");
        assert_eq!(expected(Site::Public, Site::UdpBlocked), "relay");
        assert_eq!(expected(pr, Site::PortRestrictedBehindCgnat), "direct");
        assert_eq!(
            expected(Site::SameLanNoHairpin, Site::SameLanNoHairpin),
            "direct"
        );
        assert_eq!(pairs().len(), 65);
        let relayed = pairs()
            .into_iter()
            .filter(|&(a, b)| expected(a, b) == "relay")
            .count();
        // 15 with UDP blocked on a side, 4 symmetric × symmetric.
        assert_eq!(relayed, 19);
    }
}
