//! netsim's speed, measured (not asserted): run with `cargo bench -p mesh-netsim`.
//!
//! 1. `netsim/scenarios/three-hosts-minute.toml` (a coordinator, three hosts, two clients, a
//!    minute of virtual time): wall time per run over several runs, and the ratio of virtual to
//!    wall time.
//! 2. 1,000 simulated hosts (behind five NATs) enroll with one coordinator and come online:
//!    wall time, virtual time, and the process's peak resident memory.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use mesh_netsim::mesh::Mesh;
use mesh_netsim::scenario::Scenario;
use mesh_netsim::topology::{HostSpec, NatKind, NatSpec, Topology};
use mesh_netsim::world::World;

const RUNS: usize = 7;
const FLEET: usize = 1000;

fn minute() {
    let path = format!(
        "{}/scenarios/three-hosts-minute.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let scenario = Scenario::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut walls = Vec::new();
    for seed in 0..RUNS {
        let start = Instant::now();
        let report = scenario.run(seed as u64).unwrap();
        walls.push(start.elapsed());
        assert!(report.passed(), "{}", report.to_text());
    }
    walls.sort();
    let median = walls[RUNS / 2];
    println!(
        "three-hosts-minute: 60 s of virtual time in {:.1} ms of wall time (median of {RUNS}; \
         min {:.1} ms, max {:.1} ms): {:.0}× faster than real time",
        median.as_secs_f64() * 1e3,
        walls[0].as_secs_f64() * 1e3,
        walls[RUNS - 1].as_secs_f64() * 1e3,
        60.0 / median.as_secs_f64()
    );
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fleet() {
    let nats: Vec<NatSpec> = (0..5)
        .map(|i| NatSpec {
            name: format!("site-{i}"),
            kind: Some(NatKind::PortRestricted),
            ..NatSpec::default()
        })
        .collect();
    let mut hosts = vec![
        HostSpec {
            name: "hub".into(),
            ..HostSpec::default()
        },
        HostSpec {
            name: "admin".into(),
            ..HostSpec::default()
        },
    ];
    hosts.extend((0..FLEET).map(|i| HostSpec {
        name: format!("edge-{i}"),
        behind: Some(format!("site-{}", i % 5)),
        ..HostSpec::default()
    }));
    let network = Topology { nats, hosts }.resolve().unwrap();
    let before = peak_rss_kib();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let wall = Instant::now();
    let (virtual_time, online) = runtime.block_on(local.run_until(async move {
        let world = World::new(network, 1);
        tokio::spawn(world.clone().drive());
        let mut mesh = Mesh::new(world.clone(), 1).unwrap();
        mesh.start_coordinator("hub").unwrap();
        mesh.enroll_client("admin", "admin").await.unwrap();
        for i in 0..FLEET {
            mesh.start_agent(&format!("edge-{i}")).await.unwrap();
        }
        let admin = mesh.client("admin").unwrap();
        loop {
            let online = admin.online_hosts().await.unwrap().len();
            if online == FLEET || world.now() > Duration::from_secs(600) {
                break (world.now(), online);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));
    let wall = wall.elapsed();
    println!(
        "fleet: {online} of {FLEET} hosts enrolled and online with one coordinator after \
         {:.1} s of virtual time, in {:.2} s of wall time; peak RSS {} MiB (before: {} MiB)",
        virtual_time.as_secs_f64(),
        wall.as_secs_f64(),
        peak_rss_kib() / 1024,
        before / 1024,
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less arguments; only measure when asked.
    if std::env::args().any(|a| a == "--bench") {
        minute();
        fleet();
    }
}
