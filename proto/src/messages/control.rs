//! Control protocol between nodes (hosts, clients) and the coordinator, under ALPN
//! `mesh/control/1`.
//!
//! Each request is one bidirectional stream: the node sends one request message and reads one
//! reply (or a [`Failure`]). A host also keeps one long-lived *presence* stream open: it sends
//! [`Hello`], the coordinator answers [`Welcome`] and then pushes [`Settings`] and revocations
//! on it as they change, while the host measures clock offset with [`TimeRequest`].
//! Who is asking is the key proven in the TLS handshake; nothing in a message claims an
//! identity.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, MAX_AUDIT_BATCH};
use crate::codec::bounded_vec;
use crate::id::NodeId;
use crate::nat::NatMapping;
use crate::time::UnixTime;

/// Most listen addresses a node reports.
pub const MAX_LISTEN_ADDRS: usize = 32;

crate::wire_messages! {
    /// A control-protocol message.
    pub enum ControlMessage: protocol "control", max_payload = 64 * 1024; {
        /// Node → coordinator, first on a control connection.
        1 => Hello(Hello),
        /// Coordinator → node, the answer to [`Hello`].
        2 => Welcome(Welcome),
        /// Node → coordinator: asks for the coordinator's time, to measure clock offset.
        3 => TimeRequest(TimeRequest),
        /// Coordinator → node: the answer to [`TimeRequest`].
        4 => TimeReply(TimeReply),
        /// Coordinator → node: a signed revocation to enforce and persist.
        5 => Revoke(Revoke),
        /// Either way: a failure the other side should show.
        6 => Failure(Failure),
        /// Node → coordinator: enroll the connecting key with a token.
        7 => Enroll(Enroll),
        /// Coordinator → node: enrolled.
        8 => Enrolled(Enrolled),
        /// Client → coordinator: a grant for one session.
        9 => GrantRequest(SessionGrantRequest),
        /// Coordinator → client: the grant and where the host is.
        10 => Granted(Granted),
        /// Client → coordinator: offline grants for every host this user may reach.
        11 => OfflineGrantsRequest(OfflineGrantsRequest),
        /// Coordinator → client: the offline grants.
        12 => OfflineGrants(OfflineGrants),
        /// Client → coordinator: the host directory.
        13 => HostsRequest(HostsRequest),
        /// Coordinator → client: the directory.
        14 => Hosts(Hosts),
        /// Admin → coordinator: change a host's settings.
        15 => HostSet(HostSet),
        /// Coordinator → node: a request succeeded; the text says what changed.
        16 => Done(Done),
        /// Coordinator → host (presence stream): the host's current settings.
        17 => Settings(Settings),
        /// Admin → coordinator: create an enrollment token.
        18 => InviteCreate(InviteCreate),
        /// Coordinator → admin: the token.
        19 => Invited(Invited),
        /// Admin → coordinator: list pending invites.
        20 => InviteListRequest(InviteListRequest),
        /// Coordinator → admin: pending invites.
        21 => InviteList(InviteList),
        /// Admin → coordinator: withdraw a pending invite.
        22 => InviteRevoke(InviteRevoke),
        /// Admin → coordinator: list users.
        23 => UserListRequest(UserListRequest),
        /// Coordinator → admin: users.
        24 => UserList(UserList),
        /// Admin → coordinator: add a user (devices join with `mesh invite user`).
        25 => UserAdd(UserAdd),
        /// Admin → coordinator: remove a user and their devices.
        26 => UserRemove(UserRemove),
        /// Admin → coordinator: change a user's role.
        27 => UserSetRole(UserSetRole),
        /// Admin → coordinator: list roles.
        28 => RoleListRequest(RoleListRequest),
        /// Coordinator → admin: roles.
        29 => RoleList(RoleList),
        /// Admin → coordinator: define (or redefine) a role.
        30 => RolePut(RoleSpec),
        /// Admin → coordinator: remove a role no user holds.
        31 => RoleRemove(RoleRemove),
        /// Admin → coordinator: revoke a grant, a device or a user.
        32 => RevokeRequest(RevokeRequest),
        /// Host → coordinator: audit events to store (on a stream of their own).
        33 => AuditUpload(AuditUpload),
        /// Coordinator → host: every event of the upload is stored; the host may delete them.
        34 => AuditAck(AuditAck),
        /// Admin → coordinator: list audit events.
        35 => AuditQuery(AuditQuery),
        /// Coordinator → admin: one page of audit events.
        36 => AuditList(AuditList),
        /// Client → coordinator: where a host is, without a grant (to see the path to it).
        37 => ContactRequest(ContactRequest),
        /// Coordinator → client: the answer to [`ContactRequest`].
        38 => Contact(HostContact),
        /// Standalone relay → coordinator, first on its control stream (which stays open).
        39 => RelayHello(RelayHello),
        /// Coordinator → standalone relay: the keys that may use it, in pages; pushed again
        /// whenever the set changes (enrollments, removals, revocations).
        40 => AllowedKeys(AllowedKeys),
        /// Node → coordinator: which relay to use.
        41 => RelayRequest(RelayRequest),
        /// Coordinator → node: the relay to use (the answer to [`RelayRequest`]; pushed on a
        /// host's presence stream after [`Welcome`] and whenever it changes).
        42 => UseRelay(UseRelay),
        /// Coordinator → host (presence stream): a client is about to connect; probe its
        /// candidates from the given time on (hole punching).
        43 => Punch(Rendezvous),
        /// Host → coordinator (presence stream): how the host's NAT maps, as its last check
        /// found.
        44 => NatReport(NatReport),
    }
}

