//! One suite of behaviour every [`Store`] must show, run against each backend.

use std::collections::BTreeMap;

use mesh_proto::audit::{AuditEvent, AuditId, AuditKind, AuditUser};
use mesh_proto::{SecretKey, UnixTime};

use super::memory::MemoryStore;
use super::sqlite::SqliteStore;
use super::{AuditFilter, Store, StoreError};
use crate::model::{Host, HostSettings, Invite, InviteFor, Relay, Role};

const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

fn key(seed: u8) -> mesh_proto::NodeId {
    SecretKey::from_seed(&[seed; 32]).node_id()
}

fn invite(id: &str, secret: u8, what: InviteFor) -> Invite {
    Invite {
        id: id.into(),
        secret_hash: [secret; 32],
        what,
        created_by: "root-admin".into(),
        created_at: NOW,
        expires_at: NOW.saturating_add(std::time::Duration::from_secs(3600)),
    }
}

fn host_invite(id: &str, secret: u8, name: &str) -> Invite {
    invite(
        id,
        secret,
        InviteFor::Host {
            name: name.into(),
            labels: BTreeMap::from([("site".to_owned(), "oslo".to_owned())]),
        },
    )
}

fn user_invite(id: &str, secret: u8, name: &str, role: &str) -> Invite {
    invite(
        id,
        secret,
        InviteFor::User {
            name: name.into(),
            role: role.into(),
        },
    )
}

fn relay_invite(id: &str, secret: u8, name: &str) -> Invite {
    invite(id, secret, InviteFor::Relay { name: name.into() })
}

/// Pending invites' ids, sorted: invites made in the same instant list in no set order.
fn pending(invites: Vec<Invite>) -> Vec<String> {
    let mut ids: Vec<String> = invites.into_iter().map(|i| i.id).collect();
    ids.sort();
    ids
}

async fn relay_enrollment_is_one_time_and_names_are_unique(store: &impl Store) {
    store
        .add_invite(&relay_invite("r1", 1, "relay-oslo"))
        .await
        .unwrap();
    store
        .add_invite(&relay_invite("r2", 2, "relay-oslo"))
        .await
        .unwrap();
    let relay = store.enroll_relay([1; 32], key(60), NOW).await.unwrap();
    assert_eq!(
        relay,
        Relay {
            name: "relay-oslo".into(),
            key: key(60),
            enrolled_at: NOW,
            last_seen: None,
            addrs: Vec::new(),
        }
    );
    // Reused.
    let err = store.enroll_relay([1; 32], key(61), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::InviteUnknown), "{err}");
    // Another key for a taken name: refused, and the invite is not spent.
    let err = store.enroll_relay([2; 32], key(61), NOW).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("relay name relay-oslo is already held"),
        "{err}"
    );
    // Stored whole, relay kind included.
    assert_eq!(
        store.invites().await.unwrap(),
        [relay_invite("r2", 2, "relay-oslo")]
    );
    // Expired.
    let mut old = relay_invite("r3", 3, "relay-tromso");
    old.expires_at = NOW.saturating_sub(std::time::Duration::from_secs(1));
    store.add_invite(&old).await.unwrap();
    let err = store.enroll_relay([3; 32], key(62), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::InviteExpired(_)), "{err}");
    // Listed by name; found by key.
    store
        .add_invite(&relay_invite("r4", 4, "relay-bergen"))
        .await
        .unwrap();
    store.enroll_relay([4; 32], key(62), NOW).await.unwrap();
    let names = |relays: Vec<Relay>| relays.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.relays().await.unwrap()),
        ["relay-bergen", "relay-oslo"]
    );
    assert_eq!(store.relay_by_key(key(60)).await.unwrap(), Some(relay));
    assert_eq!(store.relay_by_key(key(63)).await.unwrap(), None);
    // Seen: the latest time and addresses replace the previous ones.
    let later = NOW.saturating_add(std::time::Duration::from_secs(5));
    let first: Vec<std::net::SocketAddr> = vec![
        "192.0.2.9:7443".parse().unwrap(),
        "198.51.100.4:50123".parse().unwrap(),
    ];
    store.relay_seen(key(60), NOW, &first).await.unwrap();
    let seen = store.relay_by_key(key(60)).await.unwrap().unwrap();
    assert_eq!((seen.last_seen, seen.addrs), (Some(NOW), first));
    let second = ["192.0.2.10:7443".parse().unwrap()];
    store.relay_seen(key(60), later, &second).await.unwrap();
    let seen = store.relay_by_key(key(60)).await.unwrap().unwrap();
    assert_eq!(
        (seen.last_seen, seen.addrs.as_slice()),
        (Some(later), &second[..])
    );
    assert_eq!(seen.enrolled_at, NOW);
    // An unknown key changes nothing (as for hosts).
    store.relay_seen(key(63), later, &second).await.unwrap();
    assert_eq!(store.relay_by_key(key(63)).await.unwrap(), None);
    let bergen = store.relay_by_key(key(62)).await.unwrap().unwrap();
    assert_eq!((bergen.last_seen, bergen.addrs.len()), (None, 0));
    // Removed: gone, once; its name and key are free again.
    store.remove_relay("relay-bergen").await.unwrap();
    let err = store.remove_relay("relay-bergen").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(names(store.relays().await.unwrap()), ["relay-oslo"]);
    assert_eq!(store.relay_by_key(key(62)).await.unwrap(), None);
    store
        .add_invite(&relay_invite("r5", 5, "relay-bergen"))
        .await
        .unwrap();
    store.enroll_relay([5; 32], key(62), NOW).await.unwrap();
}

