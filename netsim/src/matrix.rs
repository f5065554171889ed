//! `mesh netsim matrix [--seeds N]`: every pair of site types — a client at one, a host at the
//! other, the coordinator on the public internet — run as a scenario once per seed (1 to N,
//! 20 unless told), with the outcome RFC 4787 reasoning expects next to the one observed.
//!
//! Expected outcomes ([`expected`]): `direct` where some traversal technique can open a direct
//! path — a public side; two endpoint-independent mappings; an endpoint-dependent side against
//! an endpoint-independent one (birthday probing or, for a sequential allocator, prediction); a
//! shared LAN —, `relay` otherwise: two endpoint-dependent mappings, sequential or random (each
//! side would have to predict the other's next mapping exactly, and any third mapping made in
//! between breaks the prediction; Tailscale relays hard × hard too), or UDP blocked on either
//! side.
//!
//! Each run opens an interactive shell (as `mesh shell` does) and types a line; a run counts as
//! connected only if the shell answers it. A pair's observed verdict over its seeds
//! ([`verdict`]): `failed` if any seed failed, else `direct` if at least N − ⌊N/20⌋ seeds went
//! direct (19 of 20), else `relay`. Beside it: how many seeds went direct, relay and failed,
//! and the time to a direct path (p50 and p95, nearest rank, in virtual milliseconds) over the
//! seeds that went direct. A pair matches when the verdict is the expectation; a `relay` where
//! `direct` was expected is a mismatch, not a failure.
//!
//! Every run is its own paused current-thread runtime ([`Scenario::run`]), so the runs are
//! independent: they run on as many worker threads as the machine has cores
//! ([`parallel_map`]), and the table comes out in pair order, then seed order, whatever the
//! threads did. The full matrix (65 pairs × 20 seeds) takes seconds in a release build — most
//! of the wall time is the simulated agents' fsyncs in their temporary homes, so `TMPDIR` on a
//! tmpfs makes it several times faster —; it is a command to run, not part of the test suite,
//! which runs one seed.
//!
//! [`population`](crate::population) reuses [`scenario`], [`run_seed`] and [`parallel_map`]
//! with other link latencies ([`Latencies`]).

use std::num::NonZero;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::scenario::{Action, ActionKind, ClientSpec, Scenario};
use crate::topology::{HostSpec, LinkSpec, NatKind, NatSpec};

/// How long one pair's run lasts in virtual time.
const RUN_FOR: &str = "15s";
/// How many seeds each pair runs over unless told otherwise.
pub const DEFAULT_SEEDS: u64 = 20;
/// Stack of a worker thread: the main thread's usual 8 MiB, since a simulation's futures nest
/// deeply (a spawned thread's default is 2 MiB).
const WORKER_STACK: usize = 8 * 1024 * 1024;

/// The one-way latencies of a pair's links. A host's access link sits between it and its NAT
/// (or the internet, for a public host); a NAT's uplink between it and the network above. So
/// a site's one-way latency to the internet is its access link plus each of its NATs' uplinks,
/// and between two endpoints it is the sum of both sides' (the internet itself adds nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latencies {
    /// The coordinator's access link (it sits on the internet).
    pub coordinator: Duration,
    /// Each side's access link.
    pub site: Duration,
    /// Each NAT's uplink; `None` leaves the topology's default (1 ms).
    pub nat_uplink: Option<Duration>,
}

impl Latencies {
    /// The matrix's: the coordinator 10 ms from the internet, each side 20 ms plus 1 ms per
    /// NAT.
    pub const MATRIX: Self = Self {
        coordinator: Duration::from_millis(10),
        site: Duration::from_millis(20),
        nat_uplink: None,
    };
}

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

/// What one run (one pair, one seed) showed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Run {
    /// The seed.
    pub seed: u64,
    /// `direct`, `relay` or `failed` (no session, or the typed line did not come back).
    pub observed: String,
    /// Virtual milliseconds from the exec's start to the direct path, if there was one.
    pub time_to_direct_ms: Option<f64>,
    /// How the exec ended (or why the run could not start).
    pub outcome: String,
}