/// Longest name (user, host, role, login) carried in control messages.
pub const MAX_NAME: usize = 64;
/// Most labels on a host.
pub const MAX_LABELS: usize = 32;
/// Most hosts in one directory or offline-grant reply.
pub const MAX_HOSTS: usize = 512;
/// Most pending invites listed.
pub const MAX_INVITES: usize = 512;

/// A host label.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Label {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A host's settings, as the coordinator holds them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Settings {
    /// New sessions allowed.
    pub remote_shell: bool,
    /// Temporary accounts allowed.
    pub temp_users: bool,
}

/// Enroll the connecting key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Enroll {
    /// The token's signed envelope.
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
}

/// What the key was enrolled as.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Enrolled {
    /// A host, under this name.
    Host {
        /// The host's name.
        name: String,
    },
    /// A device of this user, with this role.
    Device {
        /// The user's name.
        user: String,
        /// The user's role.
        role: String,
    },
    /// A standalone relay, under this name.
    Relay {
        /// The relay's name.
        name: String,
    },
}

/// Ask for a grant for one session.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SessionGrantRequest {
    /// The host's name.
    pub host: String,
    /// The Unix login; `None` for a temporary account.
    pub login: Option<String>,
    /// A command (exec) rather than a shell.
    pub command: bool,
    /// The client's side of the rendezvous: the coordinator passes it to the host, which
    /// starts probing the client's candidates.
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::punch_offer()"))]
    pub punch: Option<PunchOffer>,
}

/// What a client tells the coordinator so a host can punch toward it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PunchOffer {
    /// The client's path-socket instance (the process the host's probes are for).
    pub instance: u64,
    /// Its own addresses (LAN candidates); the coordinator adds the one it observes.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub addrs: Vec<SocketAddr>,
    /// How its NAT maps.
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::nat_mapping()"))]
    pub nat: NatMapping,
}

/// The coordinator to a host: a client's candidates and when to start probing them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Rendezvous {
    /// The client's key.
    pub peer: NodeId,
    /// Its path-socket instance.
    pub peer_instance: u64,
    /// Its candidates, best first: where the coordinator saw it, then its own addresses.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub addrs: Vec<SocketAddr>,
    /// How its NAT maps.
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::nat_mapping()"))]
    pub nat: NatMapping,
    /// When both sides start probing, in the coordinator's time.
    pub start_at: UnixTime,
}

/// A host's NAT, as its last check found.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NatReport {
    /// How it maps.
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::nat_mapping()"))]
    pub nat: NatMapping,
}

/// Where to reach a host.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HostContact {
    /// The host's name.
    pub name: String,
    /// The host's key.
    pub key: NodeId,
    /// Addresses to try, best first.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub addrs: Vec<SocketAddr>,
    /// How the host's NAT maps (as its last check found).
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::nat_mapping()"))]
    pub nat: NatMapping,
    /// When the host starts probing this client's candidates, in the coordinator's time;
    /// `None`: no rendezvous (none was offered, or the host is offline).
    pub punch_at: Option<UnixTime>,
    /// The coordinator's time when it answered (the client corrects its clock by it to meet
    /// `punch_at`).
    pub coordinator_time: UnixTime,
}

/// A granted session.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Granted {
    /// The signed grant.
    #[serde(with = "serde_bytes")]
    pub grant: Vec<u8>,
    /// The host.
    pub host: HostContact,
    /// For a role with the offline permission: an offline grant for the same host and login,
    /// for the client to keep and use while the coordinator is unreachable.
    #[serde(with = "serde_bytes")]
    pub offline_grant: Option<Vec<u8>>,
}

/// Ask for offline grants.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OfflineGrantsRequest;

