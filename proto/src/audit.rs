//! Audit events: what a host records about sessions and refusals, spools while the
//! coordinator is away, and uploads once it is back.
//!
//! Each event carries an [`AuditId`] made on the host when the event happens. It is the
//! idempotency key: a batch the coordinator stored but whose acknowledgement never reached the
//! host is sent again, and the coordinator, keying events by (host, id), adds nothing the
//! second time. Which host an event is from is never a field: the coordinator takes it from the
//! key proven in the TLS handshake of the connection that uploaded it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

use crate::grant::{GrantId, MAX_LOGIN_LEN, MAX_USER_NAME_LEN, UserId};
use crate::id::NodeId;
use crate::messages::session::ExitStatus;
use crate::time::UnixTime;

random_id! {
    /// An audit event's unique id: 16 random bytes made by the host, shown as 32 hex digits.
    AuditId
}

/// Longest reason an event carries; longer ones are cut (at a character boundary) when the
/// event is made, so an event always fits its record.
pub const MAX_AUDIT_REASON: usize = 256;
/// Most events in one upload or one page of a listing. With every field at its cap an event
/// encodes to well under 1 KiB, so a full batch stays inside a control frame (64 KiB).
pub const MAX_AUDIT_BATCH: usize = 48;
/// The most bytes one event's postcard encoding may take.
pub const MAX_AUDIT_EVENT_BYTES: usize = 1024;

/// What happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AuditKind {
    /// A session started (the client was told `Opened`).
    SessionStarted,
    /// A session ended; `exit`, the byte counts and `reason` say how.
    SessionEnded,
    /// A session was refused, by the grant check or the host's own policy; `reason` says why.
    Refused,
    /// The host could not record this many events (its spool was full and sessions without
    /// audit are allowed, or a write failed).
    Dropped {
        /// How many.
        count: u64,
    },
}

impl AuditKind {
    /// The kind's name in listings and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::SessionStarted => "session-started",
            Self::SessionEnded => "session-ended",
            Self::Refused => "refused",
            Self::Dropped { .. } => "dropped",
        }
    }
}

/// Who the mesh user was, from a verified grant.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditUser {
    /// The user's id at the coordinator.
    pub id: UserId,
    /// The user's name when the grant was issued.
    pub name: String,
}

/// One audit event, as the host recorded it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditEvent {
    /// The idempotency key.
    pub id: AuditId,
    /// When, by the host's coordinator-corrected clock.
    pub at: UnixTime,
    /// What happened.
    pub kind: AuditKind,
    /// The host's number for the session (matches a start with its end); `None` for events
    /// not about a running session.
    pub session: Option<u64>,
    /// The mesh user, when a verified grant named one (`None` for a grant that failed its
    /// check: its claims are not evidence of anything).
    pub user: Option<AuditUser>,
    /// The client's device key (proven by TLS); `None` only for [`AuditKind::Dropped`].
    pub device: Option<NodeId>,
    /// The Unix login asked for or used.
    pub login: Option<String>,
    /// Whether the session ran as a temporary account.
    pub temporary: bool,
    /// The grant, once verified.
    pub grant: Option<GrantId>,
    /// How the session's program ended, when it did.
    pub exit: Option<ExitStatus>,
    /// Bytes from the client to the session (stdin).
    pub bytes_up: u64,
    /// Bytes from the session to the client (stdout and stderr).
    pub bytes_down: u64,
    /// Why a session was refused or ended; empty for a start.
    pub reason: String,
}

impl AuditEvent {
    /// Checks what a peer could overstate: the sizes of names and reasons. The coordinator
    /// refuses a batch with an event that fails, rather than storing oversized text.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.reason.len() > MAX_AUDIT_REASON {
            return Err(format!(
                "audit event {}: reason longer than {MAX_AUDIT_REASON} bytes",
                self.id
            ));
        }
        if self
            .user
            .as_ref()
            .is_some_and(|u| u.name.len() > MAX_USER_NAME_LEN)
        {
            return Err(format!("audit event {}: user name too long", self.id));
        }
        if self.login.as_ref().is_some_and(|l| l.len() > MAX_LOGIN_LEN) {
            return Err(format!("audit event {}: login too long", self.id));
        }
        Ok(())
    }
}

