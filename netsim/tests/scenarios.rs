//! Every shipped scenario in `netsim/scenarios/` runs and meets its expectations, and running it
//! again with the same seed gives the same report.

#![allow(clippy::unwrap_used)]

use mesh_netsim::scenario::Scenario;

#[test]
fn every_shipped_scenario_meets_its_expectations_and_replays_exactly() {
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the scenarios folder: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with('#'),
            "{}: a shipped scenario starts with a comment saying what it shows",
            file.display()
        );
        let scenario = Scenario::from_toml(&text).unwrap();
        let report = scenario.run(1).unwrap();
        assert!(report.passed(), "{}:\n{}", file.display(), report.to_text());
        assert_eq!(scenario.run(1).unwrap(), report, "{}", file.display());
    }
}
