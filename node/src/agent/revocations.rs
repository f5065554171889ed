//! Revocations a host has been told of: in memory for the gate, kept on disk (one signed
//! revocation per line, hex) so that a restarted agent still refuses what was revoked, and
//! announced to running sessions so that those under a revoked grant, device or user end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use mesh_proto::revocation::open_revocation;
use mesh_proto::{CaKeySet, Grant, RevocationSet};
use tokio::sync::watch;

use crate::error::Error;

/// The file in a host's home.
pub const REVOCATIONS_FILE: &str = "revocations";
/// Longest line read from the file (a revocation envelope is far shorter).
const MAX_LINE: usize = 4096;

/// What this host has been told is revoked.
#[derive(Debug)]
pub struct Revocations {
    set: Arc<RwLock<RevocationSet>>,
    path: Option<PathBuf>,
    ca_keys: CaKeySet,
    changed: watch::Sender<u64>,
}

impl Revocations {
    /// An empty set that is not kept on disk (tests, simulation).
    pub fn in_memory(ca_keys: CaKeySet) -> Arc<Self> {
        Arc::new(Self {
            set: Arc::default(),
            path: None,
            ca_keys,
            changed: watch::Sender::new(0),
        })
    }

    /// Loads the home's revocations file (if any), checking every signature again; a line that
    /// fails is skipped with a warning, since the file is only a cache of what the coordinator
    /// signed.
    pub fn load(home: &Path, ca_keys: CaKeySet) -> Result<Arc<Self>, Error> {
        let path = home.join(REVOCATIONS_FILE);
        let mut set = RevocationSet::default();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (number, line) in text.lines().enumerate() {
                    let opened = decode_hex(line.trim())
                        .ok_or_else(|| "not hex".to_owned())
                        .and_then(|bytes| {
                            open_revocation(&bytes, &ca_keys).map_err(|e| e.to_string())
                        });
                    match opened {
                        Ok((revocation, _)) => {
                            set.insert(&revocation);
                        }
                        Err(e) => tracing::warn!("{}:{}: skipped: {e}", path.display(), number + 1),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "cannot read",
                    path,
                    source,
                });
            }
        }
        Ok(Arc::new(Self {
            set: Arc::new(RwLock::new(set)),
            path: Some(path),
            ca_keys,
            changed: watch::Sender::new(0),
        }))
    }

    /// The set, shared with the gate.
    pub fn shared(&self) -> Arc<RwLock<RevocationSet>> {
        self.set.clone()
    }

    /// Takes in a signed revocation: checks it, adds it, keeps it on disk (fsync'd before
    /// anyone is told) and tells running sessions. Returns whether it was new.
    pub fn apply(&self, signed: &[u8]) -> Result<bool, Error> {
        let (revocation, _) = open_revocation(signed, &self.ca_keys)
            .map_err(|e| Error::Refused(format!("revocation refused: {e}")))?;
        let new = self
            .set
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&revocation);
        if !new {
            return Ok(false);
        }
        if let Some(path) = &self.path {
            let io = |source| Error::Io {
                what: "cannot record a revocation in",
                path: path.clone(),
                source,
            };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io)?;
            writeln!(file, "{}", encode_hex(signed)).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Why `grant` is revoked, if it is.
    pub fn revokes(&self, grant: &Grant) -> Option<String> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revokes(grant)
    }

    /// Completes with the reason once `grant` is revoked (at once if it already is).
    pub async fn until_revoked(self: Arc<Self>, grant: Grant) -> String {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(reason) = self.revokes(&grant) {
                return reason;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > MAX_LINE {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_proto::{
        CaSigner, GrantId, GrantKind, Permissions, Revocation, RevocationId, RevocationTarget,
        SecretKey, UnixTime, UserId,
    };

    use super::*;

    fn grant() -> Grant {
        Grant {
            id: GrantId::from_bytes([5; 16]),
            user_id: UserId(7),
            user_name: "alice".into(),
            client: SecretKey::from_seed(&[1; 32]).node_id(),
            host: SecretKey::from_seed(&[2; 32]).node_id(),
            login: "alice".into(),
            permissions: Permissions::SHELL,
            temporary: false,
            kind: GrantKind::Online,
            not_before: UnixTime::from_secs(1_000),
            not_after: UnixTime::from_secs(1_300),
            max_session_secs: 60,
        }
    }

    #[tokio::test]
    async fn a_revocation_is_kept_across_restarts_and_wakes_the_session_it_hits() {
        let home = tempfile::tempdir().unwrap();
        let ca = CaSigner::new(SecretKey::from_seed(&[9; 32]));
        let keys = CaKeySet::single(ca.public_key());
        let revocations = Revocations::load(home.path(), keys.clone()).unwrap();
        let waiting = tokio::spawn(revocations.clone().until_revoked(grant()));
        let signed = ca
            .sign_revocation(&Revocation {
                id: RevocationId::from_bytes([1; 16]),
                target: RevocationTarget::User(UserId(7)),
                issued_at: UnixTime::from_secs(1_100),
            })
            .unwrap();
        assert!(revocations.apply(&signed).unwrap());
        assert!(!revocations.apply(&signed).unwrap(), "a repeat is not new");
        let reason = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(
            reason.contains("revoked") || reason.contains("user"),
            "{reason}"
        );
        // A restarted agent reads it back, and checks it again.
        let again = Revocations::load(home.path(), keys).unwrap();
        assert!(again.revokes(&grant()).is_some());
        let stranger = CaKeySet::single(SecretKey::from_seed(&[8; 32]).node_id());
        let unsigned = Revocations::load(home.path(), stranger).unwrap();
        assert!(
            unsigned.revokes(&grant()).is_none(),
            "another CA's keys accept nothing"
        );
        // A forged one is refused and not kept.
        let mut forged = signed.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(revocations.apply(&forged).is_err());
    }
}
