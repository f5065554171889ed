//! The coordinator's storage, behind one trait so that the same coordinator runs on a SQLite
//! file ([`sqlite::SqliteStore`]), in memory for the simulator ([`memory::MemoryStore`]), and
//! later on PostgreSQL when several coordinators share state.
//!
//! Operations that must not interleave — redeeming an invite and enrolling its key, removing
//! a role only if no one holds it — are single trait methods, each atomic in every backend.

pub mod memory;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::future::Future;
use std::net::SocketAddr;

use mesh_proto::audit::AuditEvent;
use mesh_proto::messages::control::AuditRecord;
use mesh_proto::{NodeId, Revocation, UnixTime, UserId};

use crate::model::{Device, Host, HostSettings, Invite, InviteFor, Relay, Role, User};

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A unique name or key is taken.
    #[error("{0}")]
    Conflict(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An invite was already used, revoked, or never existed.
    #[error("this token is not valid: it was already used, revoked, or never issued here")]
    InviteUnknown,
    /// An invite expired.
    #[error("this token expired at {0}; ask an admin for a new one")]
    InviteExpired(UnixTime),
    /// The database cannot be used (corrupt, not ours, from a newer mesh, unreadable).
    #[error("{0}")]
    Unusable(String),
    /// The database failed an operation.
    #[error("database error: {0}")]
    Database(String),
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which audit events to list; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this host's (by the name it had when the events were stored).
    pub host: Option<String>,
    /// Only this user's.
    pub user: Option<String>,
    /// Only events at or after this time.
    pub since: Option<UnixTime>,
    /// Only events stored after this sequence number.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

impl AuditFilter {
    /// Whether a stored event passes the filters other than `after` and `limit`.
    fn matches(&self, record: &AuditRecord) -> bool {
        let event = &record.event;
        self.host.as_ref().is_none_or(|h| *h == record.host)
            && self
                .user
                .as_ref()
                .is_none_or(|u| event.user.as_ref().is_some_and(|e| e.name == *u))
            && self.since.is_none_or(|t| event.at >= t)
    }
}

/// The coordinator's state. Every method is atomic.
pub trait Store: Send + Sync + 'static {
    /// A stored setting (the coordinator's address, its CA key's id, ...).
    fn meta(&self, key: &str) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// Stores a setting.
    fn set_meta(&self, key: &str, value: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// Adds a user with `role` (which must exist).
    fn add_user(
        &self,
        name: &str,
        role: &str,
        now: UnixTime,
    ) -> impl Future<Output = StoreResult<User>> + Send;
    /// A user by name.
    fn user(&self, name: &str) -> impl Future<Output = StoreResult<Option<User>>> + Send;
    /// A user by id.
    fn user_by_id(&self, id: UserId) -> impl Future<Output = StoreResult<Option<User>>> + Send;
    /// Every user, by name.
    fn users(&self) -> impl Future<Output = StoreResult<Vec<User>>> + Send;
    /// Changes a user's role (which must exist).
    fn set_user_role(&self, name: &str, role: &str)
    -> impl Future<Output = StoreResult<()>> + Send;
    /// Removes a user and their devices.
    fn remove_user(&self, name: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// A device by key.
    fn device(&self, key: NodeId) -> impl Future<Output = StoreResult<Option<Device>>> + Send;
    /// A user's devices, oldest first.
    fn devices_of(&self, user: UserId) -> impl Future<Output = StoreResult<Vec<Device>>> + Send;

    /// A host by name.
    fn host(&self, name: &str) -> impl Future<Output = StoreResult<Option<Host>>> + Send;
    /// A host by key.
    fn host_by_key(&self, key: NodeId) -> impl Future<Output = StoreResult<Option<Host>>> + Send;
    /// Every host, by name.
    fn hosts(&self) -> impl Future<Output = StoreResult<Vec<Host>>> + Send;
    /// Changes a host's settings.
    fn set_host_settings(
        &self,
        name: &str,
        settings: HostSettings,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Records that the host with `key` was heard from at `when`, reachable at `addrs`.
    fn host_seen(
        &self,
        key: NodeId,
        when: UnixTime,
        addrs: &[SocketAddr],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Every standalone relay, by name.
    fn relays(&self) -> impl Future<Output = StoreResult<Vec<Relay>>> + Send;
    /// A relay by key.
    fn relay_by_key(&self, key: NodeId) -> impl Future<Output = StoreResult<Option<Relay>>> + Send;
    /// Records that the relay with `key` was heard from at `when`, reachable at `addrs`.
    fn relay_seen(
        &self,
        key: NodeId,
        when: UnixTime,
        addrs: &[SocketAddr],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Removes a relay; its name and key are free to enroll again.
    fn remove_relay(&self, name: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// Records a signed revocation; for a device or a user, their device keys are removed too,
    /// so that they get no new grants.
    fn add_revocation(
        &self,
        revocation: &Revocation,
        signed: &[u8],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Every signed revocation, oldest first.
    fn revocations(&self) -> impl Future<Output = StoreResult<Vec<Vec<u8>>>> + Send;
    /// Whether the device `key` was revoked.
    fn device_revoked(&self, key: NodeId) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Stores audit events from the host with `key` (named `host`), received at `now`. An
    /// event whose id this host already uploaded is not stored again (a batch re-sent after
    /// a lost ack). Returns how many were new.
    fn add_audit_events(
        &self,
        key: NodeId,
        host: &str,
        events: &[AuditEvent],
        now: UnixTime,
    ) -> impl Future<Output = StoreResult<usize>> + Send;
    /// Stored audit events passing `filter`, in the order they were stored.
    fn audit_events(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = StoreResult<Vec<AuditRecord>>> + Send;

    /// Adds or replaces a role.
    fn put_role(&self, role: &Role) -> impl Future<Output = StoreResult<()>> + Send;
    /// A role by name.
    fn role(&self, name: &str) -> impl Future<Output = StoreResult<Option<Role>>> + Send;
    /// Every role, by name.
    fn roles(&self) -> impl Future<Output = StoreResult<Vec<Role>>> + Send;
    /// Removes a role no user holds.
    fn remove_role(&self, name: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// Stores a new invite.
    fn add_invite(&self, invite: &Invite) -> impl Future<Output = StoreResult<()>> + Send;
    /// Pending invites (expired ones included, until removed), by creation time.
    fn invites(&self) -> impl Future<Output = StoreResult<Vec<Invite>>> + Send;
    /// Withdraws a pending invite.
    fn remove_invite(&self, id: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// Redeems the host invite whose secret hashes to `secret_hash`, enrolling `key` under the
    /// invite's name and labels. The invite is spent only if the enrollment succeeds.
    fn enroll_host(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> impl Future<Output = StoreResult<Host>> + Send;
    /// Redeems the user invite whose secret hashes to `secret_hash`, creating the user if new
    /// and enrolling `key` as their device. The invite is spent only if this succeeds.
    fn enroll_device(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> impl Future<Output = StoreResult<(User, Device)>> + Send;
    /// Redeems the relay invite whose secret hashes to `secret_hash`, enrolling `key` under
    /// the invite's name. The invite is spent only if the enrollment succeeds.
    fn enroll_relay(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> impl Future<Output = StoreResult<Relay>> + Send;
}

/// The refusal when an invite is redeemed by the command for another kind of invite: names
/// the command that does use it, so the person holding the token can recover.
fn wrong_invite(what: &InviteFor) -> StoreError {
    StoreError::Conflict(
        match what {
            InviteFor::Host { .. } => "this token enrolls a host; use `mesh node join`",
            InviteFor::User { .. } => "this token enrolls a user's device; use `mesh login`",
            InviteFor::Relay { .. } => "this token enrolls a relay; use `mesh relay join`",
        }
        .into(),
    )
}

/// The refusal when a key is already enrolled as something else.
fn key_taken(key: NodeId) -> StoreError {
    StoreError::Conflict(format!(
        "key {} is already enrolled here; each host, device and relay needs its own home \
         (--home)",
        key.short()
    ))
}

/// The refusal when a host name is taken by another key.
fn host_name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "host name {name} is already held by another key; pick another name or remove that host"
    ))
}

/// The refusal when a relay name is taken by another key.
fn relay_name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "relay name {name} is already held by another key; pick another name or remove that \
         relay"
    ))
}
