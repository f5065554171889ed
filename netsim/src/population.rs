//! `mesh netsim population [--pairs N] [--seed S]`: how a population of connections would fare —
//! N pairs (1,000 unless told) whose client site and host site are each drawn at random from a
//! fixed mix of site types, each pair run once as the [`matrix`] runs a pair (an
//! interactive shell that must answer a typed line).
//!
//! The mix ([`MIX`]): 20 % full cone or public (half each), 45 % port-restricted, 10 %
//! address-restricted, 10 % symmetric with random ports, 5 % symmetric with sequential ports,
//! 5 % port-restricted behind a carrier-grade NAT, 5 % UDP blocked.
//!
//! Draws: one ChaCha8 generator seeded with S gives, pair after pair, the client's site, the
//! host's site and the pair's own run seed ([`draws`]). So a seed gives the same population
//! every time, and the first pairs of a larger population are the pairs of a smaller one.
//!
//! Latencies ([`LATENCIES`]): 50 ms one way between each site and the coordinator, and between
//! the two sites. A host's access link sits between it and its NAT (or the internet), a NAT's
//! uplink between it and the network above, and the internet adds nothing; so the coordinator's
//! access link and each side's are 25 ms and every NAT's uplink 0 ms: site ↔ coordinator is
//! 25 + 25 and site ↔ site 25 + 25, behind one NAT or two. (A carrier-grade NAT adds no delay
//! of its own.)
//!
//! The report ([`Population`]): pairs run; how many went direct, of all pairs and of those
//! where RFC 4787 reasoning says a direct path is possible ([`matrix::expected`]); relayed;
//! failed (which should never happen: `mesh netsim population` exits 1 if any does); time to
//! a direct path (p50, p95, nearest rank, virtual ms) over the pairs that went direct; and a
//! breakdown by (client site, host site). Pairs run in parallel on worker threads
//! ([`matrix::parallel_map`]); the report does not depend on how.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::matrix::{self, Latencies, Site, direct_times, ms_cell, percentile};
use crate::topology::NatKind;

/// Pairs when not told.
pub const DEFAULT_PAIRS: usize = 1000;
/// The seed when not told.
pub const DEFAULT_SEED: u64 = 1;

/// 50 ms one way site ↔ coordinator and site ↔ site (see the module docs).
pub const LATENCIES: Latencies = Latencies {
    coordinator: Duration::from_millis(25),
    site: Duration::from_millis(25),
    nat_uplink: Some(Duration::ZERO),
};

/// The site mix, in percent of sites (they add up to 100).
pub const MIX: [(Site, u32); 8] = [
    (Site::Public, 10),
    (Site::Nat(NatKind::FullCone), 10),
    (Site::Nat(NatKind::PortRestricted), 45),
    (Site::Nat(NatKind::AddressRestricted), 10),
    (Site::Nat(NatKind::SymmetricRandom), 10),
    (Site::Nat(NatKind::SymmetricSequential), 5),
    (Site::PortRestrictedBehindCgnat, 5),
    (Site::UdpBlocked, 5),
];

/// One site drawn from [`MIX`].
pub fn draw_site(rng: &mut impl Rng) -> Site {
    let mut roll = rng.random_range(0..100u32);
    for (site, percent) in MIX {
        if roll < percent {
            return site;
        }
        roll -= percent;
    }
    // The shares add up to 100, so the loop has returned (a unit test checks).
    Site::Nat(NatKind::PortRestricted)
}

/// One pair as drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    /// Where the client sits.
    pub client: Site,
    /// Where the host sits.
    pub host: Site,
    /// The seed of the pair's run.
    pub seed: u64,
}

/// The population of `pairs` pairs drawn with `seed`: for each pair in turn, the client's
/// site, the host's site, then the run's seed, from one ChaCha8 generator.
pub fn draws(pairs: usize, seed: u64) -> Vec<Draw> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..pairs)
        .map(|_| Draw {
            client: draw_site(&mut rng),
            host: draw_site(&mut rng),
            seed: rng.next_u64(),
        })
        .collect()
}

/// One pair's run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairRun {
    /// Its place in the population (from 0).
    pub index: usize,
    /// The client's site.
    pub client: String,
    /// The host's site.
    pub host: String,
    /// What RFC 4787 reasoning expects: `direct` or `relay`.
    pub expected: String,
    /// The run's seed.
    pub seed: u64,
    /// `direct`, `relay` or `failed`.
    pub observed: String,
    /// Virtual milliseconds from the exec's start to the direct path, if there was one.
    pub time_to_direct_ms: Option<f64>,
    /// How the exec ended.
    pub outcome: String,
}

/// One (client site, host site) combination's line of the breakdown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breakdown {
    /// The client's site.
    pub client: String,
    /// The host's site.
    pub host: String,
    /// What RFC 4787 reasoning expects.
    pub expected: String,
    /// Pairs drawn with these sites.
    pub pairs: usize,
    /// Of them, direct.
    pub direct: usize,
    /// Relayed.
    pub relay: usize,
    /// Failed.
    pub failed: usize,
    /// `direct / pairs`.
    pub direct_share: f64,
}