/// Offline grants, one per reachable host and allowed login.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OfflineGrants {
    /// The grants with their hosts.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_HOSTS>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub grants: Vec<Granted>,
}

/// Most keys in one [`AllowedKeys`] page (32 bytes each: a page stays far below a frame).
pub const MAX_ALLOWED_KEYS_PAGE: usize = 1024;

/// A standalone relay introduces itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RelayHello {
    /// The relay's mesh version.
    pub version: String,
    /// Addresses it listens on (UDP and TCP, the same ports).
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub listen_addrs: Vec<SocketAddr>,
}

/// One page of the keys allowed to use a relay.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AllowedKeys {
    /// Keys.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ALLOWED_KEYS_PAGE>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(8)"))]
    pub keys: Vec<NodeId>,
    /// Whether this page ends the set: the relay then replaces its set with the pages since
    /// the last one that ended a set.
    pub last: bool,
}

/// Ask which relay to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RelayRequest;

/// The relay to use.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UseRelay {
    /// A standalone relay; `None`: the coordinator's own.
    pub relay: Option<RelayInfo>,
}

/// Where a standalone relay is, as the coordinator vouches (clients pin its key from here,
/// never from the relay itself).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RelayInfo {
    /// Its name.
    pub name: String,
    /// Its key.
    pub key: NodeId,
    /// Its addresses.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub addrs: Vec<SocketAddr>,
}

/// Ask where a host is: its key and addresses, for a user whose role covers it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ContactRequest {
    /// The host's name.
    pub host: String,
    /// The client's side of a rendezvous, to punch toward the host as a session would.
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::punch_offer()"))]
    pub punch: Option<PunchOffer>,
}

/// Ask for a page of the directory (hosts by name).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HostsRequest {
    /// Only hosts whose names sort after this: the previous page's [`Hosts::next`].
    pub after: Option<String>,
}

/// One host in the directory.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HostEntry {
    /// Name.
    pub name: String,
    /// Key.
    pub key: NodeId,
    /// Whether its presence stream is up now.
    pub online: bool,
    /// When it was last heard from.
    pub last_seen: Option<UnixTime>,
    /// Labels.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LABELS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::vec_up_to(MAX_LABELS)")
    )]
    pub labels: Vec<Label>,
    /// Settings.
    pub settings: Settings,
}

/// A page of the directory. Pages are cut so that a page always fits a control frame, however
/// many labels its hosts carry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hosts {
    /// Hosts, by name.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_HOSTS>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub hosts: Vec<HostEntry>,
    /// Where the next page starts (ask again with this as `after`); `None` on the last page.
    pub next: Option<String>,
}

/// Change a host's settings; `None` leaves one as it is.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HostSet {
    /// The host's name.
    pub host: String,
    /// remote-shell=on|off.
    pub remote_shell: Option<bool>,
    /// temp-users=on|off.
    pub temp_users: Option<bool>,
}

/// A request succeeded.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Done {
    /// One line for the user.
    pub message: String,
}

/// What an invite enrolls.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum InviteTarget {
    /// A host with this name and these labels.
    Host {
        /// Name.
        name: String,
        /// Labels.
        #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LABELS>")]
        #[cfg_attr(
            test,
            proptest(strategy = "crate::messages::tests::vec_up_to(MAX_LABELS)")
        )]
        labels: Vec<Label>,
    },
    /// A device of this user (created with this role if new).
    User {
        /// Name.
        name: String,
        /// Role.
        role: String,
    },
    /// A standalone relay with this name.
    Relay {
        /// Name.
        name: String,
    },
}

/// Create an invite.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InviteCreate {
    /// What it enrolls.
    pub target: InviteTarget,
}

/// A created invite.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Invited {
    /// Its id, for `invite revoke`.
    pub id: String,
    /// The token text (`meshtok1…`).
    pub token: String,
    /// When it expires.
    pub expires_at: UnixTime,
}

/// List pending invites.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InviteListRequest;

/// One pending invite.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InviteEntry {
    /// Id.
    pub id: String,
    /// What it enrolls.
    pub target: InviteTarget,
    /// Who created it.
    pub created_by: String,
    /// When it expires.
    pub expires_at: UnixTime,
}

/// Pending invites.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InviteList {
    /// The invites.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_INVITES>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub invites: Vec<InviteEntry>,
}

/// Withdraw a pending invite.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InviteRevoke {
    /// Its id.
    pub id: String,
}

/// Introduces a node on its control connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// The node's key (also proven in the TLS handshake).
    pub node: NodeId,
    /// The node's mesh version, for the directory.
    pub version: String,
    /// Addresses the node's socket listens on (LAN candidates).
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTEN_ADDRS>")]
    #[cfg_attr(
        test,
        proptest(strategy = "crate::messages::tests::socket_addrs(MAX_LISTEN_ADDRS)")
    )]
    pub listen_addrs: Vec<SocketAddr>,
}

