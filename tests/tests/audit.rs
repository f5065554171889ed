//! Audit end to end: sessions run and refused while the coordinator is stopped reach
//! `mesh audit --json` once it is back, each exactly once; and a batch whose ack is lost is
//! sent again without doubling anything.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh_node::audit::upload::{AuditTransport, upload_pending};
use mesh_node::audit::{AuditLog, Subject};
use mesh_node::control::{Enrollment, client_endpoint, connect_coordinator};
use mesh_node::endpoint::Connection;
use mesh_proto::audit::{AuditEvent, AuditKind};
use mesh_proto::messages::control::AuditAck;
use mesh_tests::fleet::{Daemon, Fleet, mesh_in, run_with_stdin, text};

/// Polls `check` (every 200 ms) until it holds; fails after `limit`.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `mesh audit --json` as the admin, with extra arguments; empty if it fails.
fn audit(fleet: &Fleet, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let out = fleet.admin(&all);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn assert_each_once(events: &[serde_json::Value]) {
    let ids: HashSet<_> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "an event listed twice: {events:#?}"
    );
}

#[test]
fn sessions_and_refusals_while_the_coordinator_is_stopped_are_listed_once_when_it_returns() {
    let mut fleet = Fleet::start();
    // One session at a time, so the test can make the host refuse one.
    let token = fleet.invite(&["invite", "host", "--name", "edge-01"]);
    let home = fleet.home("edge-01");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_sessions = 1\n",
    )
    .unwrap();
    let out = run_with_stdin(&home, &["node", "join", "-"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _edge = Daemon::spawn(
        mesh_in(&home, &["node", "run"]),
        "connected to the coordinator",
    );
    // Online: this also gives the admin's device an offline grant for edge-01.
    let out = fleet.admin(&["exec", "edge-01", "--", "echo", "online"]);
    assert_eq!(text(&out.stdout), "online\n", "{}", text(&out.stderr));

    fleet.coordinator.kill();
    let out = fleet.admin(&["exec", "edge-01", "--", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = fleet.admin(&["exec", "edge-01", "--", "echo", "offline"]);
    assert_eq!(text(&out.stdout), "offline\n", "{}", text(&out.stderr));
    // While one session holds the only slot, the next is refused by the host.
    let mut held = mesh_in(
        &fleet.home("admin"),
        &["exec", "edge-01", "--", "echo ready; read line"],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(held.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let out = fleet.admin(&["exec", "edge-01", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("max_sessions"),
        "{}",
        text(&out.stderr)
    );
    writeln!(held.stdin.as_mut().unwrap(), "go").unwrap();
    assert!(held.wait().unwrap().success());

    fleet.coordinator.start();
    // Four sessions ended (one online, three offline) and one refusal.
    eventually(
        "the spooled events are uploaded",
        Duration::from_secs(90),
        || {
            let events = audit(&fleet, &["--host", "edge-01"]);
            of_kind(&events, "session-ended").len() >= 4 && !of_kind(&events, "refused").is_empty()
        },
    );
    // Give a duplicate upload, if there were one, time to land; then check each is once.
    std::thread::sleep(Duration::from_secs(1));
    let events = audit(&fleet, &["--host", "edge-01"]);
    assert_each_once(&events);
    let ended = of_kind(&events, "session-ended");
    assert_eq!(ended.len(), 4, "{events:#?}");
    assert_eq!(of_kind(&events, "session-started").len(), 4, "{events:#?}");
    let codes: Vec<i64> = ended
        .iter()
        .map(|e| e["exit"]["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 7).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 3, "{codes:?}");
    for e in &ended {
        assert_eq!(e["user"], "admin");
        assert_eq!(e["host"], "edge-01");
        assert_eq!(e["temporary"], false);
        assert!(e["grant"].is_string() && e["device"].is_string(), "{e}");
    }
    let refused = of_kind(&events, "refused");
    assert_eq!(refused.len(), 1, "{events:#?}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_sessions"),
        "{}",
        refused[0]
    );
    // The filters select.
    assert_eq!(audit(&fleet, &["--user", "nobody"]).len(), 0);
    assert_eq!(
        audit(&fleet, &["--since", "2000-01-01T00:00:00Z"]).len(),
        events.len()
    );
    assert_eq!(
        audit(&fleet, &["--since", "0s", "--host", "edge-01"]).len(),
        0
    );
    // Humans get a table with the same events.
    let out = fleet.admin(&["audit", "--host", "edge-01"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), events.len() + 1);
}

/// The real connection to the coordinator, except that the first ack is lost on its way back:
/// the coordinator has stored the batch, and the host sees the connection fail instead.
struct LosesFirstAck {
    conn: Connection,
    lost: AtomicBool,
    acks: std::sync::Mutex<Vec<AuditAck>>,
}

impl AuditTransport for LosesFirstAck {
    async fn upload(&self, events: Vec<AuditEvent>) -> Result<AuditAck, mesh_node::Error> {
        let ack = self.conn.upload(events).await?;
        if !self.lost.swap(true, Ordering::SeqCst) {
            self.conn.quic().close(0u32.into(), b"cut before the ack");
            return Err(mesh_node::Error::Stream("the ack was lost".into()));
        }
        self.acks.lock().unwrap().push(ack);
        Ok(ack)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_ack_is_lost_is_sent_again_and_stored_once() {
    let fleet = Fleet::start();
    let token = fleet.invite(&["invite", "host", "--name", "spooler"]);
    let home = fleet.home("spooler");
    std::fs::create_dir_all(&home).unwrap();
    let out = run_with_stdin(&home, &["node", "join", "-"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let enrollment = Enrollment::load(&home).unwrap().unwrap();

    // The host's spool, holding more than one batch.
    let spool = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        spool.path(),
        1 << 20,
        false,
        Arc::new(mesh_proto::SystemClock),
    )
    .unwrap();
    let device = mesh_proto::SecretKey::from_seed(&[7; 32]).node_id();
    let mut recorded = HashSet::new();
    for n in 0..60 {
        let subject = Subject {
            device,
            grant: None,
            login: Some("root"),
        };
        let event = log
            .event(AuditKind::Refused, subject, &format!("refusal {n}"))
            .unwrap();
        recorded.insert(event.id.to_string());
        log.record(event);
    }

    let endpoint = client_endpoint(&home).unwrap();
    let connect = || {
        connect_coordinator(
            &endpoint,
            &mesh_node::path::dial::TcpConnector,
            enrollment.coordinator_key,
            &enrollment.coordinator_addrs,
        )
    };
    let losing = LosesFirstAck {
        conn: connect().await.unwrap(),
        lost: AtomicBool::new(false),
        acks: std::sync::Mutex::default(),
    };
    let err = upload_pending(&log, &losing).await.unwrap_err();
    assert!(err.to_string().contains("ack was lost"), "{err}");
    assert!(
        log.spooled_bytes() > 0,
        "nothing may be deleted without an ack"
    );

    // The host reconnects and sends what it still holds.
    let again = LosesFirstAck {
        conn: connect().await.unwrap(),
        lost: AtomicBool::new(true),
        acks: std::sync::Mutex::default(),
    };
    assert_eq!(upload_pending(&log, &again).await.unwrap(), 60);
    assert_eq!(log.spooled_bytes(), 0);
    let acks = again.acks.lock().unwrap().clone();
    // The batch the coordinator already had was acknowledged whole, and added nothing.
    assert_eq!(acks[0].received, 48);
    assert_eq!(acks[0].new, 0, "{acks:?}");
    assert_eq!(acks[1].new, 12, "{acks:?}");

    let listed = tokio::task::spawn_blocking(move || audit(&fleet, &["--host", "spooler"]))
        .await
        .unwrap();
    assert_each_once(&listed);
    let ids: HashSet<String> = listed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, recorded);
    assert!(
        listed
            .iter()
            .all(|e| e["kind"] == "refused" && e["user"].is_null())
    );
}