/// The report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Population {
    /// Pairs run.
    pub pairs: usize,
    /// The seed the population was drawn with.
    pub seed: u64,
    /// Pairs that went direct.
    pub direct: usize,
    /// `direct / pairs`.
    pub direct_share: f64,
    /// Pairs where a direct path is possible ([`matrix::expected`] says `direct`).
    pub direct_possible: usize,
    /// Of those, the ones that went direct.
    pub direct_of_possible: usize,
    /// `direct_of_possible / direct_possible`.
    pub direct_of_possible_share: f64,
    /// Pairs relayed.
    pub relay: usize,
    /// `relay / pairs`.
    pub relay_share: f64,
    /// Pairs that failed (no session, or the typed line did not come back).
    pub failed: usize,
    /// `failed / pairs`.
    pub failed_share: f64,
    /// Median time to a direct path over the pairs that went direct (virtual ms).
    pub time_to_direct_p50_ms: Option<f64>,
    /// 95th percentile of the same.
    pub time_to_direct_p95_ms: Option<f64>,
    /// By (client site, host site), in the matrix's site order.
    pub breakdown: Vec<Breakdown>,
    /// Every pair's run, in population order.
    pub runs: Vec<PairRun>,
}

/// `part / whole`, 0 when there is no whole.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A site's place in the table order.
fn rank(site: Site) -> usize {
    Site::PAIRED
        .iter()
        .position(|&s| s == site)
        .unwrap_or(Site::PAIRED.len())
}

/// Draws `pairs` pairs with `seed` and runs each, in parallel.
pub fn run(pairs: usize, seed: u64) -> Population {
    let draws = draws(pairs, seed);
    let runs = matrix::parallel_map(&draws, |d| {
        matrix::run_seed(d.client, d.host, LATENCIES, d.seed)
    });
    summarize(seed, &draws, runs)
}

/// The report of `draws` and their runs (in the same order).
pub fn summarize(seed: u64, draws: &[Draw], runs: Vec<matrix::Run>) -> Population {
    let times = direct_times(&runs);
    let mut by_sites: BTreeMap<(usize, usize), (Site, Site, [usize; 3])> = BTreeMap::new();
    let mut direct_possible = 0;
    let mut direct_of_possible = 0;
    let runs: Vec<PairRun> = draws
        .iter()
        .zip(runs)
        .enumerate()
        .map(|(index, (d, r))| {
            let expected = matrix::expected(d.client, d.host);
            let counts = &mut by_sites
                .entry((rank(d.client), rank(d.host)))
                .or_insert((d.client, d.host, [0; 3]))
                .2;
            match r.observed.as_str() {
                "direct" => counts[0] += 1,
                "relay" => counts[1] += 1,
                _ => counts[2] += 1,
            }
            if expected == "direct" {
                direct_possible += 1;
                if r.observed == "direct" {
                    direct_of_possible += 1;
                }
            }
            PairRun {
                index,
                client: d.client.name().into(),
                host: d.host.name().into(),
                expected: expected.into(),
                seed: d.seed,
                observed: r.observed,
                time_to_direct_ms: r.time_to_direct_ms,
                outcome: r.outcome,
            }
        })
        .collect();
    let count = |what: &str| runs.iter().filter(|r| r.observed == what).count();
    let (direct, relay) = (count("direct"), count("relay"));
    let failed = runs.len() - direct - relay;
    let breakdown = by_sites
        .into_values()
        .map(|(client, host, [direct, relay, failed])| Breakdown {
            client: client.name().into(),
            host: host.name().into(),
            expected: matrix::expected(client, host).into(),
            pairs: direct + relay + failed,
            direct,
            relay,
            failed,
            direct_share: share(direct, direct + relay + failed),
        })
        .collect();
    Population {
        pairs: runs.len(),
        seed,
        direct,
        direct_share: share(direct, runs.len()),
        direct_possible,
        direct_of_possible,
        direct_of_possible_share: share(direct_of_possible, direct_possible),
        relay,
        relay_share: share(relay, runs.len()),
        failed,
        failed_share: share(failed, runs.len()),
        time_to_direct_p50_ms: percentile(&times, 50.0),
        time_to_direct_p95_ms: percentile(&times, 95.0),
        breakdown,
        runs,
    }
}

