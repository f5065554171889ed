//! The in-memory store: for the simulator (no worker thread, so virtual time stays
//! deterministic) and for tests. Nothing survives the process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mesh_proto::audit::AuditEvent;
use mesh_proto::messages::control::AuditRecord;
use mesh_proto::{NodeId, Revocation, RevocationTarget, UnixTime, UserId};

use super::{
    AuditFilter, Store, StoreError, StoreResult, host_name_taken, key_taken, relay_name_taken,
    wrong_invite,
};
use crate::model::{Device, Host, HostSettings, Invite, InviteFor, Relay, Role, User};

/// Everything in one mutex: each method holds it for its whole body, so each is atomic.
/// Clones share the same data, as two connections to one database file do (a simulated
/// coordinator restarts on the store it had).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    meta: BTreeMap<String, String>,
    users: BTreeMap<String, User>,
    next_user_id: u64,
    devices: BTreeMap<NodeId, Device>,
    hosts: BTreeMap<String, Host>,
    relays: BTreeMap<String, Relay>,
    roles: BTreeMap<String, Role>,
    invites: Vec<Invite>,
    revocations: Vec<(Revocation, Vec<u8>)>,
    /// Revoked devices (key → user): their keys cannot enroll again.
    revoked_devices: BTreeMap<NodeId, UserId>,
    /// Audit events in the order stored, with the uploading host's key.
    audit: Vec<(NodeId, AuditRecord)>,
}