async fn relay_invites_and_keys_do_not_cross_kinds(store: &impl Store) {
    store
        .add_invite(&host_invite("h1", 1, "edge-01"))
        .await
        .unwrap();
    store
        .add_invite(&user_invite("u1", 2, "alice", "operator"))
        .await
        .unwrap();
    store
        .add_invite(&relay_invite("r1", 3, "relay-oslo"))
        .await
        .unwrap();
    let all_pending = ["h1", "r1", "u1"];
    // Each token refused by the other commands, naming its own; none spent, nothing made.
    let err = store.enroll_relay([1; 32], key(70), NOW).await.unwrap_err();
    assert!(err.to_string().contains("`mesh node join`"), "{err}");
    let err = store.enroll_relay([2; 32], key(70), NOW).await.unwrap_err();
    assert!(err.to_string().contains("`mesh login`"), "{err}");
    let err = store.enroll_host([3; 32], key(70), NOW).await.unwrap_err();
    assert!(err.to_string().contains("`mesh relay join`"), "{err}");
    let err = store
        .enroll_device([3; 32], key(70), NOW)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`mesh relay join`"), "{err}");
    assert_eq!(pending(store.invites().await.unwrap()), all_pending);
    assert!(store.relays().await.unwrap().is_empty());
    assert!(store.hosts().await.unwrap().is_empty());
    assert!(store.users().await.unwrap().is_empty());
    // A host's or a device's key cannot become a relay; the invite stays.
    store.enroll_host([1; 32], key(71), NOW).await.unwrap();
    store.enroll_device([2; 32], key(72), NOW).await.unwrap();
    for taken in [key(71), key(72)] {
        let err = store.enroll_relay([3; 32], taken, NOW).await.unwrap_err();
        assert!(err.to_string().contains("already enrolled"), "{err}");
    }
    assert_eq!(pending(store.invites().await.unwrap()), ["r1"]);
    // Nor can a relay's key become a host or a device.
    store.enroll_relay([3; 32], key(73), NOW).await.unwrap();
    store
        .add_invite(&host_invite("h2", 4, "edge-02"))
        .await
        .unwrap();
    store
        .add_invite(&user_invite("u2", 5, "bob", "viewer"))
        .await
        .unwrap();
    let err = store.enroll_host([4; 32], key(73), NOW).await.unwrap_err();
    assert!(err.to_string().contains("already enrolled"), "{err}");
    let err = store
        .enroll_device([5; 32], key(73), NOW)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already enrolled"), "{err}");
    assert_eq!(pending(store.invites().await.unwrap()), ["h2", "u2"]);
    assert!(store.host("edge-02").await.unwrap().is_none());
    assert!(store.user("bob").await.unwrap().is_none());
    assert_eq!(store.host_by_key(key(73)).await.unwrap(), None);
    assert_eq!(store.device(key(73)).await.unwrap(), None);
    // A revoked device's key stays taken for relays too.
    let revocation = mesh_proto::Revocation {
        id: mesh_proto::RevocationId::from_bytes([9; 16]),
        target: mesh_proto::RevocationTarget::Device(key(72)),
        issued_at: NOW,
    };
    store.add_revocation(&revocation, b"signed").await.unwrap();
    store
        .add_invite(&relay_invite("r2", 6, "relay-bergen"))
        .await
        .unwrap();
    let err = store.enroll_relay([6; 32], key(72), NOW).await.unwrap_err();
    assert!(err.to_string().contains("already enrolled"), "{err}");
}