/// One pair over every seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The client's site.
    pub a: String,
    /// The host's site.
    pub b: String,
    /// What RFC 4787 reasoning expects: `direct` or `relay`.
    pub expected: String,
    /// Seeds that went direct.
    pub direct: usize,
    /// Seeds that connected through the relay.
    pub relay: usize,
    /// Seeds that failed.
    pub failed: usize,
    /// The verdict over the seeds ([`verdict`]): `direct`, `relay` or `failed`.
    pub observed: String,
    /// Median time to a direct path over the seeds that went direct (virtual ms).
    pub time_to_direct_p50_ms: Option<f64>,
    /// 95th percentile of the same.
    pub time_to_direct_p95_ms: Option<f64>,
    /// Each seed's run, in seed order.
    pub runs: Vec<Run>,
}

impl Row {
    /// The row of a pair from its runs.
    pub fn new(a: Site, b: Site, runs: Vec<Run>) -> Self {
        let count = |what: &str| runs.iter().filter(|r| r.observed == what).count();
        let (direct, relay, failed) = (count("direct"), count("relay"), count("failed"));
        let times = direct_times(&runs);
        Self {
            a: a.name().into(),
            b: b.name().into(),
            expected: expected(a, b).into(),
            direct,
            relay,
            failed,
            observed: verdict(direct, failed, runs.len()).into(),
            time_to_direct_p50_ms: percentile(&times, 50.0),
            time_to_direct_p95_ms: percentile(&times, 95.0),
            runs,
        }
    }

    /// Whether the verdict is the expectation.
    pub fn as_expected(&self) -> bool {
        self.expected == self.observed
    }
}

/// The whole matrix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Matrix {
    /// Seeds per pair (1 to this).
    pub seeds: u64,
    /// Pairs whose verdict is the expectation.
    pub as_expected: usize,
    /// Pairs with a failed seed.
    pub failed: usize,
    /// Every pair, in [`pairs`] order.
    pub pairs: Vec<Row>,
}

/// A pair's verdict over `seeds` runs: `failed` if any failed; `direct` if at least
/// `seeds − ⌊seeds/20⌋` went direct (19 of 20, every one of fewer than 20); `relay` otherwise.
pub fn verdict(direct: usize, failed: usize, seeds: usize) -> &'static str {
    if failed > 0 {
        "failed"
    } else if direct >= seeds - seeds / 20 {
        "direct"
    } else {
        "relay"
    }
}

