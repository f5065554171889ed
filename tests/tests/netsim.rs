//! `mesh netsim` as a tester uses it: a scenario's JSON report is the same, byte for byte, from
//! two separate processes with the same seed and differs with another seed; failed
//! expectations and bad files exit 1 with one line; the matrix lists every pair (one seed, to
//! stay cheap); a population reports its pairs and replays with its seed.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mesh_tests::mesh_bin;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../netsim/scenarios")
        .join(name)
}

fn netsim(args: &[&str]) -> Output {
    Command::new(mesh_bin())
        .arg("netsim")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn report(seed: &str) -> (Vec<u8>, serde_json::Value) {
    let file = scenario("lossy-path.toml");
    let out = netsim(&["run", file.to_str().unwrap(), "--seed", seed, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value = serde_json::from_slice(&out.stdout).unwrap();
    (out.stdout, value)
}

#[test]
fn the_same_seed_gives_the_same_report_in_two_processes_and_another_seed_another_timeline() {
    let (first, json) = report("42");
    let (second, _) = report("42");
    assert_eq!(first, second, "two runs with seed 42 differ");
    let (_, other) = report("43");
    assert_ne!(
        json["timeline"], other["timeline"],
        "seed 43 replayed seed 42"
    );
    // The report says what a tester needs for each connection.
    let copy = json["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "copy")
        .unwrap();
    assert_eq!(copy["outcome"], "exit 0");
    assert_eq!(copy["path"], "direct");
    assert_eq!(copy["intact"], true);
    assert_eq!(copy["bytes_down"], 200_000);
    let rtt = copy["rtt_ms"].as_f64().unwrap();
    assert!(
        (190.0..400.0).contains(&rtt),
        "100 ms each way: rtt {rtt} ms"
    );
    assert!(
        json["packets"]["dropped"]["Lost"].as_u64().unwrap() > 0,
        "1 % loss lost nothing"
    );
}

#[test]
fn an_unmet_expectation_exits_1_with_one_line_and_still_prints_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("impossible.toml");
    let text_in = std::fs::read_to_string(scenario("lossy-path.toml"))
        .unwrap()
        .replace("direct_within = \"2s\"", "direct_within = \"1ms\"");
    std::fs::write(&file, text_in).unwrap();
    let out = netsim(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("1 expectation(s)"), "{stderr}");
    assert!(
        text(&out.stdout).contains("FAIL copy"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_bad_scenario_file_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.toml", None, "cannot read"),
        ("garbage.toml", Some("name = "), "garbage.toml"),
        (
            "unknown-host.toml",
            Some("name = \"x\"\nduration = \"1s\"\ncoordinator = \"nowhere\"\n"),
            "no host \"nowhere\"",
        ),
    ];
    for (name, content, expected) in cases {
        let file = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&file, content).unwrap();
        }
        let out = netsim(&["run", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

#[test]
fn the_matrix_lists_every_pair_with_expected_and_observed_outcomes() {
    // One seed keeps it cheap; `mesh netsim matrix` (20 seeds) is the measurement.
    let out = netsim(&["matrix", "--seeds", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let matrix: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(matrix["seeds"], 1);
    assert_eq!(matrix["failed"], 0);
    let rows = matrix["pairs"].as_array().unwrap();
    assert_eq!(rows.len(), 65);
    let mut as_expected = 0;
    for row in rows {
        for field in [
            "a",
            "b",
            "expected",
            "observed",
            "direct",
            "relay",
            "failed",
            "time_to_direct_p50_ms",
            "time_to_direct_p95_ms",
            "runs",
        ] {
            assert!(row.get(field).is_some(), "{row}: no {field}");
        }
        let observed = row["observed"].as_str().unwrap();
        assert!(["direct", "relay", "failed"].contains(&observed), "{row}");
        let runs = row["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{row}");
        assert_eq!(runs[0]["seed"], 1, "{row}");
        assert_eq!(runs[0]["observed"], observed, "{row}");
        assert_eq!(
            runs[0]["time_to_direct_ms"].is_number(),
            observed == "direct",
            "{row}"
        );
        assert_eq!(
            row["time_to_direct_p50_ms"].is_number(),
            observed == "direct",
            "{row}"
        );
        as_expected += usize::from(row["expected"] == row["observed"]);
    }
    assert_eq!(matrix["as_expected"], as_expected);
    let find = |a: &str, b: &str| {
        rows.iter()
            .find(|r| r["a"] == a && r["b"] == b)
            .unwrap_or_else(|| panic!("no row {a} × {b}"))
    };
    assert_eq!(find("public", "public")["observed"], "direct");
    assert_eq!(
        find("symmetric-random", "symmetric-random")["expected"],
        "relay"
    );
    assert_eq!(
        find("symmetric-sequential", "symmetric-sequential")["expected"],
        "relay"
    );
    assert_eq!(find("udp-blocked", "public")["expected"], "relay");
    assert_eq!(
        find("port-restricted", "symmetric-random")["expected"],
        "direct"
    );
    // The table says the same in words, with the summary last.
    let out = netsim(&["matrix", "--seeds", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.ends_with(&format!(
            "{as_expected} of 65 pairs as expected; 0 failed\n"
        )),
        "{table}"
    );
}

#[test]
fn a_population_reports_its_pairs_and_replays_with_its_seed() {
    let args = ["population", "--pairs", "8", "--seed", "2", "--json"];
    let out = netsim(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["pairs"], 8);
    assert_eq!(report["seed"], 2);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["runs"].as_array().unwrap().len(), 8);
    let count = |field: &str| report[field].as_u64().unwrap();
    assert_eq!(count("direct") + count("relay"), 8);
    for field in [
        "direct_share",
        "direct_possible",
        "direct_of_possible",
        "direct_of_possible_share",
        "time_to_direct_p50_ms",
        "time_to_direct_p95_ms",
        "breakdown",
    ] {
        assert!(report.get(field).is_some(), "no {field}: {report}");
    }
    assert_eq!(netsim(&args).stdout, out.stdout, "seed 2 did not replay");
    let out = netsim(&["population", "--pairs", "8", "--seed", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("8 pairs: {} direct", count("direct"))),
        "{}",
        text(&out.stdout)
    );
    let out = netsim(&["population", "--pairs", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