async fn enrollment_is_one_time_and_names_are_unique(store: &impl Store) {
    store
        .add_invite(&host_invite("a1", 1, "edge-01"))
        .await
        .unwrap();
    store
        .add_invite(&host_invite("a2", 2, "edge-01"))
        .await
        .unwrap();
    let host = store.enroll_host([1; 32], key(10), NOW).await.unwrap();
    assert_eq!(host.name, "edge-01");
    assert_eq!(host.labels.get("site").map(String::as_str), Some("oslo"));
    assert!(host.settings.remote_shell && !host.settings.temp_users);
    // Reused.
    let err = store.enroll_host([1; 32], key(11), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::InviteUnknown), "{err}");
    // Another key for a taken name: refused, and the invite is not spent.
    let err = store.enroll_host([2; 32], key(11), NOW).await.unwrap_err();
    assert!(
        err.to_string().contains("already held by another key"),
        "{err}"
    );
    assert_eq!(store.invites().await.unwrap().len(), 1);
    // Expired.
    let mut old = host_invite("a3", 3, "edge-02");
    old.expires_at = NOW.saturating_sub(std::time::Duration::from_secs(1));
    store.add_invite(&old).await.unwrap();
    let err = store.enroll_host([3; 32], key(12), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::InviteExpired(_)), "{err}");
    // A user token cannot enroll a host.
    store
        .add_invite(&user_invite("u1", 4, "alice", "operator"))
        .await
        .unwrap();
    let err = store.enroll_host([4; 32], key(13), NOW).await.unwrap_err();
    assert!(err.to_string().contains("mesh login"), "{err}");
    assert_eq!(
        store.host_by_key(key(10)).await.unwrap().unwrap().name,
        "edge-01"
    );
}