/// The times to a direct path of the runs that went direct, sorted.
pub(crate) fn direct_times(runs: &[Run]) -> Vec<f64> {
    let mut times: Vec<f64> = runs
        .iter()
        .filter(|r| r.observed == "direct")
        .filter_map(|r| r.time_to_direct_ms)
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// The `p`-th percentile of `sorted` (ascending) by nearest rank: the smallest value with at
/// least `p` % of the values at or below it. `None` for no values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // The rank is at most the length: the cast cannot truncate anything that matters.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Maps `f` over `items` on worker threads — as many as [`std::thread::available_parallelism`]
/// says, this thread being one of them — and returns the results in `items`' order. Each
/// worker takes the next item not yet taken, so slow items do not hold the others up. A panic
/// in `f` is raised again here.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, NonZero::get)
        .min(items.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        // A worker that cannot be started leaves its share to the others (this thread works
        // too, so there is always one).
        let helpers: Vec<_> = (1..workers)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .stack_size(WORKER_STACK)
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut done = work();
        for helper in helpers {
            match helper.join() {
                Ok(more) => done.extend(more),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Puts a side at `site`: its NATs (named after `side`) and the host itself.
fn place(
    site: Site,
    side: &str,
    latencies: Latencies,
    nats: &mut Vec<NatSpec>,
    hosts: &mut Vec<HostSpec>,
) {
    let uplink = latencies.nat_uplink.map(link).unwrap_or_default();
    let access = link(latencies.site);
    let first_new_nat = nats.len();
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
    for nat in &mut nats[first_new_nat..] {
        nat.uplink = uplink.clone();
    }
    hosts.push(HostSpec {
        name: side.into(),
        behind,
        ip: None,
        link: access,
    });
}

/// A link of this one-way latency.
fn link(latency: Duration) -> LinkSpec {
    LinkSpec {
        latency: Some(humantime::format_duration(latency).to_string()),
        ..LinkSpec::default()
    }
}

/// The scenario of one pair: the coordinator on the internet, a client at `a` and a host at
/// `b`, linked as `latencies` says; at 2 s the client opens an interactive shell on the host
/// and types a line.
pub fn scenario(a: Site, b: Site, latencies: Latencies) -> Scenario {
    let mut nats = Vec::new();
    let mut hosts = vec![HostSpec {
        name: "coordinator".into(),
        behind: None,
        ip: None,
        link: link(latencies.coordinator),
    }];
    place(a, "client", latencies, &mut nats, &mut hosts);
    place(b, "host", latencies, &mut nats, &mut hosts);
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

/// Runs one pair once with `seed`. A run whose setup fails, or that panics, failed.
pub fn run_seed(a: Site, b: Site, latencies: Latencies, seed: u64) -> Run {
    let scenario = scenario(a, b, latencies);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| scenario.run(seed)))
        .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(panic.as_ref()))));
    let (observed, time_to_direct_ms, outcome) = match result {
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
    Run {
        seed,
        observed,
        time_to_direct_ms,
        outcome,
    }
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs every pair with each seed from 1 to `seeds`, in parallel.
pub fn run(seeds: u64) -> Matrix {
    let pairs = pairs();
    let jobs: Vec<(Site, Site, u64)> = pairs
        .iter()
        .flat_map(|&(a, b)| (1..=seeds).map(move |seed| (a, b, seed)))
        .collect();
    let mut runs = parallel_map(&jobs, |&(a, b, seed)| {
        run_seed(a, b, Latencies::MATRIX, seed)
    })
    .into_iter();
    // The runs come back in job order: each pair's seeds together, in seed order.
    let per_pair = usize::try_from(seeds).unwrap_or(usize::MAX);
    let rows: Vec<Row> = pairs
        .iter()
        .map(|&(a, b)| Row::new(a, b, runs.by_ref().take(per_pair).collect()))
        .collect();
    Matrix {
        seeds,
        as_expected: rows.iter().filter(|r| r.as_expected()).count(),
        failed: rows.iter().filter(|r| r.observed == "failed").count(),
        pairs: rows,
    }
}

/// Virtual milliseconds as a table cell.
pub(crate) fn ms_cell(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |t| format!("{t:.0}"))
}

/// The table as text, with the summary line last.
pub fn to_text(matrix: &Matrix) -> String {
    use std::fmt::Write as _;
    let seeds = usize::try_from(matrix.seeds).unwrap_or(usize::MAX);
    let mut out = format!(
        "seeds 1 to {}; a pair is direct when at least {} of {} seeds went direct\n\n",
        matrix.seeds,
        seeds - seeds / 20,
        matrix.seeds
    );
    let _ = writeln!(
        out,
        "{:<22} {:<22} {:<9} {:>6} {:>6} {:>6}  {:<8} {:>7} {:>7}",
        "client (a)",
        "host (b)",
        "expected",
        "direct",
        "relay",
        "failed",
        "observed",
        "p50 ms",
        "p95 ms"
    );
    for r in &matrix.pairs {
        let mark = if r.as_expected() { "" } else { "  ≠" };
        let _ = writeln!(
            out,
            "{:<22} {:<22} {:<9} {:>6} {:>6} {:>6}  {:<8} {:>7} {:>7}{mark}",
            r.a,
            r.b,
            r.expected,
            r.direct,
            r.relay,
            r.failed,
            r.observed,
            ms_cell(r.time_to_direct_p50_ms),
            ms_cell(r.time_to_direct_p95_ms),
        );
    }
    let _ = writeln!(
        out,
        "\n{} of {} pairs as expected; {} failed",
        matrix.as_expected,
        matrix.pairs.len(),
        matrix.failed
    );
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

    #[test]
    fn the_verdict_needs_19_of_20_direct_and_no_failure() {
        assert_eq!(verdict(20, 0, 20), "direct");
        assert_eq!(verdict(19, 0, 20), "direct");
        assert_eq!(verdict(18, 0, 20), "relay");
        assert_eq!(verdict(0, 0, 20), "relay");
        assert_eq!(verdict(19, 1, 20), "failed");
        assert_eq!(verdict(1, 0, 1), "direct");
        assert_eq!(verdict(0, 0, 1), "relay");
        assert_eq!(verdict(9, 0, 10), "relay");
        assert_eq!(verdict(38, 0, 40), "direct");
        assert_eq!(verdict(37, 0, 40), "relay");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(10.0));
        assert_eq!(percentile(&values, 95.0), Some(19.0));
        assert_eq!(percentile(&values, 100.0), Some(20.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_row_counts_its_seeds_and_times_only_the_direct_ones() {
        let run = |seed, observed: &str, t: Option<f64>| Run {
            seed,
            observed: observed.into(),
            time_to_direct_ms: t,
            outcome: "exit 0".into(),
        };
        let mut runs: Vec<Run> = (1..=19)
            .map(|s| {
                run(
                    s,
                    "direct",
                    Some(200.0 + f64::from(u32::try_from(s).unwrap_or(0))),
                )
            })
            .collect();
        runs.push(run(20, "relay", None));
        let row = Row::new(Site::Public, Site::Nat(NatKind::PortRestricted), runs);
        assert_eq!((row.direct, row.relay, row.failed), (19, 1, 0));
        assert_eq!(row.observed, "direct");
        assert!(row.as_expected());
        assert_eq!(row.time_to_direct_p50_ms, Some(210.0));
        assert_eq!(row.time_to_direct_p95_ms, Some(219.0));
        assert_eq!(row.runs.len(), 20);
    }

    #[test]
    fn parallel_map_keeps_the_order_of_its_items() {
        let items: Vec<u64> = (0..500).collect();
        let out = parallel_map(&items, |&i| {
            // Uneven work, so workers finish out of order.
            if i % 7 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(parallel_map(&[] as &[u64], |&i| i).is_empty());
    }

    #[test]
    fn latencies_reach_every_link_of_a_pair() {
        let latencies = Latencies {
            coordinator: Duration::from_millis(25),
            site: Duration::from_millis(25),
            nat_uplink: Some(Duration::ZERO),
        };
        let s = scenario(Site::PortRestrictedBehindCgnat, Site::Public, latencies);
        for host in &s.hosts {
            assert_eq!(host.link.latency.as_deref(), Some("25ms"), "{}", host.name);
        }
        assert_eq!(s.nats.len(), 2);
        for nat in &s.nats {
            assert_eq!(nat.uplink.latency.as_deref(), Some("0s"), "{}", nat.name);
        }
        let network = s.topology().resolve().unwrap_or_else(|e| panic!("{e}"));
        // client → its NATs → the internet → the host (public), and → the coordinator.
        let client = &network.hosts[network.host("client").unwrap_or(usize::MAX)];
        let one_way = |far: &str| {
            let far = &network.hosts[network.host(far).unwrap_or(usize::MAX)];
            client.link.latency
                + network
                    .nats
                    .iter()
                    .map(|n| n.uplink.latency)
                    .sum::<Duration>()
                + far.link.latency
        };
        assert_eq!(one_way("host"), Duration::from_millis(50));
        assert_eq!(one_way("coordinator"), Duration::from_millis(50));
        // The matrix's own are as they were.
        let m = scenario(
            Site::Nat(NatKind::FullCone),
            Site::Public,
            Latencies::MATRIX,
        );
        let latency = |name: &str| {
            m.hosts
                .iter()
                .find(|h| h.name == name)
                .and_then(|h| h.link.latency.clone())
        };
        assert_eq!(latency("coordinator").as_deref(), Some("10ms"));
        assert_eq!(latency("client").as_deref(), Some("20ms"));
        assert_eq!(m.nats[0].uplink.latency, None);
    }
}
