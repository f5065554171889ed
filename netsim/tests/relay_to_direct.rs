//! A shell session that starts on the relay moves to a direct path while its output is flowing,
//! and the output comes through whole: `netsim/scenarios/relay-to-direct.toml` over seeds 1 to
//! 10, each run twice.
//!
//! From each report: the scenario's own expectations hold; the shell printed its prompt, every
//! numbered line of `ticks N S` exactly once and in order (parsed here, apart from the runner's
//! `intact`), and its last prompt; bytes went through the relay and the path ends direct; the
//! path became direct after the first byte of output and before the last (so the move happened
//! mid-output); and the second run's report is the first's, JSON and all.
//!
//! The first byte is the shell's prompt, and a report does not say when each line arrived, so
//! "before the last" is a bound from the shell's schedule (line i cannot leave before
//! (i − 1) · S), and the lines that came through the relay before the move are not counted
//! here; the scenario's header gives them for seed 1 (19, the 20th arriving as the path moves).

#![allow(clippy::unwrap_used)]

use mesh_netsim::matrix::parallel_map;
use mesh_netsim::scenario::{ActionKind, ConnectionReport, Report, Scenario, numbered_stream};

const SCENARIO: &str = include_str!("../scenarios/relay-to-direct.toml");
const SEEDS: std::ops::RangeInclusive<u64> = 1..=10;
const PROMPT: &[u8] = b"$ ";

/// The scenario and what its shell is told to print: `ticks N S` as (N, S in milliseconds).
fn scenario() -> (Scenario, u64, f64) {
    let scenario = Scenario::from_toml(SCENARIO).unwrap();
    let typed = scenario
        .actions
        .iter()
        .find_map(|a| match &a.what {
            ActionKind::Exec {
                command,
                input: Some(input),
                ..
            } if command.is_empty() => Some(input.clone()),
            _ => None,
        })
        .expect("the scenario opens a shell and types into it");
    let ticks = typed
        .lines()
        .find_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ticks", n, secs] => {
                    Some((n.parse().unwrap(), secs.parse::<f64>().unwrap() * 1e3))
                }
                _ => None,
            },
        )
        .expect("the shell is told to run ticks");
    (scenario, ticks.0, ticks.1)
}

/// Checks that `output` is a prompt, lines `000001` to `n` (six digits each), each exactly
/// once and in order, and the next prompt; says where it first goes wrong.
fn check_ticks(output: &[u8], n: u64) -> Result<(), String> {
    let body = output
        .strip_prefix(PROMPT)
        .ok_or("the output does not start with the prompt")?;
    let body = body
        .strip_suffix(PROMPT)
        .ok_or("the output does not end with the prompt that follows the last line")?;
    let text = std::str::from_utf8(body).map_err(|e| format!("not text: {e}"))?;
    let body = text
        .strip_suffix('\n')
        .ok_or("the last line is cut short")?;
    let mut expected = 1u64;
    for (i, line) in body.split('\n').enumerate() {
        let at = i + 1;
        if line.len() != 6 || !line.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("line {at} is {line:?}, not a six-digit number"));
        }
        let number: u64 = line.parse().unwrap();
        if number < expected {
            return Err(format!("line {at} repeats {line} (expected {expected:06})"));
        }
        if number == expected + 1 {
            return Err(format!("line {at} is {line}: {expected:06} is missing"));
        }
        if number > expected {
            return Err(format!(
                "line {at} is {line}: {expected:06} to {:06} are missing",
                number - 1
            ));
        }
        expected += 1;
    }
    if expected - 1 != n {
        return Err(format!(
            "{} lines, {n} expected: the last {} are missing",
            expected - 1,
            n - (expected - 1)
        ));
    }
    Ok(())
}