async fn devices_join_users_and_keys_are_never_shared(store: &impl Store) {
    store
        .add_invite(&user_invite("u1", 1, "alice", "operator"))
        .await
        .unwrap();
    store
        .add_invite(&user_invite("u2", 2, "alice", "operator"))
        .await
        .unwrap();
    store
        .add_invite(&user_invite("u3", 3, "bob", "viewer"))
        .await
        .unwrap();
    let (alice, laptop) = store.enroll_device([1; 32], key(20), NOW).await.unwrap();
    assert_eq!(
        (alice.name.as_str(), alice.role.as_str()),
        ("alice", "operator")
    );
    // A second device of the same user.
    let (again, _) = store.enroll_device([2; 32], key(21), NOW).await.unwrap();
    assert_eq!(again.id, alice.id);
    // Bob cannot enroll alice's laptop key.
    let err = store
        .enroll_device([3; 32], key(20), NOW)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already enrolled"), "{err}");
    assert_eq!(store.device(key(20)).await.unwrap(), Some(laptop));
    let keys: Vec<_> = store
        .devices_of(alice.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&key(20)) && keys.contains(&key(21)));
    assert_eq!(
        store.user_by_id(alice.id).await.unwrap().unwrap().name,
        "alice"
    );
    // Revoking a device removes it and is remembered; the signed bytes come back as stored.
    let revocation = mesh_proto::Revocation {
        id: mesh_proto::RevocationId::from_bytes([7; 16]),
        target: mesh_proto::RevocationTarget::Device(key(21)),
        issued_at: NOW,
    };
    store.add_revocation(&revocation, b"signed").await.unwrap();
    assert_eq!(store.device(key(21)).await.unwrap(), None);
    assert!(store.device_revoked(key(21)).await.unwrap());
    assert!(!store.device_revoked(key(20)).await.unwrap());
    assert_eq!(store.revocations().await.unwrap(), vec![b"signed".to_vec()]);
    // A user revocation reaches every device of the user; revoked keys cannot enroll again.
    let user_revocation = mesh_proto::Revocation {
        id: mesh_proto::RevocationId::from_bytes([8; 16]),
        target: mesh_proto::RevocationTarget::User(alice.id),
        issued_at: NOW,
    };
    store
        .add_revocation(&user_revocation, b"signed-2")
        .await
        .unwrap();
    assert!(store.device_revoked(key(20)).await.unwrap());
    assert!(store.devices_of(alice.id).await.unwrap().is_empty());
    store
        .add_invite(&user_invite("u9", 9, "alice", "operator"))
        .await
        .unwrap();
    let err = store
        .enroll_device([9; 32], key(20), NOW)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already enrolled"), "{err}");
    store.remove_user("alice").await.unwrap();
    assert_eq!(
        store.device(key(20)).await.unwrap(),
        None,
        "devices go with the user"
    );
    assert!(
        !store.device_revoked(key(20)).await.unwrap(),
        "and so do their tombstones"
    );
}