/// The coordinator's answer to [`Hello`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Welcome {
    /// The node's address as the coordinator sees it (its reflexive address).
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::socket_addr()"))]
    pub observed_addr: SocketAddr,
    /// The coordinator's wall-clock time when it sent this.
    pub coordinator_time: UnixTime,
    /// The host's settings (hosts only; clients ignore them).
    pub settings: Settings,
}

/// A request for the coordinator's time.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TimeRequest {
    /// Echoed in the reply, to match it.
    pub nonce: u64,
}

/// The coordinator's time, in answer to a [`TimeRequest`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TimeReply {
    /// The request's nonce.
    pub nonce: u64,
    /// The coordinator's wall-clock time when it answered.
    pub coordinator_time: UnixTime,
}

/// A signed revocation (see [`revocation`](crate::revocation)).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Revoke {
    /// The signed envelope.
    #[serde(with = "serde_bytes")]
    pub revocation: Vec<u8>,
}

/// A failure to report.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Failure {
    /// One line saying what happened and what to do.
    pub message: String,
}

/// Most users or roles listed.
pub const MAX_LISTED: usize = 4096;
/// Most permissions, host names or logins in a role.
pub const MAX_ROLE_ITEMS: usize = 64;

/// List users.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserListRequest;

/// One user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserEntry {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Enrolled devices.
    pub devices: u32,
    /// When added.
    pub created_at: UnixTime,
}

/// Users.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserList {
    /// By name.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTED>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub users: Vec<UserEntry>,
}

/// Add a user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserAdd {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
}

/// Remove a user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserRemove {
    /// Name.
    pub name: String,
}

/// Change a user's role.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserSetRole {
    /// Name.
    pub name: String,
    /// New role.
    pub role: String,
}

/// List roles.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RoleListRequest;

/// A role: permissions × hosts × logins.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RoleSpec {
    /// Name.
    pub name: String,
    /// Permission names.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ROLE_ITEMS>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub permissions: Vec<String>,
    /// Every host.
    pub all_hosts: bool,
    /// Hosts by name.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ROLE_ITEMS>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub host_names: Vec<String>,
    /// Hosts carrying all these labels.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LABELS>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub host_labels: Vec<Label>,
    /// Logins (`$user` is the user's own name, `*` any).
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ROLE_ITEMS>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub logins: Vec<String>,
    /// Longest session under its grants, in seconds.
    pub max_session_secs: u64,
}

/// Roles.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RoleList {
    /// By name.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_LISTED>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub roles: Vec<RoleSpec>,
}

/// Remove a role.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RoleRemove {
    /// Name.
    pub name: String,
}

/// What to revoke.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RevokeWhat {
    /// One grant, by id.
    Grant(crate::grant::GrantId),
    /// A device key.
    Device(NodeId),
    /// Every device and grant of a user, by name.
    User(String),
}

/// Revoke something.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RevokeRequest {
    /// What.
    pub what: RevokeWhat,
}

/// Audit events a host uploads. The host is the connection's proven key, never a field.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditUpload {
    /// The events, oldest first.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_AUDIT_BATCH>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub events: Vec<AuditEvent>,
}

/// The coordinator stored every event of an upload (new ones, and ones it already had).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditAck {
    /// How many events the upload carried; the host checks it against what it sent.
    pub received: u32,
    /// How many of them were new (the rest had been stored before: a re-sent batch).
    pub new: u32,
}

/// List audit events, oldest stored first; every filter is optional.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditQuery {
    /// Only events of this host.
    pub host: Option<String>,
    /// Only events of this user.
    pub user: Option<String>,
    /// Only events at or after this time.
    pub since: Option<UnixTime>,
    /// Only events stored after this sequence number (the last of the previous page).
    pub after: Option<u64>,
}

/// One stored audit event.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditRecord {
    /// The coordinator's sequence number, in the order events were stored.
    pub seq: u64,
    /// The host's name when the event was stored.
    pub host: String,
    /// When the coordinator stored it.
    pub received_at: UnixTime,
    /// The event.
    pub event: AuditEvent,
}

/// A page of audit events.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditList {
    /// Events, by sequence number.
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_AUDIT_BATCH>")]
    #[cfg_attr(test, proptest(strategy = "crate::messages::tests::vec_up_to(4)"))]
    pub records: Vec<AuditRecord>,
    /// Whether more match: ask again with `after` set to the last `seq`.
    pub more: bool,
}
