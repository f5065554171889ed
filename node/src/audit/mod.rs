//! Audit on the host: sessions started and ended, and every refusal, recorded durably before
//! the session goes on, then uploaded to the coordinator exactly once.
//!
//! - [`spool`]: the bounded, fsync'd segment files events wait in.
//! - [`upload`]: sends spooled batches to the coordinator and deletes them on its ack.
//!
//! [`AuditLog`] is the host's handle. A session is admitted only with room reserved for both
//! its start and its end ([`AuditLog::admit_session`]), so a session that started always gets
//! its end recorded. When there is no room, the session is refused with "audit spool full" —
//! unless the host's config allows sessions without audit; then the session runs, events that
//! do not fit are counted, and the count is itself recorded (a [`AuditKind::Dropped`] event)
//! as soon as there is room again.

pub mod spool;
pub mod upload;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mesh_proto::audit::{
    AuditEvent, AuditId, AuditKind, AuditUser, capped, capped_reason, encode_event,
};
use mesh_proto::grant::MAX_LOGIN_LEN;
use mesh_proto::{Clock, Grant, NodeId};
use tokio::sync::Notify;

use crate::error::Error;
use spool::{MAX_RECORD, Spool};

/// The spool's default bound.
pub const DEFAULT_SPOOL_LIMIT: u64 = 64 * 1024 * 1024;
/// The spool directory in the agent's home.
pub const SPOOL_DIR: &str = "audit";
/// What a session is refused with when its audit events could not be kept.
pub const SPOOL_FULL: &str = "audit spool full";

/// What the host records about the client of a session or refusal.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The client's device key.
    pub device: NodeId,
    /// The grant, once verified.
    pub grant: Option<&'a Grant>,
    /// The login asked for or used.
    pub login: Option<&'a str>,
}

