//! What the coordinator knows: users and their devices, hosts and their settings, standalone
//! relays, roles, and pending invites. Plain data; the [`store`](crate::store) keeps it and the
//! [`policy`](crate::policy) judges requests against it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::{NodeId, UnixTime, UserId};
use serde::{Deserialize, Serialize};

/// Longest user, host, relay or role name.
pub const MAX_NAME_LEN: usize = 64;
/// Most labels a host may carry.
pub const MAX_LABELS: usize = 32;

/// Checks a user, host, relay or role name: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
/// Names appear in grants, logs and shell prompts, so they stay plain.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if name.len() > MAX_NAME_LEN || !ok_start || !ok_chars {
        return Err(format!(
            "{what} name {name:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' \
             or '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a user name: [`check_name`], and not the prefix of hosts' temporary accounts (a user
/// named like one could otherwise ask to log in as someone's temporary root account).
pub fn check_user_name(name: &str) -> Result<(), String> {
    check_name("user", name)?;
    if name.starts_with(mesh_node::temp_accounts::NAME_PREFIX) {
        return Err(format!(
            "user name {name:?} is reserved: names starting with {} are hosts' temporary \
             accounts",
            mesh_node::temp_accounts::NAME_PREFIX
        ));
    }
    Ok(())
}

/// A person with an account on the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id (grants carry it).
    pub id: UserId,
    /// Unique name.
    pub name: String,
    /// The role's name.
    pub role: String,
    /// When the user was added.
    pub created_at: UnixTime,
}

/// One of a user's enrolled device keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's key.
    pub key: NodeId,
    /// Whose it is.
    pub user_id: UserId,
    /// When it enrolled.
    pub enrolled_at: UnixTime,
}

/// Per-host settings an admin changes with `mesh host set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSettings {
    /// Whether the host accepts new sessions at all.
    pub remote_shell: bool,
    /// Whether the host may create temporary accounts.
    pub temp_users: bool,
}

impl Default for HostSettings {
    fn default() -> Self {
        Self {
            remote_shell: true,
            temp_users: false,
        }
    }
}

/// An enrolled host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Unique name (bound by the invite).
    pub name: String,
    /// The host's key.
    pub key: NodeId,
    /// Labels (bound by the invite), for role selectors.
    pub labels: BTreeMap<String, String>,
    /// Settings.
    pub settings: HostSettings,
    /// When it enrolled.
    pub enrolled_at: UnixTime,
    /// When the coordinator last heard from it.
    pub last_seen: Option<UnixTime>,
    /// Where it said it listens, and where the coordinator saw it from (its last control
    /// connection): the addresses a client tries.
    pub addrs: Vec<SocketAddr>,
}

/// An enrolled standalone relay (`mesh relay`): it holds its own key like a host, and clients
/// pin it through the coordinator. A relay embedded in the coordinator is not one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// Unique among relays (bound by the invite); the same rules as host names
    /// ([`check_name`]).
    pub name: String,
    /// The relay's key.
    pub key: NodeId,
    /// When it enrolled.
    pub enrolled_at: UnixTime,
    /// When the coordinator last heard from it.
    pub last_seen: Option<UnixTime>,
    /// Where it said it listens, and where the coordinator saw it from (its last control
    /// connection): the addresses a client tries.
    pub addrs: Vec<SocketAddr>,
}

/// Something a role may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Open an interactive shell.
    Shell,
    /// Run a command.
    Exec,
    /// Receive offline grants, cached for use while the coordinator is unreachable.
    Offline,
    /// Change a host's remote-shell setting.
    HostSettings,
    /// Allow temporary users on a host, and ask for temporary accounts.
    TempUsers,
    /// Issue credentials: invites and offline grant files.
    IssueCredentials,
    /// Administer users and roles.
    Admin,
}

impl Permission {
    /// Every permission, in display order.
    pub const ALL: [Self; 7] = [
        Self::Shell,
        Self::Exec,
        Self::Offline,
        Self::HostSettings,
        Self::TempUsers,
        Self::IssueCredentials,
        Self::Admin,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Exec => "exec",
            Self::Offline => "offline",
            Self::HostSettings => "host-settings",
            Self::TempUsers => "temp-users",
            Self::IssueCredentials => "issue-credentials",
            Self::Admin => "admin",
        }
    }

    /// Parses a name from [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which hosts a role reaches: all of them, or those named or carrying every listed label.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostSelector {
    /// Every host.
    #[serde(default)]
    pub all: bool,
    /// Hosts by name.
    #[serde(default)]
    pub names: Vec<String>,
    /// Hosts that carry all of these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl HostSelector {
    /// Every host.
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// Whether `host` is selected. An empty selector selects nothing.
    pub fn selects(&self, host: &Host) -> bool {
        self.all
            || self.names.contains(&host.name)
            || (!self.labels.is_empty()
                && self
                    .labels
                    .iter()
                    .all(|(k, v)| host.labels.get(k) == Some(v)))
    }
}

