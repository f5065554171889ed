//! `mesh netsim run FILE [--seed N] [--json]`, `mesh netsim matrix [--seeds N] [--json]` and
//! `mesh netsim population [--pairs N] [--seed S] [--json]`: the real mesh over a simulated
//! internet of NATs, in virtual time (see `mesh-netsim`).

use std::path::Path;
use std::process::ExitCode;

use mesh_netsim::scenario::Scenario;
use mesh_netsim::{matrix, population};

use crate::exit::Failure;

/// The seed when none is given.
const DEFAULT_SEED: u64 = 1;

/// Logs to stderr only when `RUST_LOG` asks (the simulated nodes' logs would bury the report),
/// stamped with virtual time since the simulation started.
pub(crate) fn logging() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(VirtualTime)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The simulation's virtual time (tokio's paused clock since the run started).
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match mesh_netsim::virtual_elapsed() {
            Some(since) => write!(w, "{:>8.3}s", since.as_secs_f64()),
            None => write!(w, "        -"),
        }
    }
}

/// Runs a scenario file; exits 1 when an expectation failed.
pub(crate) fn run(file: &Path, seed: Option<u64>, json: bool) -> Result<ExitCode, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Failed(format!("cannot read {}: {e}", file.display())))?;
    let scenario = Scenario::from_toml(&text)
        .map_err(|e| Failure::Failed(format!("{}: {}", file.display(), one_line(&e))))?;
    let seed = seed.unwrap_or(DEFAULT_SEED);
    let report = scenario
        .run(seed)
        .map_err(|e| Failure::Failed(format!("{}: {e}", file.display())))?;
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Failed(format!("cannot write the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", report.to_text());
    }
    if report.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        let failed = report.expectations.iter().filter(|v| !v.ok).count();
        Err(Failure::Failed(format!(
            "{failed} expectation(s) of {} failed (seed {seed})",
            file.display()
        )))
    }
}

/// Runs the NAT-type matrix over seeds 1 to `seeds` and prints it; exits 1 when a pair failed
/// (a pair relayed where a direct path was expected is a mismatch in the table, not a failure).
pub(crate) fn matrix(seeds: u64, json: bool) -> Result<ExitCode, Failure> {
    let matrix = matrix::run(seeds);
    print_report(
        json,
        || serde_json::to_string_pretty(&matrix),
        || matrix::to_text(&matrix),
    )?;
    if matrix.failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::Failed(format!(
            "{} of {} pairs failed (no session, or the shell did not answer)",
            matrix.failed,
            matrix.pairs.len()
        )))
    }
}

/// Runs a population of `pairs` pairs drawn with `seed` and prints the report; exits 1 when a
/// pair failed.
pub(crate) fn population(pairs: usize, seed: u64, json: bool) -> Result<ExitCode, Failure> {
    let report = population::run(pairs, seed);
    print_report(
        json,
        || serde_json::to_string_pretty(&report),
        || population::to_text(&report),
    )?;
    if report.failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::Failed(format!(
            "{} of {} pairs failed (no session, or the shell did not answer; seed {seed})",
            report.failed, report.pairs
        )))
    }
}

/// Prints a report as the JSON `to_json` makes when `json`, else as the text `text` makes.
fn print_report(
    json: bool,
    to_json: impl FnOnce() -> serde_json::Result<String>,
    text: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if json {
        let text =
            to_json().map_err(|e| Failure::Failed(format!("cannot write the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", text());
    }
    Ok(())
}

/// TOML errors span several lines (the offending line, a caret); keep the first and the
/// message.
fn one_line(error: &str) -> String {
    error
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}