/// `text` cut to at most [`MAX_AUDIT_REASON`] bytes at a character boundary.
pub fn capped_reason(text: &str) -> String {
    capped(text, MAX_AUDIT_REASON)
}

/// `text` cut to at most `max` bytes at a character boundary (a login a client asked for can be
/// any length; what is recorded is not).
pub fn capped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// An event's stored form (postcard), refusing one over [`MAX_AUDIT_EVENT_BYTES`].
pub fn encode_event(event: &AuditEvent) -> Result<Vec<u8>, Error> {
    let bytes = postcard::to_allocvec(event).map_err(|e| Error::Encode {
        what: "audit event",
        reason: e.to_string(),
    })?;
    if bytes.len() > MAX_AUDIT_EVENT_BYTES {
        return Err(Error::Encode {
            what: "audit event",
            reason: format!(
                "{} bytes, more than the {MAX_AUDIT_EVENT_BYTES} an event may take",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// An event from its stored form, which it must fill exactly.
pub fn decode_event(bytes: &[u8]) -> Result<AuditEvent, Error> {
    crate::codec::decode_payload("audit event", bytes)
}

/// A checksum of a stored record: the first 8 bytes of its SHA-256. It detects a record torn
/// by a crash (a length written, the bytes after it not), not an adversary.
pub fn record_checksum(bytes: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(bytes);
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn largest() -> AuditEvent {
        AuditEvent {
            id: AuditId::from_bytes([0xff; 16]),
            at: UnixTime::from_millis(u64::MAX),
            kind: AuditKind::Dropped { count: u64::MAX },
            session: Some(u64::MAX),
            user: Some(AuditUser {
                id: UserId(u64::MAX),
                name: "u".repeat(MAX_USER_NAME_LEN),
            }),
            device: Some(crate::SecretKey::from_seed(&[1; 32]).node_id()),
            login: Some("l".repeat(MAX_LOGIN_LEN)),
            temporary: true,
            grant: Some(GrantId::from_bytes([0xff; 16])),
            exit: Some(ExitStatus::Signal(i32::MIN)),
            bytes_up: u64::MAX,
            bytes_down: u64::MAX,
            reason: "é".repeat(MAX_AUDIT_REASON / 2),
        }
    }

    #[test]
    fn an_event_at_every_cap_fits_its_record_and_a_batch_fits_a_frame() {
        let event = largest();
        event.check_shape().unwrap();
        let bytes = encode_event(&event).unwrap();
        assert!(bytes.len() <= MAX_AUDIT_EVENT_BYTES, "{}", bytes.len());
        assert_eq!(decode_event(&bytes).unwrap(), event);
        // A full batch, and a full page of listed events with host names, fit a control frame.
        use crate::messages::control::{AuditList, AuditRecord, AuditUpload, ControlMessage};
        let upload = ControlMessage::AuditUpload(AuditUpload {
            events: vec![event.clone(); MAX_AUDIT_BATCH],
        });
        crate::codec::encode_frame(&upload).unwrap();
        let record = AuditRecord {
            seq: u64::MAX,
            host: "h".repeat(64),
            received_at: UnixTime::from_millis(u64::MAX),
            event,
        };
        let list = ControlMessage::AuditList(AuditList {
            records: vec![record; MAX_AUDIT_BATCH],
            more: true,
        });
        crate::codec::encode_frame(&list).unwrap();
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary_and_oversized_ones_refused() {
        let long = "é".repeat(MAX_AUDIT_REASON);
        let cut = capped_reason(&long);
        assert!(cut.len() <= MAX_AUDIT_REASON && cut.chars().all(|c| c == 'é'));
        assert_eq!(capped_reason("short"), "short");
        let mut event = largest();
        event.reason = long;
        assert!(event.check_shape().unwrap_err().contains("reason"));
    }
}