/// In a role's logins: the mesh user's own name.
pub const LOGIN_SELF: &str = "$user";
/// In a role's logins: any account.
pub const LOGIN_ANY: &str = "*";

/// Permissions × host selector × allowed logins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Unique name.
    pub name: String,
    /// What it allows.
    pub permissions: Vec<Permission>,
    /// On which hosts (sessions and host settings).
    pub hosts: HostSelector,
    /// As which Unix accounts: names, [`LOGIN_SELF`], or [`LOGIN_ANY`]. Empty: none.
    pub logins: Vec<String>,
    /// Longest a session may run under grants of this role.
    #[serde(with = "humantime_serde_secs")]
    pub max_session: Duration,
}

impl Role {
    /// Whether the role holds `permission`.
    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// The logins this role allows `user`, with [`LOGIN_SELF`] resolved.
    pub fn logins_for(&self, user: &str) -> Vec<String> {
        self.logins
            .iter()
            .map(|l| {
                if l == LOGIN_SELF {
                    user.to_owned()
                } else {
                    l.clone()
                }
            })
            .collect()
    }

    /// The built-in roles: `admin` (everything, any login, every host), `operator` (shell, exec
    /// and offline access on every host, as their own user name), `viewer` (the directory only).
    pub fn built_in() -> [Self; 3] {
        let max_session = mesh_proto::grant::DEFAULT_MAX_SESSION;
        [
            Self {
                name: "admin".into(),
                permissions: Permission::ALL.to_vec(),
                hosts: HostSelector::all(),
                logins: vec![LOGIN_ANY.into()],
                max_session,
            },
            Self {
                name: "operator".into(),
                permissions: vec![Permission::Shell, Permission::Exec, Permission::Offline],
                hosts: HostSelector::all(),
                logins: vec![LOGIN_SELF.into()],
                max_session,
            },
            Self {
                name: "viewer".into(),
                permissions: Vec::new(),
                hosts: HostSelector::all(),
                logins: Vec::new(),
                max_session,
            },
        ]
    }

    /// Whether `name` is a built-in role (they cannot be removed).
    pub fn is_built_in(name: &str) -> bool {
        matches!(name, "admin" | "operator" | "viewer")
    }
}

/// Durations as whole seconds in serialized form.
mod humantime_serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// What an invite enrolls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteFor {
    /// A host, with the name and labels the admin chose.
    Host {
        /// The host's name.
        name: String,
        /// Its labels.
        labels: BTreeMap<String, String>,
    },
    /// A device of a user (created on first redemption if new), with a role.
    User {
        /// The user's name.
        name: String,
        /// The role a new user gets.
        role: String,
    },
    /// A standalone relay, with the name the admin chose.
    Relay {
        /// The relay's name.
        name: String,
    },
}

/// A pending (or spent) one-time enrollment token; only the secret's hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Public id (for listing and revoking), hex.
    pub id: String,
    /// SHA-256 of the token's secret.
    pub secret_hash: [u8; 32],
    /// What it enrolls.
    pub what: InviteFor,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: UnixTime,
    /// After this it is refused.
    pub expires_at: UnixTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        Host {
            name: name.into(),
            key: mesh_proto::SecretKey::from_seed(&[1; 32]).node_id(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            settings: HostSettings::default(),
            enrolled_at: UnixTime::from_secs(0),
            last_seen: None,
            addrs: Vec::new(),
        }
    }

    #[test]
    fn selectors_match_by_all_name_or_every_label() {
        let edge = host("edge-01", &[("site", "oslo"), ("tier", "prod")]);
        assert!(HostSelector::all().selects(&edge));
        assert!(
            !HostSelector::default().selects(&edge),
            "empty selects nothing"
        );
        let by_name = HostSelector {
            names: vec!["edge-01".into()],
            ..HostSelector::default()
        };
        assert!(by_name.selects(&edge));
        let labels = |pairs: &[(&str, &str)]| HostSelector {
            labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..HostSelector::default()
        };
        assert!(labels(&[("site", "oslo")]).selects(&edge));
        assert!(!labels(&[("site", "oslo"), ("tier", "dev")]).selects(&edge));
    }

    #[test]
    fn user_names_cannot_look_like_temporary_accounts() {
        assert!(check_user_name("olga").is_ok());
        let err = check_user_name("mesh-tmp-3").unwrap_err();
        assert!(err.contains("reserved"), "{err}");
        assert!(check_user_name("Olga").is_err());
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("host", "edge-01").is_ok());
        for bad in ["", "-x", "Edge", "a b", "x/y", &"a".repeat(65)] {
            assert!(check_name("host", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_name(p.name()), Some(p));
        }
    }
}
