//! Authorization: every request a user makes of the coordinator goes through [`authorize`], a
//! plain function of the user, their role and the request. Denials say exactly what was not
//! allowed, to whom, and where ("alice may not log in as root on edge-01").

use std::fmt;

use crate::model::{Host, LOGIN_ANY, Permission, Role, User};

/// What a user asks for.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// A grant for a session on `host` as `login` (or a temporary account).
    Session {
        /// The host.
        host: &'a Host,
        /// The Unix login; ignored for a temporary account.
        login: &'a str,
        /// A temporary account instead of `login`.
        temporary: bool,
        /// A command (exec) rather than a shell.
        command: bool,
    },
    /// Offline grants for the hosts the user may reach.
    OfflineGrants,
    /// Turn `host`'s remote shell on or off.
    SetRemoteShell(&'a Host),
    /// Allow or forbid temporary users on `host`.
    SetTempUsers(&'a Host),
    /// Create or revoke invites, mint offline grant files.
    IssueCredentials,
    /// Add, change or remove users and roles.
    Administer,
    /// Read the audit log.
    ReadAudit,
    /// Read the host directory.
    ListHosts,
    /// Learn where `host` is (its key and addresses), to see the path to it.
    Reach(&'a Host),
}

/// Why a request was refused: one line, naming the user, the action and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub String);

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Denial {}

/// Decides `request` for `user`, whose role is `role`.
pub fn authorize(user: &User, role: &Role, request: &Request<'_>) -> Result<(), Denial> {
    let who = &user.name;
    let needs = |permission: Permission, what: &str| {
        if role.allows(permission) {
            Ok(())
        } else {
            Err(Denial(format!(
                "{who} may not {what}: role {} lacks the {permission} permission",
                role.name
            )))
        }
    };
    let on_host = |host: &Host, what: &str| {
        if role.hosts.selects(host) {
            Ok(())
        } else {
            Err(Denial(format!(
                "{who} may not {what} on {}: role {} does not cover that host",
                host.name, role.name
            )))
        }
    };
    match *request {
        Request::Session {
            host,
            login,
            temporary,
            command,
        } => {
            let (permission, what) = if command {
                (Permission::Exec, "run commands")
            } else {
                (Permission::Shell, "open a shell")
            };
            needs(permission, &format!("{what} on {}", host.name))?;
            on_host(host, what)?;
            if !host.settings.remote_shell {
                return Err(Denial(format!(
                    "remote shell is off on {0}; an admin can turn it on with \
                     `mesh host set {0} remote-shell=on`",
                    host.name
                )));
            }
            if temporary {
                needs(
                    Permission::TempUsers,
                    &format!("ask for a temporary account on {}", host.name),
                )?;
                if !host.settings.temp_users {
                    return Err(Denial(format!(
                        "temporary users are off on {0}; an admin can allow them with \
                         `mesh host set {0} temp-users=on`",
                        host.name
                    )));
                }
                return Ok(());
            }
            let logins = role.logins_for(who);
            if logins.iter().any(|l| l == LOGIN_ANY || l == login) {
                return Ok(());
            }
            let allowed = if logins.is_empty() {
                "none".to_owned()
            } else {
                logins.join(", ")
            };
            Err(Denial(format!(
                "{who} may not log in as {login} on {} (role {} allows: {allowed})",
                host.name, role.name
            )))
        }
        Request::OfflineGrants => needs(Permission::Offline, "receive offline grants"),
        Request::SetRemoteShell(host) => {
            needs(
                Permission::HostSettings,
                &format!("change remote-shell on {}", host.name),
            )?;
            on_host(host, "change remote-shell")
        }
        Request::SetTempUsers(host) => {
            needs(
                Permission::TempUsers,
                &format!("change temp-users on {}", host.name),
            )?;
            on_host(host, "change temp-users")
        }
        Request::IssueCredentials => needs(Permission::IssueCredentials, "issue credentials"),
        Request::Administer => needs(Permission::Admin, "administer users and roles"),
        // Audit events name every user's sessions: admins only.
        Request::ReadAudit => needs(Permission::Admin, "read the audit log"),
        // Every enrolled user may see the directory; what they may do there is decided above.
        Request::ListHosts => Ok(()),
        // A host's addresses go only to users whose role covers it: the directory shows
        // every host, but where to knock only to those who may.
        Request::Reach(host) => on_host(host, "look up the address"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_proto::{SecretKey, UnixTime, UserId};

    use super::*;
    use crate::model::{HostSelector, HostSettings};

    fn user(name: &str, role: &str) -> User {
        User {
            id: UserId(1),
            name: name.into(),
            role: role.into(),
            created_at: UnixTime::from_secs(0),
        }
    }

    fn host(name: &str, remote_shell: bool, temp_users: bool) -> Host {
        Host {
            name: name.into(),
            key: SecretKey::from_seed(&[2; 32]).node_id(),
            labels: BTreeMap::from([("site".to_owned(), "oslo".to_owned())]),
            settings: HostSettings {
                remote_shell,
                temp_users,
            },
            enrolled_at: UnixTime::from_secs(0),
            last_seen: None,
            addrs: Vec::new(),
        }
    }

    fn role(name: &str) -> Role {
        Role::built_in()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap()
    }

    fn session<'a>(host: &'a Host, login: &'a str, command: bool) -> Request<'a> {
        Request::Session {
            host,
            login,
            temporary: false,
            command,
        }
    }

    /// The table: (user, role, request) → allowed, or the words the denial must contain.
    #[test]
    fn the_built_in_roles_decide_as_documented() {
        let edge = host("edge-01", true, false);
        let off = host("edge-02", false, false);
        let temp_ok = host("edge-03", true, true);
        let temp = |host| Request::Session {
            host,
            login: "",
            temporary: true,
            command: false,
        };
        let cases: Vec<(&str, &str, Request<'_>, Result<(), &str>)> = vec![
            ("root-admin", "admin", session(&edge, "root", false), Ok(())),
            (
                "root-admin",
                "admin",
                session(&edge, "postgres", true),
                Ok(()),
            ),
            ("alice", "operator", session(&edge, "alice", false), Ok(())),
            ("alice", "operator", session(&edge, "alice", true), Ok(())),
            (
                "alice",
                "operator",
                session(&edge, "root", false),
                Err("alice may not log in as root on edge-01 (role operator allows: alice)"),
            ),
            (
                "vic",
                "viewer",
                session(&edge, "vic", true),
                Err("vic may not run commands on edge-01: role viewer lacks the exec permission"),
            ),
            ("vic", "viewer", Request::ListHosts, Ok(())),
            ("vic", "viewer", Request::Reach(&edge), Ok(())),
            (
                "root-admin",
                "admin",
                session(&off, "root", false),
                Err("remote shell is off on edge-02"),
            ),
            ("alice", "operator", Request::OfflineGrants, Ok(())),
            (
                "vic",
                "viewer",
                Request::OfflineGrants,
                Err("lacks the offline permission"),
            ),
            (
                "alice",
                "operator",
                Request::SetRemoteShell(&edge),
                Err("lacks the host-settings permission"),
            ),
            (
                "root-admin",
                "admin",
                Request::SetRemoteShell(&edge),
                Ok(()),
            ),
            (
                "alice",
                "operator",
                Request::IssueCredentials,
                Err("may not issue credentials"),
            ),
            (
                "alice",
                "operator",
                Request::Administer,
                Err("may not administer"),
            ),
            (
                "alice",
                "operator",
                Request::ReadAudit,
                Err("may not read the audit log"),
            ),
            ("root-admin", "admin", Request::ReadAudit, Ok(())),
            ("root-admin", "admin", temp(&temp_ok), Ok(())),
            (
                "root-admin",
                "admin",
                temp(&edge),
                Err("temporary users are off on edge-01"),
            ),
            (
                "alice",
                "operator",
                temp(&temp_ok),
                Err("lacks the temp-users permission"),
            ),
        ];
        for (name, role_name, request, expected) in cases {
            let got = authorize(&user(name, role_name), &role(role_name), &request);
            match (expected, got) {
                (Ok(()), Ok(())) => {}
                (Err(words), Err(denial)) => {
                    assert!(denial.0.contains(words), "{request:?}: {denial}");
                }
                (expected, got) => {
                    panic!("{name}/{role_name} {request:?}: {got:?}, not {expected:?}")
                }
            }
        }
    }

    #[test]
    fn a_custom_role_reaches_only_its_hosts_and_an_empty_login_list_denies() {
        let oslo = host("edge-01", true, false);
        let mut bergen = host("edge-09", true, false);
        bergen.labels.insert("site".into(), "bergen".into());
        let site = Role {
            name: "oslo-ops".into(),
            permissions: vec![Permission::Exec],
            hosts: HostSelector {
                labels: BTreeMap::from([("site".to_owned(), "oslo".to_owned())]),
                ..HostSelector::default()
            },
            logins: vec!["deploy".into()],
            max_session: std::time::Duration::from_secs(3600),
        };
        let carol = user("carol", "oslo-ops");
        assert!(authorize(&carol, &site, &session(&oslo, "deploy", true)).is_ok());
        let denial = authorize(&carol, &site, &session(&bergen, "deploy", true)).unwrap_err();
        assert!(denial.0.contains("does not cover that host"), "{denial}");
        assert!(authorize(&carol, &site, &Request::Reach(&oslo)).is_ok());
        let denial = authorize(&carol, &site, &Request::Reach(&bergen)).unwrap_err();
        assert!(denial.0.contains("does not cover that host"), "{denial}");
        let none = Role {
            logins: Vec::new(),
            ..site
        };
        let denial = authorize(&carol, &none, &session(&oslo, "deploy", true)).unwrap_err();
        assert!(denial.0.contains("allows: none"), "{denial}");
    }
}