impl MemoryStore {
    /// An empty store holding the built-in roles.
    pub fn new() -> Self {
        let store = Self::default();
        {
            let mut state = store.lock();
            for role in Role::built_in() {
                state.roles.insert(role.name.clone(), role);
            }
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every method leaves the state consistent before it could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn key_in_use(&self, key: NodeId) -> bool {
        self.devices.contains_key(&key)
            || self.revoked_devices.contains_key(&key)
            || self.hosts.values().any(|h| h.key == key)
            || self.relays.values().any(|r| r.key == key)
    }

    /// Where the usable invite for `secret_hash` is. It stays in place until the enrollment
    /// has succeeded, so a refusal leaves it pending (and where it was in the list).
    fn invite_index(&self, secret_hash: [u8; 32], now: UnixTime) -> StoreResult<usize> {
        let index = self
            .invites
            .iter()
            .position(|i| i.secret_hash == secret_hash)
            .ok_or(StoreError::InviteUnknown)?;
        let invite = &self.invites[index];
        if invite.expires_at < now {
            return Err(StoreError::InviteExpired(invite.expires_at));
        }
        Ok(index)
    }

    fn insert_user(&mut self, name: &str, role: &str, now: UnixTime) -> StoreResult<User> {
        if self.users.contains_key(name) {
            return Err(StoreError::Conflict(format!("user {name} already exists")));
        }
        if !self.roles.contains_key(role) {
            return Err(StoreError::NotFound(format!("no role {role}")));
        }
        self.next_user_id += 1;
        let user = User {
            id: UserId(self.next_user_id),
            name: name.to_owned(),
            role: role.to_owned(),
            created_at: now,
        };
        self.users.insert(name.to_owned(), user.clone());
        Ok(user)
    }
}

impl Store for MemoryStore {
    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        self.lock().meta.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn add_user(&self, name: &str, role: &str, now: UnixTime) -> StoreResult<User> {
        self.lock().insert_user(name, role, now)
    }

    async fn user(&self, name: &str) -> StoreResult<Option<User>> {
        Ok(self.lock().users.get(name).cloned())
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        Ok(self.lock().users.values().find(|u| u.id == id).cloned())
    }

    async fn users(&self) -> StoreResult<Vec<User>> {
        Ok(self.lock().users.values().cloned().collect())
    }

    async fn set_user_role(&self, name: &str, role: &str) -> StoreResult<()> {
        let mut state = self.lock();
        if !state.roles.contains_key(role) {
            return Err(StoreError::NotFound(format!("no role {role}")));
        }
        let user = state
            .users
            .get_mut(name)
            .ok_or_else(|| StoreError::NotFound(format!("no user {name}")))?;
        user.role = role.to_owned();
        Ok(())
    }

    async fn remove_user(&self, name: &str) -> StoreResult<()> {
        let mut state = self.lock();
        let user = state
            .users
            .remove(name)
            .ok_or_else(|| StoreError::NotFound(format!("no user {name}")))?;
        state.devices.retain(|_, d| d.user_id != user.id);
        state.revoked_devices.retain(|_, owner| *owner != user.id);
        Ok(())
    }

    async fn device(&self, key: NodeId) -> StoreResult<Option<Device>> {
        Ok(self.lock().devices.get(&key).cloned())
    }

    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<Device>> {
        let mut devices: Vec<Device> = self
            .lock()
            .devices
            .values()
            .filter(|d| d.user_id == user)
            .cloned()
            .collect();
        devices.sort_by_key(|d| d.enrolled_at);
        Ok(devices)
    }

    async fn host(&self, name: &str) -> StoreResult<Option<Host>> {
        Ok(self.lock().hosts.get(name).cloned())
    }

    async fn host_by_key(&self, key: NodeId) -> StoreResult<Option<Host>> {
        Ok(self.lock().hosts.values().find(|h| h.key == key).cloned())
    }

    async fn hosts(&self) -> StoreResult<Vec<Host>> {
        Ok(self.lock().hosts.values().cloned().collect())
    }

    async fn set_host_settings(&self, name: &str, settings: HostSettings) -> StoreResult<()> {
        let mut state = self.lock();
        let host = state
            .hosts
            .get_mut(name)
            .ok_or_else(|| StoreError::NotFound(format!("no host {name}")))?;
        host.settings = settings;
        Ok(())
    }

    async fn host_seen(
        &self,
        key: NodeId,
        when: UnixTime,
        addrs: &[SocketAddr],
    ) -> StoreResult<()> {
        let mut state = self.lock();
        if let Some(host) = state.hosts.values_mut().find(|h| h.key == key) {
            host.last_seen = Some(when);
            host.addrs = addrs.to_vec();
        }
        Ok(())
    }

    async fn relays(&self) -> StoreResult<Vec<Relay>> {
        Ok(self.lock().relays.values().cloned().collect())
    }

    async fn relay_by_key(&self, key: NodeId) -> StoreResult<Option<Relay>> {
        Ok(self.lock().relays.values().find(|r| r.key == key).cloned())
    }

    async fn relay_seen(
        &self,
        key: NodeId,
        when: UnixTime,
        addrs: &[SocketAddr],
    ) -> StoreResult<()> {
        let mut state = self.lock();
        if let Some(relay) = state.relays.values_mut().find(|r| r.key == key) {
            relay.last_seen = Some(when);
            relay.addrs = addrs.to_vec();
        }
        Ok(())
    }

    async fn remove_relay(&self, name: &str) -> StoreResult<()> {
        self.lock()
            .relays
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StoreError::NotFound(format!("no relay {name}")))
    }

    async fn add_audit_events(
        &self,
        key: NodeId,
        host: &str,
        events: &[AuditEvent],
        now: UnixTime,
    ) -> StoreResult<usize> {
        let mut state = self.lock();
        let mut new = 0;
        for event in events {
            let known = state
                .audit
                .iter()
                .any(|(k, r)| *k == key && r.event.id == event.id);
            if known {
                continue;
            }
            let seq = state.audit.last().map_or(1, |(_, r)| r.seq + 1);
            state.audit.push((
                key,
                AuditRecord {
                    seq,
                    host: host.to_owned(),
                    received_at: now,
                    event: event.clone(),
                },
            ));
            new += 1;
        }
        Ok(new)
    }

    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let state = self.lock();
        Ok(state
            .audit
            .iter()
            .map(|(_, r)| r)
            .filter(|r| filter.after.is_none_or(|after| r.seq > after) && filter.matches(r))
            .take(filter.limit)
            .cloned()
            .collect())
    }

    async fn add_revocation(&self, revocation: &Revocation, signed: &[u8]) -> StoreResult<()> {
        let mut state = self.lock();
        let revoked: Vec<(NodeId, UserId)> = state
            .devices
            .values()
            .filter(|d| match revocation.target {
                RevocationTarget::Device(key) => d.key == key,
                RevocationTarget::User(user) => d.user_id == user,
                RevocationTarget::Grant(_) => false,
            })
            .map(|d| (d.key, d.user_id))
            .collect();
        for (key, user) in revoked {
            state.devices.remove(&key);
            state.revoked_devices.insert(key, user);
        }
        state
            .revocations
            .push((revocation.clone(), signed.to_vec()));
        Ok(())
    }

