//! Revocations: CA-signed statements that a grant, a device or a user is no longer trusted.
//!
//! The coordinator pushes them to hosts over the control connection; hosts keep them in a
//! [`RevocationSet`] (and on disk, so a restarted agent still refuses) and
//! [`verify_grant`](crate::grant::verify_grant) consults it. They are signed so that a host can
//! hold and forward them without trusting the channel they came over.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Rejection};
use crate::grant::{Grant, GrantId, UserId};
use crate::id::NodeId;
use crate::signed::{CaKeySet, CaSigner, Domain, Envelope, KeyId};
use crate::time::UnixTime;

random_id! {
    /// A revocation's unique id.
    RevocationId
}

/// What a revocation withdraws.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RevocationTarget {
    /// One grant.
    Grant(GrantId),
    /// Every grant held by one device key.
    Device(NodeId),
    /// Every grant of one user, on every device.
    User(UserId),
}

/// A signed revocation's content.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Revocation {
    /// Unique id.
    pub id: RevocationId,
    /// What is revoked.
    pub target: RevocationTarget,
    /// When the CA issued it.
    pub issued_at: UnixTime,
}

impl CaSigner {
    /// Signs `revocation`.
    pub fn sign_revocation(&self, revocation: &Revocation) -> Result<Vec<u8>, Error> {
        self.seal(Domain::Revocation, revocation)
    }
}

/// Checks a signed revocation's issuer and signature and decodes it.
pub fn open_revocation(bytes: &[u8], keys: &CaKeySet) -> Result<(Revocation, KeyId), Rejection> {
    let envelope = Envelope::parse(Domain::Revocation, bytes)?;
    let key = keys.get(&envelope.key_id).ok_or(Rejection::WrongIssuer {
        key_id: envelope.key_id,
    })?;
    Ok((envelope.open(key)?, envelope.key_id))
}

/// Everything a host has been told is revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSet {
    grants: BTreeSet<GrantId>,
    devices: BTreeSet<NodeId>,
    users: BTreeSet<UserId>,
}

impl RevocationSet {
    /// Adds a (verified) revocation; returns whether it was new.
    pub fn insert(&mut self, revocation: &Revocation) -> bool {
        match revocation.target {
            RevocationTarget::Grant(id) => self.grants.insert(id),
            RevocationTarget::Device(key) => self.devices.insert(key),
            RevocationTarget::User(user) => self.users.insert(user),
        }
    }

    /// If `grant` is revoked, says by what.
    pub fn revokes(&self, grant: &Grant) -> Option<String> {
        if self.grants.contains(&grant.id) {
            Some(format!("grant {} was revoked", grant.id))
        } else if self.devices.contains(&grant.client) {
            Some(format!("device {} was revoked", grant.client.short()))
        } else if self.users.contains(&grant.user_id) {
            Some(format!("user {} was revoked", grant.user_name))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SecretKey;
    use proptest::prelude::*;

    fn ca() -> CaSigner {
        CaSigner::new(SecretKey::from_seed(&[1; 32]))
    }

    #[test]
    fn tampered_revocations_are_refused() {
        let ca = ca();
        let keys = CaKeySet::single(ca.public_key());
        let r = Revocation {
            id: RevocationId::from_bytes([4; 16]),
            target: RevocationTarget::User(UserId(3)),
            issued_at: UnixTime::from_secs(1_800_000_000),
        };
        let bytes = ca.sign_revocation(&r).unwrap();
        assert_eq!(open_revocation(&bytes, &keys).unwrap(), (r, ca.key_id()));
        for position in crate::signed::ENVELOPE_HEADER_LEN..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[position] ^= 0x10;
            assert!(matches!(
                open_revocation(&tampered, &keys),
                Err(Rejection::BadSignature { .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn signed_revocations_round_trip(r: Revocation) {
            let ca = ca();
            let bytes = ca.sign_revocation(&r).unwrap();
            let keys = CaKeySet::single(ca.public_key());
            prop_assert_eq!(open_revocation(&bytes, &keys).unwrap().0, r);
        }
    }
}