async fn roles_users_and_settings(store: &impl Store) {
    let names: Vec<String> = store
        .roles()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["admin", "operator", "viewer"]);
    let mut custom = Role::built_in()[1].clone();
    custom.name = "oslo-ops".into();
    custom.logins = vec!["deploy".into()];
    store.put_role(&custom).await.unwrap();
    assert_eq!(store.role("oslo-ops").await.unwrap(), Some(custom.clone()));
    store.add_user("carol", "oslo-ops", NOW).await.unwrap();
    let err = store.add_user("carol", "viewer", NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let err = store
        .add_user("dave", "no-such-role", NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store.remove_role("oslo-ops").await.unwrap_err();
    assert!(err.to_string().contains("held by carol"), "{err}");
    store.set_user_role("carol", "viewer").await.unwrap();
    store.remove_role("oslo-ops").await.unwrap();
    assert_eq!(store.user("carol").await.unwrap().unwrap().role, "viewer");

    store
        .add_invite(&host_invite("h", 9, "edge-07"))
        .await
        .unwrap();
    store.enroll_host([9; 32], key(30), NOW).await.unwrap();
    let settings = HostSettings {
        remote_shell: false,
        temp_users: true,
    };
    store.set_host_settings("edge-07", settings).await.unwrap();
    let addrs = ["192.0.2.7:7422".parse().unwrap()];
    store.host_seen(key(30), NOW, &addrs).await.unwrap();
    let host = store.host("edge-07").await.unwrap().unwrap();
    assert_eq!(host.settings, settings);
    assert_eq!(host.last_seen, Some(NOW));
    assert_eq!(host.addrs, addrs);
    assert!(store.set_host_settings("nope", settings).await.is_err());
    store.set_meta("addr", "192.0.2.1:7400").await.unwrap();
    assert_eq!(
        store.meta("addr").await.unwrap().as_deref(),
        Some("192.0.2.1:7400")
    );
    store.remove_invite("nope").await.unwrap_err();
}

async fn run_all<S: Store>(make: impl AsyncFn() -> S) {
    enrollment_is_one_time_and_names_are_unique(&make().await).await;
    devices_join_users_and_keys_are_never_shared(&make().await).await;
    roles_users_and_settings(&make().await).await;
    audit_events_are_stored_once_and_filtered(&make().await).await;
    relay_enrollment_is_one_time_and_names_are_unique(&make().await).await;
    relay_invites_and_keys_do_not_cross_kinds(&make().await).await;
}

fn audit_event(id: u8, user: Option<&str>, at: u64) -> AuditEvent {
    AuditEvent {
        id: AuditId::from_bytes([id; 16]),
        at: UnixTime::from_secs(at),
        kind: AuditKind::SessionEnded,
        session: Some(u64::from(id)),
        user: user.map(|name| AuditUser {
            id: mesh_proto::UserId(1),
            name: name.into(),
        }),
        device: Some(key(50)),
        login: Some("root".into()),
        temporary: false,
        grant: None,
        exit: Some(mesh_proto::messages::session::ExitStatus::Code(3)),
        bytes_up: 5,
        bytes_down: 7,
        reason: "finished".into(),
    }
}

async fn audit_events_are_stored_once_and_filtered(store: &impl Store) {
    let all = |limit| AuditFilter {
        limit,
        ..AuditFilter::default()
    };
    let batch = [
        audit_event(1, Some("alice"), 100),
        audit_event(2, Some("bob"), 200),
        audit_event(3, None, 300),
    ];
    let new = store
        .add_audit_events(key(40), "edge-01", &batch, NOW)
        .await
        .unwrap();
    assert_eq!(new, 3);
    // The same batch again (its ack was lost), and one overlapping it: nothing doubles.
    assert_eq!(
        store
            .add_audit_events(key(40), "edge-01", &batch, NOW)
            .await
            .unwrap(),
        0
    );
    let overlapping = [
        audit_event(3, None, 300),
        audit_event(4, Some("alice"), 400),
    ];
    assert_eq!(
        store
            .add_audit_events(key(40), "edge-01", &overlapping, NOW)
            .await
            .unwrap(),
        1
    );
    // Another host's event with the same id is its own event.
    assert_eq!(
        store
            .add_audit_events(
                key(41),
                "edge-02",
                &[audit_event(1, Some("alice"), 500)],
                NOW
            )
            .await
            .unwrap(),
        1
    );
    let listed = store.audit_events(&all(100)).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].event, batch[0], "stored whole");
    assert_eq!(listed[0].host, "edge-01");
    assert_eq!(listed[0].received_at, NOW);
    assert!(listed.windows(2).all(|w| w[0].seq < w[1].seq));
    let ids = |records: Vec<mesh_proto::messages::control::AuditRecord>| {
        records
            .iter()
            .map(|r| (r.host.clone(), r.event.at.as_secs()))
            .collect::<Vec<_>>()
    };
    let alice = AuditFilter {
        user: Some("alice".into()),
        ..all(100)
    };
    assert_eq!(
        ids(store.audit_events(&alice).await.unwrap()),
        vec![
            ("edge-01".to_owned(), 100),
            ("edge-01".to_owned(), 400),
            ("edge-02".to_owned(), 500)
        ]
    );
    let edge_02 = AuditFilter {
        host: Some("edge-02".into()),
        ..all(100)
    };
    assert_eq!(ids(store.audit_events(&edge_02).await.unwrap()).len(), 1);
    let since = AuditFilter {
        since: Some(UnixTime::from_secs(300)),
        ..all(100)
    };
    assert_eq!(
        ids(store.audit_events(&since).await.unwrap())
            .iter()
            .map(|(_, at)| *at)
            .collect::<Vec<_>>(),
        vec![300, 400, 500]
    );
    // Pages: `after` the last seq of the previous one.
    let first = store.audit_events(&all(2)).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store
        .audit_events(&AuditFilter {
            after: Some(first[1].seq),
            ..all(100)
        })
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[0].seq, listed[2].seq);
}

