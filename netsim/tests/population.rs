//! A small population (20 pairs) runs with no failure, its counts and shares add up, and the
//! same seed draws and runs the same population again.

#![allow(clippy::unwrap_used)]

use mesh_netsim::matrix;
use mesh_netsim::population::{self, draws};

#[test]
fn twenty_pairs_all_connect_their_shares_add_up_and_a_seed_replays_them() {
    let report = population::run(20, 3);
    assert_eq!(report.pairs, 20);
    assert_eq!(report.runs.len(), 20);
    assert_eq!(
        report.failed,
        0,
        "{}",
        serde_json::to_string_pretty(&report.runs).unwrap()
    );
    assert_eq!(report.direct + report.relay + report.failed, report.pairs);
    let shares = report.direct_share + report.relay_share + report.failed_share;
    assert!((shares - 1.0).abs() < 1e-9, "shares add up to {shares}");
    assert_eq!(
        report.breakdown.iter().map(|b| b.pairs).sum::<usize>(),
        report.pairs
    );
    assert_eq!(
        report.breakdown.iter().map(|b| b.direct).sum::<usize>(),
        report.direct
    );
    assert!(report.direct_of_possible <= report.direct_possible);
    assert!(report.direct_of_possible <= report.direct);

    // Each pair is the draw for its place, run with the draw's seed.
    for (run, draw) in report.runs.iter().zip(draws(20, 3)) {
        assert_eq!(run.client, draw.client.name());
        assert_eq!(run.host, draw.host.name());
        assert_eq!(run.seed, draw.seed);
        assert_eq!(run.expected, matrix::expected(draw.client, draw.host));
        // A pair that went direct says when.
        assert_eq!(
            run.time_to_direct_ms.is_some(),
            run.observed == "direct",
            "{run:?}"
        );
    }
    // Every pair with a public host goes direct today (the host's address is listed).
    for run in report
        .runs
        .iter()
        .filter(|r| r.host == "public" && r.client != "udp-blocked")
    {
        assert_eq!(run.observed, "direct", "{run:?}");
    }

    assert_eq!(population::run(20, 3), report, "seed 3 did not replay");
}