/// The report as text: the totals, then the breakdown.
pub fn to_text(p: &Population) -> String {
    use std::fmt::Write as _;
    let percent = |share: f64| format!("{:.1} %", share * 100.0);
    let mut out = format!(
        "{} pairs drawn with seed {}; 50 ms one way site to site and site to coordinator\n\n",
        p.pairs, p.seed
    );
    let _ = writeln!(
        out,
        "direct           {:>6}  {:>7} of all pairs",
        p.direct,
        percent(p.direct_share)
    );
    let _ = writeln!(
        out,
        "direct possible  {:>6}  (RFC 4787); {} of them went direct ({})",
        p.direct_possible,
        p.direct_of_possible,
        percent(p.direct_of_possible_share)
    );
    let _ = writeln!(
        out,
        "relay            {:>6}  {:>7}",
        p.relay,
        percent(p.relay_share)
    );
    let _ = writeln!(
        out,
        "failed           {:>6}  {:>7}",
        p.failed,
        percent(p.failed_share)
    );
    let _ = writeln!(
        out,
        "time to direct   p50 {} ms, p95 {} ms\n",
        ms_cell(p.time_to_direct_p50_ms),
        ms_cell(p.time_to_direct_p95_ms)
    );
    let _ = writeln!(
        out,
        "{:<22} {:<22} {:<9} {:>5} {:>6} {:>5} {:>6} {:>8}",
        "client (a)", "host (b)", "expected", "pairs", "direct", "relay", "failed", "direct %"
    );
    for b in &p.breakdown {
        let _ = writeln!(
            out,
            "{:<22} {:<22} {:<9} {:>5} {:>6} {:>5} {:>6} {:>8}",
            b.client,
            b.host,
            b.expected,
            b.pairs,
            b.direct,
            b.relay,
            b.failed,
            percent(b.direct_share)
        );
    }
    let _ = writeln!(
        out,
        "\n{} pairs: {} direct ({}), {} relay, {} failed",
        p.pairs,
        p.direct,
        percent(p.direct_share),
        p.relay,
        p.failed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_adds_up_to_100_percent_of_distinct_sites() {
        assert_eq!(MIX.iter().map(|(_, p)| p).sum::<u32>(), 100);
        for (i, (site, _)) in MIX.iter().enumerate() {
            assert!(Site::PAIRED.contains(site), "{site:?}");
            assert!(!MIX[..i].iter().any(|(s, _)| s == site), "{site:?} twice");
        }
    }

    #[test]
    fn a_hundred_thousand_draws_are_within_1_percent_of_the_mix() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 100_000;
        let mut counts = [0u32; MIX.len()];
        for _ in 0..n {
            let site = draw_site(&mut rng);
            let i = MIX.iter().position(|(s, _)| *s == site).unwrap();
            counts[i] += 1;
        }
        for ((site, percent), count) in MIX.iter().zip(counts) {
            let observed = f64::from(count) * 100.0 / f64::from(n);
            assert!(
                (observed - f64::from(*percent)).abs() < 1.0,
                "{}: {observed:.2} % drawn, {percent} % stated",
                site.name()
            );
        }
    }

    #[test]
    fn draws_are_the_same_for_a_seed_and_a_prefix_of_a_larger_population() {
        let small = draws(20, 5);
        assert_eq!(small, draws(20, 5));
        assert_eq!(small[..], draws(200, 5)[..20]);
        assert_ne!(small, draws(20, 6));
        // Each pair has its own run seed.
        let mut seeds: Vec<u64> = small.iter().map(|d| d.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        assert_eq!(seeds.len(), 20);
    }

    #[test]
    fn the_summary_counts_shares_and_breakdown() {
        let pr = Site::Nat(NatKind::PortRestricted);
        let sym = Site::Nat(NatKind::SymmetricRandom);
        let draws = [
            Draw {
                client: pr,
                host: Site::Public,
                seed: 1,
            },
            Draw {
                client: pr,
                host: Site::Public,
                seed: 2,
            },
            Draw {
                client: pr,
                host: pr,
                seed: 3,
            },
            Draw {
                client: sym,
                host: sym,
                seed: 4,
            },
        ];
        let run = |observed: &str, t: Option<f64>| matrix::Run {
            seed: 0,
            observed: observed.into(),
            time_to_direct_ms: t,
            outcome: "exit 0".into(),
        };
        let runs = vec![
            run("direct", Some(300.0)),
            run("direct", Some(100.0)),
            run("relay", None),
            run("relay", None),
        ];
        let p = summarize(9, &draws, runs);
        assert_eq!((p.pairs, p.direct, p.relay, p.failed), (4, 2, 2, 0));
        assert_eq!(p.direct_possible, 3);
        assert_eq!(p.direct_of_possible, 2);
        assert!((p.direct_of_possible_share - 2.0 / 3.0).abs() < 1e-9);
        assert!((p.direct_share + p.relay_share + p.failed_share - 1.0).abs() < 1e-9);
        assert_eq!(p.time_to_direct_p50_ms, Some(100.0));
        assert_eq!(p.time_to_direct_p95_ms, Some(300.0));
        let lines: Vec<(&str, &str, usize, usize)> = p
            .breakdown
            .iter()
            .map(|b| (b.client.as_str(), b.host.as_str(), b.pairs, b.direct))
            .collect();
        assert_eq!(
            lines,
            [
                ("port-restricted", "public", 2, 2),
                ("port-restricted", "port-restricted", 1, 0),
                ("symmetric-random", "symmetric-random", 1, 0),
            ]
        );
        assert_eq!(p.runs[3].expected, "relay");
        assert_eq!(p.runs[1].seed, 2);
        assert!(to_text(&p).contains("4 pairs: 2 direct (50.0 %), 2 relay, 0 failed"));
    }
}
