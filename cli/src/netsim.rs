//! `mesh netsim run FILE [--seed N] [--json]` and `mesh netsim matrix [--json]`: the real mesh
//! over a simulated internet of NATs, in virtual time (see `mesh-netsim`).

use std::path::Path;
use std::process::ExitCode;

use mesh_netsim::matrix;
use mesh_netsim::scenario::Scenario;

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

/// Runs the NAT-type matrix and prints it.
pub(crate) fn matrix(json: bool) -> Result<ExitCode, Failure> {
    let rows = matrix::run();
    if json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Failure::Failed(format!("cannot write the table: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", matrix::to_text(&rows));
    }
    Ok(ExitCode::SUCCESS)
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
