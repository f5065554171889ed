//! The shipped scenarios run and meet their expectations.

#![allow(clippy::unwrap_used)]

use mesh_netsim::scenario::Scenario;

fn run(file: &str, seed: u64) -> mesh_netsim::scenario::Report {
    let path = format!("{}/scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    Scenario::from_toml(&text).unwrap().run(seed).unwrap()
}

#[test]
fn the_lossy_path_scenario_meets_its_expectations() {
    let report = run("lossy-path.toml", 1);
    eprintln!("{}", report.to_text());
    assert!(report.passed(), "{}", report.to_text());
}
