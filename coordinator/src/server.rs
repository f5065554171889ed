//! The coordinator's control-protocol server: enrollment, grants by name, the directory, host
//! settings pushed to hosts, invites, revocations, and the audit log hosts upload to. Every
//! request is authorized by [`authorize`] against the requester's role; the requester is the
//! key proven in the TLS handshake.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_node::endpoint::{Connection, Endpoint, EndpointOptions};
use mesh_node::framed::{FrameReader, write_frame};
use mesh_node::path::dial::StreamAcceptor;
use mesh_node::path::stream::{StreamServerSocket, is_stream_addr};
use mesh_node::path::tls_stream::serve_streams;
use mesh_proto::audit::MAX_AUDIT_BATCH;
use mesh_proto::codec::payload_len;
use mesh_proto::grant::{OFFLINE_GRANT_DEFAULT_TTL, ONLINE_GRANT_DEFAULT_TTL, TEMPORARY_ROOT};
use mesh_proto::messages::RELAY_ALPN;
use mesh_proto::messages::control::{
    AllowedKeys, AuditAck, AuditList, AuditQuery, AuditUpload, ContactRequest, ControlMessage,
    Done, Enroll, Enrolled, Failure, Granted, HostContact, HostEntry, HostSet, Hosts, InviteCreate,
    InviteEntry, InviteList, InviteRevoke, InviteTarget, Invited, Label, MAX_ALLOWED_KEYS_PAGE,
    MAX_HOSTS, MAX_LISTEN_ADDRS, PunchOffer, RelayInfo, Rendezvous, Revoke, RevokeWhat, RoleList,
    RoleRemove, RoleSpec, SessionGrantRequest, Settings, TimeReply, UseRelay, UserAdd, UserEntry,
    UserList, UserRemove, UserSetRole, Welcome,
};
use mesh_proto::nat::NatMapping;
use mesh_proto::token::{EnrollmentToken, TokenKind, TokenSecret, open_token};
use mesh_proto::{
    CaKeySet, CaSigner, Clock, Grant, GrantId, GrantKind, NodeId, Permissions, Revocation,
    RevocationId, RevocationTarget, UnixTime,
};
use tokio::sync::mpsc;

use crate::model::{
    Host, HostSelector, HostSettings, Invite, InviteFor, LOGIN_ANY, LOGIN_SELF, Permission, Role,
    User, check_name, check_user_name,
};
use crate::policy::{Request, authorize};
use crate::relay::{RelayLimits, RelayServer};
use crate::store::{AuditFilter, Store, StoreError};

/// How long an enrollment token is valid.
pub const INVITE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Settings pushes queued per host before the oldest matter no more (only the last counts).
const PUSH_QUEUE: usize = 8;
/// Bytes of host entries in one directory page: a control frame carries 64 KiB, and the page's
/// own framing and the longest `next` name need far less than the rest.
const DIRECTORY_PAGE_BYTES: usize = 48 * 1024;

/// A coordinator: its store, its CA, its own identity and address, and who is online.
pub struct Coordinator<S> {
    store: S,
    ca: CaSigner,
    coordinator_key: NodeId,
    addrs: Vec<String>,
    clock: Arc<dyn Clock>,
    /// Ordered, so pushes to every host go out in the same order each time (a simulated run
    /// replays exactly).
    presence: Mutex<BTreeMap<NodeId, Presence>>,
    next_presence: AtomicU64,
    /// The embedded relay, for enrolled devices and hosts (ALPN `mesh/relay/1` on the same
    /// endpoint).
    relay: Arc<RelayServer>,
    /// Standalone relays with a live control stream, by name (the first is the mesh's relay).
    relays: Mutex<BTreeMap<String, RelayPresence>>,
    /// The keys allowed to use a relay, as last computed; relays' streams follow it.
    allowed: tokio::sync::watch::Sender<Arc<Vec<NodeId>>>,
}

/// A standalone relay's live control stream.
struct RelayPresence {
    id: u64,
    key: NodeId,
    addrs: Vec<std::net::SocketAddr>,
}

impl<S> std::fmt::Debug for Coordinator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("coordinator_key", &self.coordinator_key)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// The page of `entries` (in any order) that follows `after` by name: as many as fit
/// [`DIRECTORY_PAGE_BYTES`], at most [`MAX_HOSTS`], and where the next page starts.
fn directory_page(
    entries: impl IntoIterator<Item = HostEntry>,
    after: Option<&str>,
) -> Result<Hosts, String> {
    let mut entries: Vec<HostEntry> = entries
        .into_iter()
        .filter(|h| after.is_none_or(|after| h.name.as_str() > after))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut page = Vec::new();
    let mut size = 0;
    let mut next = None;
    for entry in entries {
        let len = payload_len(&entry).map_err(|e| e.to_string())?;
        if page.len() == MAX_HOSTS || size + len > DIRECTORY_PAGE_BYTES {
            next = page.last().map(|last: &HostEntry| last.name.clone());
            break;
        }
        size += len;
        page.push(entry);
    }
    Ok(Hosts { hosts: page, next })
}

/// The protocols a coordinator's endpoint serves: control, and its embedded relay.
pub const COORDINATOR_ALPNS: &[&[u8]] = &[mesh_proto::messages::CONTROL_ALPN, RELAY_ALPN];

/// How a coordinator's endpoint is built: its connections start large enough for relayed
/// packets.
pub fn endpoint_options() -> EndpointOptions {
    EndpointOptions {
        initial_mtu: mesh_node::path::relay_client::RELAY_INITIAL_MTU,
        ..EndpointOptions::default()
    }
}

/// A host's live presence stream.
struct Presence {
    id: u64,
    push: mpsc::Sender<ControlMessage>,
    /// Its connection (whose round trip sets how far ahead a punch starts).
    quic: quinn::Connection,
    /// How its NAT maps, as its last check found.
    nat: NatMapping,
}

/// How far beyond the slower side's one-way delay a punch's start is set: both sides have
/// the rendezvous in hand by then.
const PUNCH_LEAD: Duration = Duration::from_millis(20);

/// The client side of a rendezvous: where its control connection comes from, and its round
/// trip.
struct ClientSide {
    observed: std::net::SocketAddr,
    rtt: Duration,
}