    async fn revocations(&self) -> StoreResult<Vec<Vec<u8>>> {
        Ok(self
            .lock()
            .revocations
            .iter()
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn device_revoked(&self, key: NodeId) -> StoreResult<bool> {
        Ok(self.lock().revoked_devices.contains_key(&key))
    }

    async fn put_role(&self, role: &Role) -> StoreResult<()> {
        self.lock().roles.insert(role.name.clone(), role.clone());
        Ok(())
    }

    async fn role(&self, name: &str) -> StoreResult<Option<Role>> {
        Ok(self.lock().roles.get(name).cloned())
    }

    async fn roles(&self) -> StoreResult<Vec<Role>> {
        Ok(self.lock().roles.values().cloned().collect())
    }

    async fn remove_role(&self, name: &str) -> StoreResult<()> {
        let mut state = self.lock();
        if let Some(user) = state.users.values().find(|u| u.role == name) {
            return Err(StoreError::Conflict(format!(
                "role {name} is held by {}; give its users another role first",
                user.name
            )));
        }
        state
            .roles
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StoreError::NotFound(format!("no role {name}")))
    }

    async fn add_invite(&self, invite: &Invite) -> StoreResult<()> {
        let mut state = self.lock();
        if state.invites.iter().any(|i| i.id == invite.id) {
            return Err(StoreError::Conflict(format!("invite {} exists", invite.id)));
        }
        state.invites.push(invite.clone());
        Ok(())
    }

    async fn invites(&self) -> StoreResult<Vec<Invite>> {
        Ok(self.lock().invites.clone())
    }

    async fn remove_invite(&self, id: &str) -> StoreResult<()> {
        let mut state = self.lock();
        let before = state.invites.len();
        state.invites.retain(|i| i.id != id);
        if state.invites.len() == before {
            return Err(StoreError::NotFound(format!("no pending invite {id}")));
        }
        Ok(())
    }

    async fn enroll_host(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> StoreResult<Host> {
        let mut state = self.lock();
        let index = state.invite_index(secret_hash, now)?;
        // Every refusal returns before the invite is removed: not spent, the admin can still
        // use it with the right machine or command.
        let InviteFor::Host { name, labels } = state.invites[index].what.clone() else {
            return Err(wrong_invite(&state.invites[index].what));
        };
        if state.hosts.contains_key(&name) {
            return Err(host_name_taken(&name));
        }
        if state.key_in_use(key) {
            return Err(key_taken(key));
        }
        state.invites.remove(index);
        let host = Host {
            name: name.clone(),
            key,
            labels,
            settings: HostSettings::default(),
            enrolled_at: now,
            last_seen: None,
            addrs: Vec::new(),
        };
        state.hosts.insert(name, host.clone());
        Ok(host)
    }

    async fn enroll_device(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> StoreResult<(User, Device)> {
        let mut state = self.lock();
        let index = state.invite_index(secret_hash, now)?;
        let InviteFor::User { name, role } = state.invites[index].what.clone() else {
            return Err(wrong_invite(&state.invites[index].what));
        };
        if state.key_in_use(key) {
            return Err(key_taken(key));
        }
        let user = match state.users.get(&name) {
            Some(user) => user.clone(),
            // Its only failure (the role is gone) leaves nothing changed.
            None => state.insert_user(&name, &role, now)?,
        };
        state.invites.remove(index);
        let device = Device {
            key,
            user_id: user.id,
            enrolled_at: now,
        };
        state.devices.insert(key, device.clone());
        Ok((user, device))
    }

    async fn enroll_relay(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> StoreResult<Relay> {
        let mut state = self.lock();
        let index = state.invite_index(secret_hash, now)?;
        let InviteFor::Relay { name } = state.invites[index].what.clone() else {
            return Err(wrong_invite(&state.invites[index].what));
        };
        if state.relays.contains_key(&name) {
            return Err(relay_name_taken(&name));
        }
        if state.key_in_use(key) {
            return Err(key_taken(key));
        }
        state.invites.remove(index);
        let relay = Relay {
            name: name.clone(),
            key,
            enrolled_at: now,
            last_seen: None,
            addrs: Vec::new(),
        };
        state.relays.insert(name, relay.clone());
        Ok(relay)
    }
}