/// The host's audit log: a spool, the room reserved for running sessions, and the count of
/// events that could not be kept.
#[derive(Debug)]
pub struct AuditLog {
    state: Mutex<State>,
    changed: Notify,
    allow_without_audit: bool,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct State {
    spool: Spool,
    /// Bytes reserved for the events of admitted sessions.
    reserved: u64,
    /// Events not recorded since the last [`AuditKind::Dropped`] event.
    dropped: u64,
}

impl AuditLog {
    /// Opens the spool in `dir` bounded to `limit` bytes. With `allow_without_audit`, a full
    /// spool admits sessions (counting what it cannot record) instead of refusing them.
    /// Events are stamped by `clock` (the host's coordinator-corrected clock).
    pub fn open(
        dir: &Path,
        limit: u64,
        allow_without_audit: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, Error> {
        let spool = Spool::open(dir, limit)?;
        Ok(Arc::new(Self {
            state: Mutex::new(State {
                spool,
                reserved: 0,
                dropped: 0,
            }),
            changed: Notify::new(),
            allow_without_audit,
            clock,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each method leaves the state consistent before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new event of `kind` about `subject`, stamped now, with a fresh id; `None` (and the
    /// event counted as dropped) if the system has no randomness to give.
    pub fn event(&self, kind: AuditKind, subject: Subject<'_>, reason: &str) -> Option<AuditEvent> {
        let id = match AuditId::random() {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("audit event not recorded: {e}");
                self.lock().dropped += 1;
                return None;
            }
        };
        let grant = subject.grant;
        Some(AuditEvent {
            id,
            at: self.clock.now(),
            kind,
            session: None,
            user: grant.map(|g| AuditUser {
                id: g.user_id,
                name: g.user_name.clone(),
            }),
            device: Some(subject.device),
            login: subject.login.map(|l| capped(l, MAX_LOGIN_LEN)),
            temporary: grant.is_some_and(|g| g.temporary),
            grant: grant.map(|g| g.id),
            exit: None,
            bytes_up: 0,
            bytes_down: 0,
            reason: capped_reason(reason),
        })
    }

    /// Records an event outside a session (a refusal). If it does not fit, it is counted.
    pub fn record(&self, event: AuditEvent) {
        let mut state = self.lock();
        self.write(&mut state, &event, 0);
    }

    /// Reserves room for a session's start and end. Refuses with [`SPOOL_FULL`] when there is
    /// none, unless sessions without audit are allowed.
    pub fn admit_session(self: &Arc<Self>) -> Result<SessionAudit, String> {
        let mut state = self.lock();
        let wanted = 2 * MAX_RECORD;
        let free = free(&state, 0);
        if free >= wanted {
            state.reserved += wanted;
            return Ok(SessionAudit {
                log: self.clone(),
                reserved: wanted,
            });
        }
        if self.allow_without_audit {
            tracing::warn!("audit spool full: admitting a session without audit (config)");
            return Ok(SessionAudit {
                log: self.clone(),
                reserved: 0,
            });
        }
        Err(SPOOL_FULL.to_owned())
    }

    /// Writes `event`, which may use `own` reserved bytes; counts it as dropped if it cannot.
    /// A pending count of dropped events goes first when there is room for both.
    fn write(&self, state: &mut State, event: &AuditEvent, own: u64) -> bool {
        let bytes = match encode_event(event) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("audit event not recorded: {e}");
                state.dropped += 1;
                return false;
            }
        };
        let len = Spool::record_len(&bytes);
        if state.dropped > 0 && free(state, own) >= len + MAX_RECORD {
            self.write_dropped(state);
        }
        if free(state, own) < len {
            state.dropped += 1;
            return false;
        }
        if let Err(e) = state.spool.append(&bytes) {
            tracing::warn!("audit event not recorded: {e}");
            state.dropped += 1;
            return false;
        }
        self.changed.notify_one();
        true
    }

    /// Records the count of dropped events, if there is one and room for it.
    fn write_dropped(&self, state: &mut State) {
        if state.dropped == 0 {
            return;
        }
        let Ok(id) = AuditId::random() else {
            return;
        };
        let event = AuditEvent {
            id,
            at: self.clock.now(),
            kind: AuditKind::Dropped {
                count: state.dropped,
            },
            session: None,
            user: None,
            device: None,
            login: None,
            temporary: false,
            grant: None,
            exit: None,
            bytes_up: 0,
            bytes_down: 0,
            reason: format!(
                "{} audit event(s) could not be recorded (spool full or unwritable)",
                state.dropped
            ),
        };
        let Ok(bytes) = encode_event(&event) else {
            return;
        };
        if free(state, 0) < Spool::record_len(&bytes) {
            return;
        }
        match state.spool.append(&bytes) {
            Ok(()) => {
                tracing::warn!(
                    count = state.dropped,
                    "recorded the number of dropped audit events"
                );
                state.dropped = 0;
                self.changed.notify_one();
            }
            Err(e) => tracing::warn!("cannot record the dropped-events count: {e}"),
        }
    }

    /// The oldest batch waiting for upload: its segment number and events.
    pub fn next_batch(&self) -> Result<Option<(u64, Vec<AuditEvent>)>, Error> {
        self.lock().spool.oldest()
    }

    /// The coordinator stored batch `seq`: delete it, and record a pending dropped count in
    /// the room that made.
    pub fn acknowledged(&self, seq: u64) -> Result<(), Error> {
        let mut state = self.lock();
        state.spool.remove(seq)?;
        self.write_dropped(&mut state);
        Ok(())
    }

    /// Completes once something was recorded since the last call (or right away if so).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Events not recorded and not yet reported (for tests and diagnostics).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Bytes waiting in the spool.
    pub fn spooled_bytes(&self) -> u64 {
        self.lock().spool.used()
    }
}

/// Bytes an event may use: the limit, less what is stored and what other sessions reserved
/// (`own` is the caller's share of the reservations).
fn free(state: &State, own: u64) -> u64 {
    let others = state.reserved.saturating_sub(own);
    state
        .spool
        .limit()
        .saturating_sub(state.spool.used())
        .saturating_sub(others)
}

/// One admitted session's audit: the room reserved for its start and end, released when it
/// is dropped.
#[derive(Debug)]
pub struct SessionAudit {
    log: Arc<AuditLog>,
    reserved: u64,
}

impl SessionAudit {
    /// The log it records into.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Records one of the session's events in its reserved room (or, for a session admitted
    /// without audit, wherever there is room; counted as dropped if there is none).
    pub fn record(&mut self, event: AuditEvent) {
        let mut state = self.log.lock();
        let own = self.reserved.min(MAX_RECORD);
        self.log.write(&mut state, &event, own);
        self.reserved -= own;
        state.reserved = state.reserved.saturating_sub(own);
    }
}

impl Drop for SessionAudit {
    fn drop(&mut self) {
        let mut state = self.log.lock();
        state.reserved = state.reserved.saturating_sub(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::SystemClock;

    fn subject() -> Subject<'static> {
        Subject {
            device: mesh_proto::SecretKey::from_seed(&[5; 32]).node_id(),
            grant: None,
            login: Some("root"),
        }
    }

    fn all_events(log: &AuditLog) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        while let Some((seq, events)) = log.next_batch().unwrap() {
            out.extend(events);
            log.acknowledged(seq).unwrap();
        }
        out
    }

    #[test]
    fn a_full_spool_refuses_sessions_and_counts_what_it_could_not_record() {
        let dir = tempfile::tempdir().unwrap();
        // Room for exactly one session's reservation.
        let log = AuditLog::open(dir.path(), 2 * MAX_RECORD, false, Arc::new(SystemClock)).unwrap();
        let mut session = log.admit_session().unwrap();
        assert_eq!(log.admit_session().unwrap_err(), SPOOL_FULL);
        // A refusal while the room is reserved for the session does not fit: counted.
        log.record(
            log.event(AuditKind::Refused, subject(), SPOOL_FULL)
                .unwrap(),
        );
        assert_eq!(log.dropped(), 1);
        // The session's own events use its reservation.
        session.record(log.event(AuditKind::SessionStarted, subject(), "").unwrap());
        session.record(
            log.event(AuditKind::SessionEnded, subject(), "finished")
                .unwrap(),
        );
        drop(session);
        // The count went in as soon as there was room beside the session's reservation.
        let kinds: Vec<_> = all_events(&log).iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                AuditKind::SessionStarted,
                AuditKind::Dropped { count: 1 },
                AuditKind::SessionEnded
            ]
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn when_allowed_a_full_spool_admits_sessions_and_records_the_dropped_count_later() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), MAX_RECORD, true, Arc::new(SystemClock)).unwrap();
        // Fill it.
        while log.dropped() == 0 {
            log.record(log.event(AuditKind::Refused, subject(), "filler").unwrap());
        }
        let mut session = log.admit_session().expect("admitted without audit");
        session.record(log.event(AuditKind::SessionStarted, subject(), "").unwrap());
        drop(session);
        assert_eq!(log.dropped(), 2);
        // Once the fillers are acknowledged, the count is recorded in the room that made.
        let mut kinds: Vec<_> = all_events(&log).iter().map(|e| e.kind).collect();
        assert_eq!(kinds.pop(), Some(AuditKind::Dropped { count: 2 }));
        assert!(kinds.iter().all(|k| *k == AuditKind::Refused), "{kinds:?}");
        assert_eq!(log.dropped(), 0);
    }
}