type Reply = Result<ControlMessage, String>;

impl<S: Store> Coordinator<S> {
    /// A coordinator over `store`, signing with `ca`, reachable as `coordinator_key` at `addrs`.
    pub fn new(
        store: S,
        ca: CaSigner,
        coordinator_key: NodeId,
        addrs: Vec<String>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            ca,
            coordinator_key,
            addrs,
            clock,
            presence: Mutex::new(BTreeMap::new()),
            next_presence: AtomicU64::new(1),
            relay: RelayServer::new(RelayLimits::default()),
            relays: Mutex::new(BTreeMap::new()),
            allowed: tokio::sync::watch::Sender::new(Arc::new(Vec::new())),
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Serves connections on `endpoint` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, endpoint: Endpoint, shutdown: impl Future<Output = ()>) {
        endpoint
            .accept_until(shutdown, |conn| self.clone().serve_connection(conn))
            .await;
        endpoint.close_and_flush(Duration::from_secs(1)).await;
    }

    /// Serves on the UDP `endpoint` and, with `streams`, on TLS-over-TCP streams accepted
    /// there (for sites that allow only outbound TCP): a second endpoint, as `key` with
    /// `options`, runs on those streams and is served the same way, relay included.
    pub async fn serve_with_streams(
        self: Arc<Self>,
        key: mesh_proto::SecretKey,
        endpoint: Endpoint,
        streams: Option<impl StreamAcceptor>,
        options: EndpointOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), mesh_node::Error> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let local = endpoint
            .local_addr()
            .map_err(|source| mesh_node::Error::Io {
                what: "the coordinator's endpoint has no address",
                path: std::path::PathBuf::new(),
                source,
            })?;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.clone().serve(endpoint, until_stopped(stopped.clone())));
        if let Some(acceptor) = streams {
            let socket = StreamServerSocket::new(local);
            let over_streams =
                Endpoint::with_options(key.clone(), socket.clone(), COORDINATOR_ALPNS, options)?;
            let accepting = serve_streams(acceptor, key, socket, until_stopped(stopped.clone()));
            tasks.spawn(async move {
                if let Err(e) = accepting.await {
                    tracing::warn!("streams are not served: {e}");
                }
            });
            tasks.spawn(self.clone().serve(over_streams, until_stopped(stopped)));
        }
        shutdown.await;
        stop.send_replace(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// The embedded relay.
    pub fn relay(&self) -> &Arc<RelayServer> {
        &self.relay
    }

    /// Whether `key` may use the embedded relay: an enrolled device not revoked, or a host.
    async fn relay_allowed(&self, key: NodeId) -> bool {
        matches!(self.store.device(key).await, Ok(Some(_)))
            || matches!(self.store.host_by_key(key).await, Ok(Some(_)))
    }

    async fn serve_connection(self: Arc<Self>, conn: Connection) {
        if conn.alpn() == RELAY_ALPN {
            if self.relay_allowed(conn.peer()).await {
                self.relay.clone().serve_peer(conn).await;
            } else {
                self.relay.refuse(&conn);
            }
            return;
        }
        while let Ok((send, recv)) = conn.quic().accept_bi().await {
            let this = self.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_stream(&conn, send, recv).await {
                    tracing::debug!(peer = %conn.peer().short(), "control stream: {e}");
                }
            });
        }
    }

    async fn serve_stream(
        &self,
        conn: &Connection,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), mesh_node::Error> {
        let mut recv = FrameReader::new(recv);
        let Some(first) = recv.next::<ControlMessage>().await? else {
            return Ok(());
        };
        let peer = conn.peer();
        let reply = match first {
            ControlMessage::Hello(hello) => {
                return self.presence(conn, hello.listen_addrs, send, recv).await;
            }
            ControlMessage::RelayHello(hello) => {
                return self
                    .relay_presence(conn, hello.listen_addrs, send, recv)
                    .await;
            }
            ControlMessage::Enroll(enroll) => self.enroll(peer, enroll).await,
            ControlMessage::AuditUpload(upload) => self.audit_upload(peer, upload).await,
            other => {
                let client = ClientSide {
                    observed: conn.quic().remote_address(),
                    rtt: conn.quic().rtt(),
                };
                self.user_request(peer, &client, other).await
            }
        };
        let message = reply.unwrap_or_else(|message| ControlMessage::Failure(Failure { message }));
        write_frame(&mut send, &message).await?;
        let _ = send.finish();
        Ok(())
    }

    fn now(&self) -> UnixTime {
        self.clock.now()
    }

    async fn enroll(&self, peer: NodeId, enroll: Enroll) -> Reply {
        let ca_keys = CaKeySet::single(self.ca.public_key());
        let token =
            open_token(&enroll.token, Some(&ca_keys), self.now()).map_err(|e| e.to_string())?;
        let hash = token.secret.hash();
        let reply = match token.kind {
            TokenKind::Host => {
                let host = self
                    .store
                    .enroll_host(hash, peer, self.now())
                    .await
                    .map_err(store_error)?;
                tracing::info!(host = %host.name, key = %peer.short(), "host enrolled");
                Enrolled::Host { name: host.name }
            }
            TokenKind::User => {
                let (user, _) = self
                    .store
                    .enroll_device(hash, peer, self.now())
                    .await
                    .map_err(store_error)?;
                tracing::info!(user = %user.name, key = %peer.short(), "device enrolled");
                Enrolled::Device {
                    user: user.name,
                    role: user.role,
                }
            }
            TokenKind::Relay => {
                let relay = self
                    .store
                    .enroll_relay(hash, peer, self.now())
                    .await
                    .map_err(store_error)?;
                tracing::info!(relay = %relay.name, key = %peer.short(), "relay enrolled");
                Enrolled::Relay { name: relay.name }
            }
        };
        // A new host or device may use the relays from now on.
        self.relays_changed().await;
        Ok(ControlMessage::Enrolled(reply))
    }

    /// Requests a user's device makes: who they are, then what they ask.
    async fn user_request(
        &self,
        peer: NodeId,
        client: &ClientSide,
        request: ControlMessage,
    ) -> Reply {
        let Some(device) = self.store.device(peer).await.map_err(store_error)? else {
            if self.store.device_revoked(peer).await.map_err(store_error)? {
                return Err(format!(
                    "this device (key {}) was revoked; ask an admin for a new invite",
                    peer.short()
                ));
            }
            return Err(format!(
                "key {} is not enrolled as a user's device; run `mesh login TOKEN` first",
                peer.short()
            ));
        };
        let user = self
            .store
            .user_by_id(device.user_id)
            .await
            .map_err(store_error)?
            .ok_or("this device's user was removed")?;
        let role = self
            .store
            .role(&user.role)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                format!(
                    "{}'s role {} no longer exists; ask an admin",
                    user.name, user.role
                )
            })?;
        match request {
            ControlMessage::GrantRequest(request) => {
                self.grant(peer, client, &user, &role, request).await
            }
            ControlMessage::HostsRequest(page) => {
                authorize(&user, &role, &Request::ListHosts).map_err(|d| d.0)?;
                self.directory(page.after.as_deref()).await
            }
            ControlMessage::ContactRequest(ContactRequest { host, punch }) => {
                let host = self.host_named(&host).await?;
                authorize(&user, &role, &Request::Reach(&host)).map_err(|d| d.0)?;
                Ok(ControlMessage::Contact(
                    self.rendezvous(peer, client, punch, host),
                ))
            }
            ControlMessage::RelayRequest(_) => Ok(ControlMessage::UseRelay(UseRelay {
                relay: self.current_relay(),
            })),
            ControlMessage::HostSet(set) => self.host_set(&user, &role, set).await,
            ControlMessage::InviteCreate(create) => self.invite(&user, &role, create).await,
            ControlMessage::InviteListRequest(_) => {
                authorize(&user, &role, &Request::IssueCredentials).map_err(|d| d.0)?;
                let invites = self.store.invites().await.map_err(store_error)?;
                Ok(ControlMessage::InviteList(InviteList {
                    invites: invites.into_iter().map(invite_entry).collect(),
                }))
            }
            ControlMessage::InviteRevoke(InviteRevoke { id }) => {
                authorize(&user, &role, &Request::IssueCredentials).map_err(|d| d.0)?;
                self.store.remove_invite(&id).await.map_err(store_error)?;
                Ok(done(format!("invite {id} revoked")))
            }
            ControlMessage::UserListRequest(_)
            | ControlMessage::UserAdd(_)
            | ControlMessage::UserRemove(_)
            | ControlMessage::UserSetRole(_)
            | ControlMessage::RoleListRequest(_)
            | ControlMessage::RolePut(_)
            | ControlMessage::RoleRemove(_) => {
                authorize(&user, &role, &Request::Administer).map_err(|d| d.0)?;
                let reply = self.administer(&user, request).await;
                // A removed user's devices may no longer use the relays.
                self.relays_changed().await;
                reply
            }
            ControlMessage::RevokeRequest(revoke) => {
                authorize(&user, &role, &Request::Administer).map_err(|d| d.0)?;
                let reply = self.revoke(&user, revoke.what).await;
                self.relays_changed().await;
                reply
            }
            ControlMessage::AuditQuery(query) => {
                authorize(&user, &role, &Request::ReadAudit).map_err(|d| d.0)?;
                self.audit_query(query).await
            }
            ControlMessage::OfflineGrantsRequest(_) => Err(
                "offline grants are not handed out in bulk; each grant for a host comes with \
                     its offline grant when the role allows it (mesh shell|exec HOST while \
                     connected)"
                    .into(),
            ),
            ControlMessage::TimeRequest(request) => Ok(ControlMessage::TimeReply(TimeReply {
                nonce: request.nonce,
                coordinator_time: self.now(),
            })),
            other => Err(format!("unexpected request {other:?}")),
        }
    }

    /// User and role administration (the caller is an admin).
    async fn administer(&self, admin: &User, request: ControlMessage) -> Reply {
        let store = &self.store;
        match request {
            ControlMessage::UserListRequest(_) => {
                let mut users = Vec::new();
                for user in store.users().await.map_err(store_error)? {
                    let devices = store.devices_of(user.id).await.map_err(store_error)?;
                    users.push(UserEntry {
                        devices: u32::try_from(devices.len()).unwrap_or(u32::MAX),
                        name: user.name,
                        role: user.role,
                        created_at: user.created_at,
                    });
                }
                Ok(ControlMessage::UserList(UserList { users }))
            }
            ControlMessage::UserAdd(UserAdd { name, role }) => {
                check_user_name(&name)?;
                store
                    .add_user(&name, &role, self.now())
                    .await
                    .map_err(store_error)?;
                tracing::info!(by = %admin.name, user = %name, %role, "user added");
                Ok(done(format!(
                    "user {name} added with role {role}; enroll a device with `mesh invite user {name}`"
                )))
            }
            ControlMessage::UserRemove(UserRemove { name }) => {
                if name == admin.name {
                    return Err("you cannot remove yourself; another admin can".into());
                }
                let user = store
                    .user(&name)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| format!("no user {name}"))?;
                // Revoked first: grants already issued to a removed user must stop working,
                // and their open sessions end, as with `mesh revoke user`.
                let told = self
                    .issue_revocation(RevocationTarget::User(user.id))
                    .await?;
                store.remove_user(&name).await.map_err(store_error)?;
                tracing::info!(by = %admin.name, user = %name, hosts_told = told, "user removed");
                Ok(done(format!(
                    "user {name} removed and their grants revoked; {told} online host(s) told \
                     now, the others when they connect"
                )))
            }
            ControlMessage::UserSetRole(UserSetRole { name, role }) => {
                store
                    .set_user_role(&name, &role)
                    .await
                    .map_err(store_error)?;
                tracing::info!(by = %admin.name, user = %name, %role, "role changed");
                Ok(done(format!("{name} now has role {role}")))
            }
            ControlMessage::RoleListRequest(_) => {
                let roles = store.roles().await.map_err(store_error)?;
                Ok(ControlMessage::RoleList(RoleList {
                    roles: roles.iter().map(role_spec).collect(),
                }))
            }
            ControlMessage::RolePut(spec) => {
                let role = role_from_spec(spec)?;
                if Role::is_built_in(&role.name) {
                    return Err(format!(
                        "{} is a built-in role and cannot be redefined",
                        role.name
                    ));
                }
                store.put_role(&role).await.map_err(store_error)?;
                tracing::info!(by = %admin.name, role = %role.name, "role defined");
                Ok(done(format!("role {} defined", role.name)))
            }
            ControlMessage::RoleRemove(RoleRemove { name }) => {
                if Role::is_built_in(&name) {
                    return Err(format!("{name} is a built-in role and cannot be removed"));
                }
                store.remove_role(&name).await.map_err(store_error)?;
                Ok(done(format!("role {name} removed")))
            }
            other => Err(format!("unexpected request {other:?}")),
        }
    }

    /// Signs and records a revocation, then pushes it to every online host (the others get it
    /// when they connect).
    async fn revoke(&self, admin: &User, what: RevokeWhat) -> Reply {
        let (target, described) = match what {
            RevokeWhat::Grant(id) => (RevocationTarget::Grant(id), format!("grant {id}")),
            RevokeWhat::Device(key) => {
                if self.store.device(key).await.map_err(store_error)?.is_none() {
                    return Err(format!("no enrolled device with key {key}"));
                }
                (
                    RevocationTarget::Device(key),
                    format!("device {}", key.short()),
                )
            }
            RevokeWhat::User(name) => {
                let user = self
                    .store
                    .user(&name)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| format!("no user {name}"))?;
                (RevocationTarget::User(user.id), format!("user {name}"))
            }
        };
        let told = self.issue_revocation(target).await?;
        tracing::info!(by = %admin.name, %described, hosts_told = told, "revoked");
        Ok(done(format!(
            "{described} revoked; {told} online host(s) told now, the others when they connect"
        )))
    }

    /// Signs a revocation of `target`, stores it and pushes it to every live host; returns how
    /// many hosts were told now (the others get it after their next Welcome).
    async fn issue_revocation(&self, target: RevocationTarget) -> Result<usize, String> {
        let revocation = Revocation {
            id: RevocationId::random().map_err(|e| e.to_string())?,
            target,
            issued_at: self.now(),
        };
        let signed = self
            .ca
            .sign_revocation(&revocation)
            .map_err(|e| e.to_string())?;
        self.store
            .add_revocation(&revocation, &signed)
            .await
            .map_err(store_error)?;
        let push = ControlMessage::Revoke(Revoke { revocation: signed });
        Ok(self.push_all(&push))
    }

    /// Stores a host's audit events and acknowledges them. The host is the connection's
    /// proven key; the events say nothing about which host they are from.
    async fn audit_upload(&self, peer: NodeId, upload: AuditUpload) -> Reply {
        let host = self
            .store
            .host_by_key(peer)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                format!(
                    "key {} is not an enrolled host; only hosts upload audit events",
                    peer.short()
                )
            })?;
        for event in &upload.events {
            event.check_shape()?;
        }
        let new = self
            .store
            .add_audit_events(peer, &host.name, &upload.events, self.now())
            .await
            .map_err(store_error)?;
        tracing::debug!(host = %host.name, received = upload.events.len(), new, "audit events stored");
        Ok(ControlMessage::AuditAck(AuditAck {
            received: u32::try_from(upload.events.len()).unwrap_or(u32::MAX),
            new: u32::try_from(new).unwrap_or(u32::MAX),
        }))
    }

    /// One page of stored audit events (the caller is an admin).
    async fn audit_query(&self, query: AuditQuery) -> Reply {
        let filter = AuditFilter {
            host: query.host,
            user: query.user,
            since: query.since,
            after: query.after,
            // One more than a page says whether there are more.
            limit: MAX_AUDIT_BATCH + 1,
        };
        let mut records = self
            .store
            .audit_events(&filter)
            .await
            .map_err(store_error)?;
        let more = records.len() > MAX_AUDIT_BATCH;
        records.truncate(MAX_AUDIT_BATCH);
        Ok(ControlMessage::AuditList(AuditList { records, more }))
    }

    async fn host_named(&self, name: &str) -> Result<Host, String> {
        self.store
            .host(name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| format!("no host named {name} (see `mesh hosts`)"))
    }

    async fn grant(
        &self,
        client: NodeId,
        client_side: &ClientSide,
        user: &User,
        role: &Role,
        request: SessionGrantRequest,
    ) -> Reply {
        let host = self.host_named(&request.host).await?;
        // No login: a temporary account, whose grant names the privilege it gets instead.
        let temporary = request.login.is_none();
        let login = request.login.as_deref().unwrap_or(TEMPORARY_ROOT);
        authorize(
            user,
            role,
            &Request::Session {
                host: &host,
                login,
                temporary,
                command: request.command,
            },
        )
        .map_err(|d| d.0)?;
        let now = self.now();
        let grant = Grant {
            id: GrantId::random().map_err(|e| e.to_string())?,
            user_id: user.id,
            user_name: user.name.clone(),
            client,
            host: host.key,
            login: login.to_owned(),
            permissions: if request.command {
                Permissions::EXEC
            } else {
                Permissions::SHELL
            },
            temporary,
            kind: GrantKind::Online,
            not_before: now,
            not_after: now.saturating_add(ONLINE_GRANT_DEFAULT_TTL),
            max_session_secs: role.max_session.as_secs(),
        };
        let signed = self.ca.sign_grant(&grant).map_err(|e| e.to_string())?;
        tracing::info!(user = %user.name, host = %host.name, %login, grant = %grant.id, "grant issued");
        // Temporary root is never cached for offline use: it lives as long as its online grant.
        let offline_grant = if !temporary && authorize(user, role, &Request::OfflineGrants).is_ok()
        {
            let offline = Grant {
                id: GrantId::random().map_err(|e| e.to_string())?,
                permissions: role_permissions(role),
                kind: GrantKind::Offline,
                not_after: now.saturating_add(OFFLINE_GRANT_DEFAULT_TTL),
                ..grant
            };
            Some(self.ca.sign_grant(&offline).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let contact = self.rendezvous(client, client_side, request.punch, host);
        Ok(ControlMessage::Granted(Granted {
            grant: signed,
            host: contact,
            offline_grant,
        }))
    }

    /// Where the client finds `host`, and — when the client offered its side and the host is
    /// online — the rendezvous: the host is told the client's candidates and a start time a
    /// little beyond the slower side's one-way delay, and the client the same time.
    fn rendezvous(
        &self,
        client: NodeId,
        side: &ClientSide,
        offer: Option<PunchOffer>,
        host: Host,
    ) -> HostContact {
        let now = self.now();
        let mut contact = HostContact {
            name: host.name,
            key: host.key,
            addrs: host.addrs,
            nat: NatMapping::Unknown,
            punch_at: None,
            coordinator_time: now,
        };
        let presence = self.lock_presence();
        let Some(live) = presence.get(&host.key) else {
            return contact;
        };
        contact.nat = live.nat;
        let Some(offer) = offer else {
            return contact;
        };
        let slower = side.rtt.max(live.quic.rtt());
        let start_at = now.saturating_add(slower / 2 + PUNCH_LEAD);
        let (addrs, nat) = vouched_candidates(side.observed, offer.addrs, offer.nat);
        let punch = ControlMessage::Punch(Rendezvous {
            peer: client,
            peer_instance: offer.instance,
            addrs,
            nat,
            start_at,
        });
        if live.push.try_send(punch).is_ok() {
            contact.punch_at = Some(start_at);
        }
        contact
    }

    /// One page of the directory (see [`directory_page`]).
    async fn directory(&self, after: Option<&str>) -> Reply {
        let hosts = self.store.hosts().await.map_err(store_error)?;
        let online = self.online_keys();
        let entries = hosts.into_iter().map(|host| HostEntry {
            online: online.contains(&host.key),
            name: host.name,
            key: host.key,
            last_seen: host.last_seen,
            labels: labels_out(&host.labels),
            settings: settings_out(host.settings),
        });
        directory_page(entries, after).map(ControlMessage::Hosts)
    }

    async fn host_set(&self, user: &User, role: &Role, set: HostSet) -> Reply {
        let host = self.host_named(&set.host).await?;
        if set.remote_shell.is_some() {
            authorize(user, role, &Request::SetRemoteShell(&host)).map_err(|d| d.0)?;
        }
        if set.temp_users.is_some() {
            authorize(user, role, &Request::SetTempUsers(&host)).map_err(|d| d.0)?;
        }
        let settings = HostSettings {
            remote_shell: set.remote_shell.unwrap_or(host.settings.remote_shell),
            temp_users: set.temp_users.unwrap_or(host.settings.temp_users),
        };
        self.store
            .set_host_settings(&host.name, settings)
            .await
            .map_err(store_error)?;
        let pushed = self.push(host.key, ControlMessage::Settings(settings_out(settings)));
        tracing::info!(by = %user.name, host = %host.name, ?settings, pushed, "host settings changed");
        let onoff = |b: bool| if b { "on" } else { "off" };
        let delivery = if pushed {
            "the host has been told"
        } else {
            "the host is offline and will be told when it connects"
        };
        Ok(done(format!(
            "{}: remote-shell={} temp-users={} ({delivery})",
            host.name,
            onoff(settings.remote_shell),
            onoff(settings.temp_users)
        )))
    }

    async fn invite(&self, user: &User, role: &Role, create: InviteCreate) -> Reply {
        authorize(user, role, &Request::IssueCredentials).map_err(|d| d.0)?;
        let (what, kind) = match create.target {
            InviteTarget::Host { name, labels } => {
                check_name("host", &name)?;
                if self.store.host(&name).await.map_err(store_error)?.is_some() {
                    return Err(format!("host {name} is already enrolled"));
                }
                let labels = labels_in(labels)?;
                (InviteFor::Host { name, labels }, TokenKind::Host)
            }
            InviteTarget::User { name, role } => {
                check_user_name(&name)?;
                if self.store.role(&role).await.map_err(store_error)?.is_none() {
                    return Err(format!("no role {role} (see `mesh role list`)"));
                }
                (InviteFor::User { name, role }, TokenKind::User)
            }
            InviteTarget::Relay { name } => {
                check_name("relay", &name)?;
                let taken = self.store.relays().await.map_err(store_error)?;
                if taken.iter().any(|r| r.name == name) {
                    return Err(format!("relay {name} is already enrolled"));
                }
                (InviteFor::Relay { name }, TokenKind::Relay)
            }
        };
        let (id, token, expires_at) = self.create_invite(what, kind, &user.name).await?;
        Ok(ControlMessage::Invited(Invited {
            id,
            token,
            expires_at,
        }))
    }

    /// Stores a new invite and returns its id, token text and expiry.
    pub async fn create_invite(
        &self,
        what: InviteFor,
        kind: TokenKind,
        created_by: &str,
    ) -> Result<(String, String, UnixTime), String> {
        let now = self.now();
        let expires_at = now.saturating_add(INVITE_TTL);
        let secret = TokenSecret::random().map_err(|e| e.to_string())?;
        let token = EnrollmentToken {
            ca_key: self.ca.public_key(),
            kind,
            coordinator_key: self.coordinator_key,
            coordinator_addrs: self.addrs.clone(),
            secret: secret.clone(),
            not_after: expires_at,
        };
        let text = self.ca.sign_token(&token).map_err(|e| e.to_string())?;
        let id = GrantId::random().map_err(|e| e.to_string())?.to_string()[..12].to_owned();
        let invite = Invite {
            id: id.clone(),
            secret_hash: secret.hash(),
            what,
            created_by: created_by.to_owned(),
            created_at: now,
            expires_at,
        };
        self.store.add_invite(&invite).await.map_err(store_error)?;
        Ok((id, text, expires_at))
    }

    /// A host's presence stream: Welcome with its settings and the coordinator's time, then
    /// pushes, and time replies, until it closes.
    async fn presence(
        &self,
        conn: &Connection,
        listen_addrs: Vec<std::net::SocketAddr>,
        mut send: quinn::SendStream,
        mut recv: FrameReader<quinn::RecvStream>,
    ) -> Result<(), mesh_node::Error> {
        let peer = conn.peer();
        let Some(host) = self.store.host_by_key(peer).await.ok().flatten() else {
            let failure = ControlMessage::Failure(Failure {
                message: format!(
                    "key {} is not an enrolled host; run `mesh node join TOKEN` first",
                    peer.short()
                ),
            });
            write_frame(&mut send, &failure).await?;
            let _ = send.finish();
            return Ok(());
        };
        let observed = conn.quic().remote_address();
        let addrs = contact_addrs(observed, &listen_addrs);
        if let Err(e) = self.store.host_seen(peer, self.now(), &addrs).await {
            tracing::warn!(host = %host.name, "cannot record presence: {e}");
        }
        let (push, mut pushed) = mpsc::channel(PUSH_QUEUE);
        let id = self.next_presence.fetch_add(1, Ordering::Relaxed);
        self.lock_presence().insert(
            peer,
            Presence {
                id,
                push,
                quic: conn.quic().clone(),
                nat: NatMapping::Unknown,
            },
        );
        tracing::info!(host = %host.name, %observed, "host online");
        let welcome = ControlMessage::Welcome(Welcome {
            observed_addr: observed,
            coordinator_time: self.now(),
            settings: settings_out(host.settings),
        });
        let revocations = self.store.revocations().await.unwrap_or_else(|e| {
            tracing::warn!("cannot read revocations for {}: {e}", host.name);
            Vec::new()
        });
        let result = async {
            write_frame(&mut send, &welcome).await?;
            // Everything revoked so far; the host keeps what it has seen and ignores repeats.
            for revocation in revocations {
                write_frame(&mut send, &ControlMessage::Revoke(Revoke { revocation })).await?;
            }
            let relay = ControlMessage::UseRelay(UseRelay {
                relay: self.current_relay(),
            });
            write_frame(&mut send, &relay).await?;
            loop {
                tokio::select! {
                    biased;
                    message = pushed.recv() => match message {
                        Some(message) => write_frame(&mut send, &message).await?,
                        None => return Ok(()),
                    },
                    frame = recv.next::<ControlMessage>() => match frame? {
                        Some(ControlMessage::TimeRequest(request)) => {
                            let reply = ControlMessage::TimeReply(TimeReply {
                                nonce: request.nonce,
                                coordinator_time: self.now(),
                            });
                            write_frame(&mut send, &reply).await?;
                        }
                        Some(ControlMessage::NatReport(report)) => {
                            let (_, nat) = vouched_candidates(observed, Vec::new(), report.nat);
                            if let Some(live) = self.lock_presence().get_mut(&peer) {
                                if live.id == id {
                                    live.nat = nat;
                                }
                            }
                        }
                        Some(_) => {}
                        None => return Ok(()),
                    },
                }
            }
        }
        .await;
        {
            let mut presence = self.lock_presence();
            if presence.get(&peer).is_some_and(|p| p.id == id) {
                presence.remove(&peer);
            }
        }
        let _ = self.store.host_seen(peer, self.now(), &addrs).await;
        tracing::info!(host = %host.name, "host offline");
        result
    }

    /// A standalone relay's control stream: the allowed keys now and whenever they change,
    /// until it closes. While it is up (and first by name), it is the mesh's relay.
    async fn relay_presence(
        &self,
        conn: &Connection,
        listen_addrs: Vec<std::net::SocketAddr>,
        mut send: quinn::SendStream,
        mut recv: FrameReader<quinn::RecvStream>,
    ) -> Result<(), mesh_node::Error> {
        let peer = conn.peer();
        let Some(relay) = self.store.relay_by_key(peer).await.ok().flatten() else {
            let failure = ControlMessage::Failure(Failure {
                message: format!(
                    "key {} is not an enrolled relay; run `mesh relay join TOKEN` first",
                    peer.short()
                ),
            });
            write_frame(&mut send, &failure).await?;
            let _ = send.finish();
            return Ok(());
        };
        let observed = conn.quic().remote_address();
        let addrs = contact_addrs(observed, &listen_addrs);
        if let Err(e) = self.store.relay_seen(peer, self.now(), &addrs).await {
            tracing::warn!(relay = %relay.name, "cannot record presence: {e}");
        }
        let mut allowed = self.allowed.subscribe();
        // Fresh, not the last computed set: it may never have been computed.
        let keys = match self.allowed_keys().await {
            Ok(keys) => Arc::new(keys),
            Err(e) => {
                tracing::warn!("cannot list the keys allowed to use relays: {e}");
                return Ok(());
            }
        };
        let id = self.next_presence.fetch_add(1, Ordering::Relaxed);
        self.lock_relays().insert(
            relay.name.clone(),
            RelayPresence {
                id,
                key: peer,
                addrs: addrs.clone(),
            },
        );
        tracing::info!(relay = %relay.name, %observed, "relay online");
        self.relay_choice_changed();
        let result = async {
            send_allowed(&mut send, &keys).await?;
            loop {
                tokio::select! {
                    biased;
                    changed = allowed.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let keys = allowed.borrow_and_update().clone();
                        send_allowed(&mut send, &keys).await?;
                    }
                    frame = recv.next::<ControlMessage>() => match frame? {
                        Some(_) => {}
                        None => return Ok(()),
                    },
                }
            }
        }
        .await;
        {
            let mut relays = self.lock_relays();
            if relays.get(&relay.name).is_some_and(|r| r.id == id) {
                relays.remove(&relay.name);
            }
        }
        tracing::info!(relay = %relay.name, "relay offline");
        self.relay_choice_changed();
        result
    }

    fn lock_relays(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RelayPresence>> {
        self.relays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mesh's relay now: the first standalone relay (by name) whose control stream is up;
    /// `None` means the coordinator's own.
    fn current_relay(&self) -> Option<RelayInfo> {
        self.lock_relays().iter().next().map(|(name, r)| RelayInfo {
            name: name.clone(),
            key: r.key,
            addrs: r.addrs.clone(),
        })
    }

    /// Tells every online host which relay to use now.
    fn relay_choice_changed(&self) {
        let message = ControlMessage::UseRelay(UseRelay {
            relay: self.current_relay(),
        });
        self.push_all(&message);
    }

    /// Every key that may use a relay: hosts and the devices of users (removed users'
    /// devices and revoked devices are gone from the store).
    async fn allowed_keys(&self) -> Result<Vec<NodeId>, StoreError> {
        let mut keys = std::collections::BTreeSet::new();
        for host in self.store.hosts().await? {
            keys.insert(host.key);
        }
        for user in self.store.users().await? {
            for device in self.store.devices_of(user.id).await? {
                keys.insert(device.key);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Recomputes the keys allowed to use a relay (after an enrollment, a removal or a
    /// revocation): the embedded relay drops the connections of keys no longer in it, and every
    /// standalone relay's stream is handed the new set.
    async fn relays_changed(&self) {
        match self.allowed_keys().await {
            Ok(keys) => {
                let set: std::collections::BTreeSet<NodeId> = keys.iter().copied().collect();
                let closed = self.relay.disconnect_unless(|key| set.contains(&key));
                if closed > 0 {
                    tracing::info!(closed, "relay connections of keys no longer allowed closed");
                }
                // Only a real change goes out to the relays.
                self.allowed.send_if_modified(|current| {
                    if **current == keys {
                        false
                    } else {
                        *current = Arc::new(keys);
                        true
                    }
                });
            }
            Err(e) => tracing::warn!("cannot list the keys allowed to use relays: {e}"),
        }
    }

    fn lock_presence(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Presence>> {
        self.presence.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn online_keys(&self) -> std::collections::BTreeSet<NodeId> {
        self.lock_presence().keys().copied().collect()
    }

    /// Sends `message` on every online host's presence stream; returns how many took it.
    fn push_all(&self, message: &ControlMessage) -> usize {
        self.lock_presence()
            .values()
            .filter(|p| p.push.try_send(message.clone()).is_ok())
            .count()
    }

    /// Sends `message` on the host's presence stream; false if it is offline.
    fn push(&self, host: NodeId, message: ControlMessage) -> bool {
        self.lock_presence()
            .get(&host)
            .is_some_and(|p| p.push.try_send(message).is_ok())
    }
}

/// What the coordinator passes on of a node's own account of where it is (`offer` addresses
/// and its NAT), next to `observed`, where its connection came from. Peers probe what it says,
/// and against a random NAT spray a thousand pings at the address it names: so only addresses
/// a node can own are passed on — `observed` first (unless it came over a TCP stream, whose
/// mapping says nothing of UDP), then private, unique-local or (for a node on loopback)
/// loopback ones —, and a NAT naming an external address other than `observed`'s is taken as
/// unknown. No node can turn the mesh's probes on a third party.
fn vouched_candidates(
    observed: std::net::SocketAddr,
    offered: Vec<std::net::SocketAddr>,
    nat: NatMapping,
) -> (Vec<std::net::SocketAddr>, NatMapping) {
    let over_stream = is_stream_addr(observed);
    let mut addrs = Vec::with_capacity(MAX_LISTEN_ADDRS);
    if !over_stream {
        addrs.push(observed);
    }
    let observed_ip = observed.ip().to_canonical();
    let own = |addr: &std::net::SocketAddr| match addr.ip().to_canonical() {
        // Private, or the shared space carrier NATs number their insides from (100.64/10).
        std::net::IpAddr::V4(ip) => {
            ip.is_private()
                || (ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64)
                || (ip.is_loopback() && observed_ip.is_loopback())
        }
        std::net::IpAddr::V6(ip) => {
            ip.is_unique_local() || (ip.is_loopback() && observed_ip.is_loopback())
        }
    };
    for addr in offered {
        if addrs.len() < MAX_LISTEN_ADDRS && !addrs.contains(&addr) && own(&addr) {
            addrs.push(addr);
        }
    }
    let nat = match nat {
        _ if over_stream => NatMapping::Unknown,
        NatMapping::Sequential { latest, .. } if latest.ip().to_canonical() != observed_ip => {
            NatMapping::Unknown
        }
        NatMapping::Random { ip } if ip.to_canonical() != observed_ip => NatMapping::Unknown,
        other => other,
    };
    (addrs, nat)
}

/// Addresses a client should try for a host: where the coordinator saw it (the same socket
/// serves sessions), then the addresses it listens on that name a real interface.
fn contact_addrs(
    observed: std::net::SocketAddr,
    listen: &[std::net::SocketAddr],
) -> Vec<std::net::SocketAddr> {
    // A host that reached us over a TLS-over-TCP stream shows a made-up address, and its TCP
    // mapping says nothing of where UDP could reach it: only its own listed addresses remain.
    let over_stream = is_stream_addr(observed);
    let mut addrs = if over_stream {
        Vec::new()
    } else {
        vec![observed]
    };
    for addr in listen {
        let concrete = if !addr.ip().is_unspecified() {
            *addr
        } else if over_stream {
            continue;
        } else {
            std::net::SocketAddr::new(observed.ip(), addr.port())
        };
        if !addrs.contains(&concrete) {
            addrs.push(concrete);
        }
    }
    addrs
}

/// Sends a relay the whole allowed set, in pages; the last page says so.
async fn send_allowed(
    send: &mut quinn::SendStream,
    keys: &[NodeId],
) -> Result<(), mesh_node::Error> {
    let mut pages = keys.chunks(MAX_ALLOWED_KEYS_PAGE).peekable();
    if pages.peek().is_none() {
        let empty = ControlMessage::AllowedKeys(AllowedKeys {
            keys: Vec::new(),
            last: true,
        });
        return write_frame(send, &empty).await;
    }
    while let Some(page) = pages.next() {
        let message = ControlMessage::AllowedKeys(AllowedKeys {
            keys: page.to_vec(),
            last: pages.peek().is_none(),
        });
        write_frame(send, &message).await?;
    }
    Ok(())
}

/// The session permissions a role's grants carry.
pub fn role_permissions(role: &Role) -> Permissions {
    let mut permissions = Permissions::NONE;
    if role.allows(Permission::Shell) {
        permissions = permissions.union(Permissions::SHELL);
    }
    if role.allows(Permission::Exec) {
        permissions = permissions.union(Permissions::EXEC);
    }
    permissions
}

fn done(message: String) -> ControlMessage {
    ControlMessage::Done(Done { message })
}

fn store_error(e: StoreError) -> String {
    e.to_string()
}

fn settings_out(s: HostSettings) -> Settings {
    Settings {
        remote_shell: s.remote_shell,
        temp_users: s.temp_users,
    }
}

fn labels_out(labels: &BTreeMap<String, String>) -> Vec<Label> {
    labels
        .iter()
        .map(|(key, value)| Label {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

fn labels_in(labels: Vec<Label>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for Label { key, value } in labels {
        check_name("label", &key)?;
        if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
            return Err(format!(
                "label {key}: value must be 1-128 printable characters"
            ));
        }
        out.insert(key, value);
    }
    Ok(out)
}

fn role_spec(role: &Role) -> RoleSpec {
    RoleSpec {
        name: role.name.clone(),
        permissions: role
            .permissions
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        all_hosts: role.hosts.all,
        host_names: role.hosts.names.clone(),
        host_labels: labels_out(&role.hosts.labels),
        logins: role.logins.clone(),
        max_session_secs: role.max_session.as_secs(),
    }
}

fn role_from_spec(spec: RoleSpec) -> Result<Role, String> {
    check_name("role", &spec.name)?;
    let permissions = spec
        .permissions
        .iter()
        .map(|p| {
            Permission::from_name(p).ok_or_else(|| {
                let known: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
                format!("unknown permission {p:?} (known: {})", known.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for name in &spec.host_names {
        check_name("host", name)?;
    }
    for login in &spec.logins {
        let plain = login == LOGIN_ANY
            || login == LOGIN_SELF
            || (!login.is_empty()
                && login.len() <= 32
                && login
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
        if !plain {
            return Err(format!(
                "login {login:?} is not a valid Unix login, $user or *"
            ));
        }
    }
    let max_session = Duration::from_secs(spec.max_session_secs);
    if max_session.is_zero() {
        return Err("a role's maximum session must be longer than zero".into());
    }
    Ok(Role {
        name: spec.name,
        permissions,
        hosts: HostSelector {
            all: spec.all_hosts,
            names: spec.host_names,
            labels: labels_in(spec.host_labels)?,
        },
        logins: spec.logins,
        max_session,
    })
}

/// An invite as listed.
fn invite_entry(invite: Invite) -> InviteEntry {
    InviteEntry {
        id: invite.id,
        target: match invite.what {
            InviteFor::Host { name, labels } => InviteTarget::Host {
                name,
                labels: labels_out(&labels),
            },
            InviteFor::User { name, role } => InviteTarget::User { name, role },
            InviteFor::Relay { name } => InviteTarget::Relay { name },
        },
        created_by: invite.created_by,
        expires_at: invite.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, labels: usize) -> HostEntry {
        HostEntry {
            name: format!("edge-{i:05}"),
            key: mesh_proto::SecretKey::from_seed(&[7; 32]).node_id(),
            online: i % 2 == 0,
            last_seen: Some(UnixTime::from_millis(1)),
            labels: (0..labels)
                .map(|l| Label {
                    key: format!("{l:0>64}"),
                    value: "v".repeat(64),
                })
                .collect(),
            settings: Settings {
                remote_shell: true,
                temp_users: false,
            },
        }
    }

    /// Follows the pages from the start; checks each fits a control frame.
    fn all_pages(entries: &[HostEntry]) -> (Vec<String>, usize) {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = directory_page(entries.iter().cloned(), after.as_deref()).unwrap();
            pages += 1;
            let frame = mesh_proto::codec::encode_frame(&ControlMessage::Hosts(page.clone()));
            assert!(
                frame.is_ok(),
                "page {pages} does not fit a frame: {frame:?}"
            );
            names.extend(page.hosts.iter().map(|h| h.name.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => return (names, pages),
            }
        }
    }

    #[test]
    fn a_nodes_own_account_is_passed_on_only_where_it_can_be_true() {
        let observed: std::net::SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let offered = vec![
            "10.0.0.5:40000".parse().unwrap(),
            "100.64.3.2:40000".parse().unwrap(),
            "[fd00::5]:40000".parse().unwrap(),
            // A third party's address: never probed on a node's word.
            "192.0.2.99:53".parse().unwrap(),
            "127.0.0.1:40000".parse().unwrap(),
        ];
        let (addrs, nat) = vouched_candidates(
            observed,
            offered.clone(),
            NatMapping::Random {
                ip: "192.0.2.99".parse().unwrap(),
            },
        );
        assert_eq!(addrs, vec![observed, offered[0], offered[1], offered[2]]);
        assert_eq!(
            nat,
            NatMapping::Unknown,
            "a spray aimed elsewhere is refused"
        );
        let (_, nat) = vouched_candidates(
            observed,
            Vec::new(),
            NatMapping::Random { ip: observed.ip() },
        );
        assert_eq!(nat, NatMapping::Random { ip: observed.ip() });
        let (_, nat) = vouched_candidates(
            observed,
            Vec::new(),
            NatMapping::Sequential {
                latest: "192.0.2.99:2000".parse().unwrap(),
                step: 1,
            },
        );
        assert_eq!(nat, NatMapping::Unknown);
        // On loopback (a test, `mesh demo`), loopback addresses are the node's own.
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (addrs, _) = vouched_candidates(
            local,
            vec!["127.0.0.1:6000".parse().unwrap()],
            NatMapping::Open,
        );
        assert_eq!(addrs.len(), 2);
    }

    #[test]
    fn a_large_directory_comes_in_pages_that_each_fit_a_frame_and_miss_no_host() {
        // Reversed, to show the order comes from the names.
        let plain: Vec<HostEntry> = (0..1500).rev().map(|i| entry(i, 0)).collect();
        let (names, pages) = all_pages(&plain);
        let expected: Vec<String> = (0..1500).map(|i| format!("edge-{i:05}")).collect();
        assert_eq!(names, expected);
        assert!(pages >= 3, "1,500 hosts in {pages} page(s)");
        // Hosts with the most and longest labels: far fewer per page, still complete.
        let heavy: Vec<HostEntry> = (0..100)
            .map(|i| entry(i, mesh_proto::messages::control::MAX_LABELS))
            .collect();
        let (names, pages) = all_pages(&heavy);
        assert_eq!(names.len(), 100);
        assert!(pages > 5, "{pages}");
        let (names, pages) = all_pages(&[]);
        assert!(names.is_empty());
        assert_eq!(pages, 1);
    }
}