#[tokio::test]
async fn the_memory_store_conforms() {
    run_all(async || MemoryStore::new()).await;
}

#[tokio::test]
async fn the_sqlite_store_conforms_and_keeps_state_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    run_all(async || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SqliteStore::create(&dir.path().join(format!("db{n}")))
            .await
            .unwrap()
    })
    .await;
    // Reopen one and find its state.
    let reopened = SqliteStore::open(&dir.path().join("db2")).await.unwrap();
    assert!(reopened.host("edge-07").await.unwrap().is_some());
}

#[tokio::test]
async fn the_sqlite_store_refuses_bad_files_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = SqliteStore::open(&dir.path().join("none"))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("mesh coordinator init"),
        "{missing}"
    );

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&garbage).await.unwrap_err();
    assert!(matches!(err, StoreError::Unusable(_)), "{err}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![0x5a; 8192],
        "left untouched"
    );

    let existing = dir.path().join("db");
    SqliteStore::create(&existing).await.unwrap().close().await;
    let err = SqliteStore::create(&existing).await.unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    // A database file that is not ours.
    let foreign = dir.path().join("foreign");
    {
        let other = SqliteStore::create(&foreign).await.unwrap();
        other.set_meta("format", "something-else").await.unwrap();
        other.close().await;
    }
    let err = SqliteStore::open(&foreign).await.unwrap_err();
    assert!(
        err.to_string().contains("not a mesh coordinator database"),
        "{err}"
    );

    // A database whose pages were overwritten in the middle.
    let damaged = dir.path().join("damaged");
    {
        let store = SqliteStore::create(&damaged).await.unwrap();
        store.set_meta("x", "y").await.unwrap();
        store.close().await;
    }
    let mut bytes = std::fs::read(&damaged).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xff;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let err = SqliteStore::open(&damaged).await.unwrap_err();
    assert!(!err.to_string().contains('\n'), "one line: {err}");
}