/// The shell's report of one run, checked; returns (first byte ms, direct ms, lines printed
/// after the path went direct, at least).
fn check_run(report: &Report, ticks: u64, every_ms: f64) -> (f64, f64, u64) {
    let seed = report.seed;
    let [c]: &[ConnectionReport; 1] = report.connections.as_slice().try_into().unwrap();
    assert_eq!(c.outcome, "exit 0", "seed {seed}");
    if let Err(why) = check_ticks(&c.output, ticks) {
        panic!("seed {seed}: the shell's output is broken: {why}");
    }
    assert!(report.passed(), "seed {seed}:\n{}", report.to_text());
    assert!(c.intact, "seed {seed}: the runner's own check disagrees");
    assert!(
        c.relay_bytes > 0,
        "seed {seed}: nothing went through the relay"
    );
    assert_eq!(c.path, "direct", "seed {seed}");
    let first = c.time_to_first_byte_ms.unwrap();
    let direct = c
        .time_to_direct_ms
        .expect("a direct path has the time it was confirmed");
    assert!(
        first < direct,
        "seed {seed}: direct after {direct} ms, before the first byte (after {first} ms)"
    );
    // Line i leaves the shell no earlier than (i − 1) · S after the exec started (the sleeps
    // between lines alone take that long), and both times count from the exec's start: every
    // line with (i − 1) · S > direct was printed, so arrived, after the path went direct.
    let after = (1..=ticks)
        .filter(|i| (*i - 1) as f64 * every_ms > direct)
        .count() as u64;
    assert!(
        after >= ticks / 2,
        "seed {seed}: direct after {direct} ms leaves only {after} of {ticks} lines surely after \
         the move"
    );
    (first, direct, after)
}

#[test]
fn a_shell_moves_from_the_relay_to_a_direct_path_mid_output_with_every_line_once() {
    let (scenario, ticks, every_ms) = scenario();
    let seeds: Vec<u64> = SEEDS.collect();
    let runs = parallel_map(&seeds, |&seed| {
        let first = scenario.run(seed).unwrap();
        let again = scenario.run(seed).unwrap();
        (first, again)
    });
    for (report, again) in &runs {
        let (first, direct, after) = check_run(report, ticks, every_ms);
        println!(
            "seed {}: first byte {first} ms, direct {direct} ms, at least {after} of {ticks} \
             lines after the move, relayed {} B",
            report.seed, report.connections[0].relay_bytes
        );
        assert_eq!(
            serde_json::to_string(again).unwrap(),
            serde_json::to_string(report).unwrap(),
            "seed {}: the replay differs",
            report.seed
        );
        assert_eq!(again, report, "seed {}", report.seed);
    }
}

/// The check above fails a stream that lost, repeated, swapped or cut a line.
#[test]
fn the_line_check_finds_gaps_repeats_and_reordering() {
    let lines = |numbers: &[u64]| -> Vec<u8> {
        let mut out = PROMPT.to_vec();
        for n in numbers {
            out.extend_from_slice(format!("{n:06}\n").as_bytes());
        }
        out.extend_from_slice(PROMPT);
        out
    };
    let whole: Vec<u64> = (1..=50).collect();
    let mut good = PROMPT.to_vec();
    good.extend_from_slice(&numbered_stream(50 * 7));
    good.extend_from_slice(PROMPT);
    assert_eq!(lines(&whole), good);
    assert_eq!(check_ticks(&good, 50), Ok(()));

    let mut dropped = whole.clone();
    dropped.remove(20);
    let mut repeated = whole.clone();
    repeated.insert(20, 20);
    let mut swapped = whole.clone();
    swapped.swap(20, 21);
    let short = &whole[..49];
    for (what, numbers) in [
        ("dropped", &dropped[..]),
        ("repeated", &repeated[..]),
        ("swapped", &swapped[..]),
        ("short", short),
    ] {
        assert!(check_ticks(&lines(numbers), 50).is_err(), "{what} passed");
    }
    let mut cut = good.clone();
    cut.drain(100..103);
    assert!(check_ticks(&cut, 50).is_err(), "a cut line passed");
    assert!(
        check_ticks(&good[2..], 50).is_err(),
        "no first prompt passed"
    );
    assert!(
        check_ticks(&good[..good.len() - 2], 50).is_err(),
        "no last prompt passed"
    );
}
