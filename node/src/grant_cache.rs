//! Offline grants a client keeps (`grants/` in its home), with each host's last known
//! addresses, so that `mesh shell HOST` still works while the coordinator is unreachable — the
//! field engineer at a site whose uplink is down. Expired entries are deleted when found.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mesh_proto::grant_file::{grant_from_text, grant_to_text, grant_unverified};
use mesh_proto::{NodeId, UnixTime};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The cache directory in a home.
pub const CACHE_DIR: &str = "grants";

/// One cached offline grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedGrant {
    /// The host's name.
    pub host: String,
    /// The login it allows.
    pub login: String,
    /// The host's key.
    pub key: NodeId,
    /// Where the host was last known to be.
    pub addrs: Vec<SocketAddr>,
    /// The signed grant.
    pub grant: Vec<u8>,
    /// When it stops being valid.
    pub not_after: UnixTime,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    host: String,
    login: String,
    key: NodeId,
    addrs: Vec<SocketAddr>,
    grant: String,
}

/// Whether a name is safe as part of a file name (what the coordinator allows for hosts and
/// what Unix allows for logins, minus anything path-like).
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn path_of(home: &Path, host: &str, login: &str) -> Option<PathBuf> {
    (plain(host) && plain(login)).then(|| home.join(CACHE_DIR).join(format!("{host}@{login}.toml")))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Keeps `grant` for `host` and `login`, replacing an older one. Names that could not be part
/// of a file name are not cached (nothing is lost: the grant is only a convenience).
pub fn save(
    home: &Path,
    host: &str,
    login: &str,
    key: NodeId,
    addrs: &[SocketAddr],
    grant: &[u8],
) -> Result<(), Error> {
    let Some(path) = path_of(home, host, login) else {
        return Ok(());
    };
    let dir = home.join(CACHE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    let entry = Entry {
        host: host.to_owned(),
        login: login.to_owned(),
        key,
        addrs: addrs.to_vec(),
        grant: grant_to_text(grant).trim().to_owned(),
    };
    let text = toml::to_string(&entry).map_err(|e| Error::Config {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // A private file replaced whole: never a half-written grant.
    crate::durable::replace_file(&path, 0o600, text.as_bytes())
}

/// The cached grant for `host` and `login`, if one is still valid at `now`.
pub fn find(home: &Path, host: &str, login: &str, now: UnixTime) -> Option<CachedGrant> {
    let path = path_of(home, host, login)?;
    let entry = read(&path)?;
    if entry.not_after < now {
        // Spent: nothing can use it any more.
        let _ = std::fs::remove_file(&path);
        return None;
    }
    Some(entry)
}

/// The last known addresses of the host with `key`, from any cached grant.
pub fn addrs_for(home: &Path, key: NodeId) -> Vec<SocketAddr> {
    let Ok(entries) = std::fs::read_dir(home.join(CACHE_DIR)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| read(&e.ok()?.path()))
        .filter(|g| g.key == key)
        .flat_map(|g| g.addrs)
        .collect()
}

fn read(path: &Path) -> Option<CachedGrant> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: Entry = toml::from_str(&text).ok()?;
    let grant = grant_from_text(&entry.grant).ok()?;
    let not_after = grant_unverified(&grant).ok()?.not_after;
    Some(CachedGrant {
        host: entry.host,
        login: entry.login,
        key: entry.key,
        addrs: entry.addrs,
        grant,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_proto::{CaSigner, Grant, GrantId, GrantKind, Permissions, SecretKey, UserId};

    use super::*;

    fn signed(not_after: UnixTime) -> (Vec<u8>, NodeId) {
        let ca = CaSigner::new(SecretKey::from_seed(&[1; 32]));
        let host = SecretKey::from_seed(&[2; 32]).node_id();
        let grant = Grant {
            id: GrantId::from_bytes([3; 16]),
            user_id: UserId(1),
            user_name: "alice".into(),
            client: SecretKey::from_seed(&[4; 32]).node_id(),
            host,
            login: "alice".into(),
            permissions: Permissions::SHELL,
            temporary: false,
            kind: GrantKind::Offline,
            not_before: UnixTime::from_secs(1_000),
            not_after,
            max_session_secs: 60,
        };
        (ca.sign_grant(&grant).unwrap(), host)
    }

    #[test]
    fn a_kept_grant_is_found_until_it_expires_then_deleted() {
        let home = tempfile::tempdir().unwrap();
        let (grant, key) = signed(UnixTime::from_secs(5_000));
        let addrs = ["192.0.2.4:7422".parse().unwrap()];
        save(home.path(), "edge-01", "alice", key, &addrs, &grant).unwrap();
        let found = find(home.path(), "edge-01", "alice", UnixTime::from_secs(4_000)).unwrap();
        assert_eq!(
            (found.grant, found.key, found.addrs),
            (grant, key, addrs.to_vec())
        );
        assert_eq!(addrs_for(home.path(), key), addrs);
        assert!(find(home.path(), "edge-01", "root", UnixTime::from_secs(4_000)).is_none());
        let later = UnixTime::from_secs(5_000).saturating_add(Duration::from_secs(1));
        assert!(find(home.path(), "edge-01", "alice", later).is_none());
        assert!(
            addrs_for(home.path(), key).is_empty(),
            "the expired entry is gone"
        );
    }

    #[test]
    fn path_like_names_are_never_used_as_file_names() {
        let home = tempfile::tempdir().unwrap();
        let (grant, key) = signed(UnixTime::from_secs(5_000));
        for bad in ["../x", "a/b", ".hidden", ""] {
            save(home.path(), bad, "alice", key, &[], &grant).unwrap();
            save(home.path(), "edge", bad, key, &[], &grant).unwrap();
        }
        assert!(!home.path().join(CACHE_DIR).exists());
    }
}