#[tokio::test]
async fn a_version_3_database_migrates_forward_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3");
    let latest = {
        let fresh = SqliteStore::create(&dir.path().join("fresh"))
            .await
            .unwrap();
        fresh.schema_version().await.unwrap()
    };
    let later = NOW.saturating_add(std::time::Duration::from_secs(60));
    let host = Host {
        name: "edge-01".into(),
        key: key(80),
        labels: BTreeMap::from([("site".to_owned(), "oslo".to_owned())]),
        settings: HostSettings {
            remote_shell: false,
            temp_users: true,
        },
        enrolled_at: NOW,
        last_seen: Some(later),
        addrs: vec!["192.0.2.7:7422".parse().unwrap()],
    };
    let mut later_invite = user_invite("u1", 1, "bob", "viewer");
    later_invite.created_at = later;
    let invites = [host_invite("h1", 2, "edge-02"), later_invite];
    let revocation = mesh_proto::Revocation {
        id: mesh_proto::RevocationId::from_bytes([7; 16]),
        target: mesh_proto::RevocationTarget::Grant(mesh_proto::GrantId::from_bytes([3; 16])),
        issued_at: NOW,
    };
    let alice = {
        // What a mesh at schema version 3 wrote. Its enrollments went through code that now
        // also looks at relays, so the host and device rows are written as it wrote them.
        let old = SqliteStore::create_at_version(&path, 3).await.unwrap();
        assert_eq!(old.schema_version().await.unwrap(), 3);
        assert!(latest > 3);
        old.set_meta("addr", "192.0.2.1:7400").await.unwrap();
        let alice = old.add_user("alice", "operator", NOW).await.unwrap();
        let ms = NOW.as_millis();
        let seen = later.as_millis();
        old.raw(format!(
            "INSERT INTO devices (key, user_id, enrolled_at) VALUES ('{}', {}, {ms});
             INSERT INTO hosts (name, key, labels, remote_shell, temp_users, enrolled_at, \
                 last_seen, addrs) \
             VALUES ('edge-01', '{}', '{{\"site\":\"oslo\"}}', 0, 1, {ms}, {seen}, \
                 '[\"192.0.2.7:7422\"]');",
            key(81),
            alice.id.0,
            key(80),
        ))
        .await
        .unwrap();
        for invite in &invites {
            old.add_invite(invite).await.unwrap();
        }
        old.add_revocation(&revocation, b"signed").await.unwrap();
        old.add_audit_events(
            key(80),
            "edge-01",
            &[audit_event(1, Some("alice"), 100)],
            NOW,
        )
        .await
        .unwrap();
        old.close().await;
        alice
    };

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), latest);
    assert_eq!(
        store.meta("addr").await.unwrap().as_deref(),
        Some("192.0.2.1:7400")
    );
    assert_eq!(store.user("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(
        store.device(key(81)).await.unwrap().map(|d| d.user_id),
        Some(alice.id)
    );
    assert_eq!(store.host("edge-01").await.unwrap(), Some(host.clone()));
    assert_eq!(store.invites().await.unwrap(), invites);
    assert_eq!(store.revocations().await.unwrap(), vec![b"signed".to_vec()]);
    let audit = store
        .audit_events(&AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].event, audit_event(1, Some("alice"), 100));
    // And the new table works alongside the old rows.
    assert!(store.relays().await.unwrap().is_empty());
    store
        .add_invite(&relay_invite("r1", 9, "relay-oslo"))
        .await
        .unwrap();
    for taken in [key(80), key(81)] {
        let err = store.enroll_relay([9; 32], taken, NOW).await.unwrap_err();
        assert!(err.to_string().contains("already enrolled"), "{err}");
    }
    store.enroll_relay([9; 32], key(82), NOW).await.unwrap();
    store.close().await;
    // Migrated once: reopening finds everything and runs nothing again.
    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.schema_version().await.unwrap(), latest);
    assert_eq!(reopened.host("edge-01").await.unwrap(), Some(host));
    assert_eq!(
        reopened
            .relay_by_key(key(82))
            .await
            .unwrap()
            .map(|r| r.name),
        Some("relay-oslo".to_owned())
    );
}

#[tokio::test]
async fn newer_or_foreign_databases_are_refused_before_any_migration() {
    let dir = tempfile::tempdir().unwrap();
    // From a mesh that knows more migrations than this one.
    let newer = dir.path().join("newer");
    {
        let store = SqliteStore::create(&newer).await.unwrap();
        let version = store.schema_version().await.unwrap();
        store
            .raw(format!("PRAGMA user_version = {}", version + 1))
            .await
            .unwrap();
        store.close().await;
    }
    let before = std::fs::read(&newer).unwrap();
    let err = SqliteStore::open(&newer).await.unwrap_err();
    assert!(matches!(err, StoreError::Unusable(_)), "{err}");
    assert!(
        err.to_string().contains("newer than this mesh knows"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert_eq!(std::fs::read(&newer).unwrap(), before, "left untouched");

    // An old database that is not ours is not migrated.
    let foreign = dir.path().join("foreign-v3");
    {
        let store = SqliteStore::create_at_version(&foreign, 3).await.unwrap();
        store.set_meta("format", "something-else").await.unwrap();
        store.close().await;
    }
    let before = std::fs::read(&foreign).unwrap();
    let err = SqliteStore::open(&foreign).await.unwrap_err();
    assert!(
        err.to_string().contains("not a mesh coordinator database"),
        "{err}"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "left untouched");
}
