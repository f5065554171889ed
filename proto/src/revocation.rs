//! Revocations: CA-signed statements that a grant, a device or a user is no longer trusted.
//!
//! The coordinator pushes them to hosts over the control connection; hosts keep them in a
//! [`RevocationSet`] (and on disk, so a restarted agent still refuses) and
//! [`verify_grant`](crate::grant::verify_grant) consults it. They are signed so that a host can
//! hold and forward them without trusting the channel they came over.
//!
//! # What a revocation hits
//!
//! A grant revocation hits that one grant, whenever it was issued. A user or device revocation
//! hits the grants issued up to its `issued_at`: those whose `not_before` is at or before it.
//! A grant that starts later was issued after the revocation (the user re-enrolled, the device
//! was admitted again) and is not hit. Grants carry no issue time of their own, so `not_before`
//! stands in for it: the coordinator must not post-date a grant's `not_before` past the moment
//! it signs it, or a revocation issued in between would miss it (back-dating only makes
//! revocations hit more).
//!
//! # Forgetting old revocations
//!
//! A user or device revocation matters only while a grant it hits can still be valid: such a
//! grant starts at or before `issued_at` and lasts at most [`OFFLINE_GRANT_MAX_TTL`] (enforced
//! on every grant), and hosts accept it up to [`CLOCK_SKEW_TOLERANCE`] past its end. So after
//! `issued_at +` [`REVOCATION_RETENTION`] nothing it hits can verify, and
//! [`RevocationSet::prune`] drops it. Grant revocations are kept: the set does not know when the
//! grant they name ends.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Rejection};
use crate::grant::{Grant, GrantId, OFFLINE_GRANT_MAX_TTL, UserId};
use crate::id::NodeId;
use crate::signed::{CaKeySet, CaSigner, Domain, Envelope, KeyId};
use crate::time::{CLOCK_SKEW_TOLERANCE, UnixTime};

/// How long after its `issued_at` a user or device revocation is kept: the longest a grant it
/// hits can go on verifying (the offline grant bound plus the clock-skew tolerance).
pub const REVOCATION_RETENTION: Duration =
    Duration::from_secs(OFFLINE_GRANT_MAX_TTL.as_secs() + CLOCK_SKEW_TOLERANCE.as_secs());

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

/// Everything a host has been told is revoked (see the [module docs](self) for what each kind
/// of revocation hits and for how long).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSet {
    grants: BTreeSet<GrantId>,
    /// Each revoked device key, with the latest `issued_at` among its revocations.
    devices: BTreeMap<NodeId, UnixTime>,
    /// Each revoked user, with the latest `issued_at` among their revocations.
    users: BTreeMap<UserId, UnixTime>,
}

impl RevocationSet {
    /// Adds a (verified) revocation; returns whether it changed the set (a new target, or a
    /// later `issued_at` for a user or device already revoked, which hits more grants).
    pub fn insert(&mut self, revocation: &Revocation) -> bool {
        match revocation.target {
            RevocationTarget::Grant(id) => self.grants.insert(id),
            RevocationTarget::Device(key) => {
                insert_latest(&mut self.devices, key, revocation.issued_at)
            }
            RevocationTarget::User(user) => {
                insert_latest(&mut self.users, user, revocation.issued_at)
            }
        }
    }

    /// If `grant` is revoked, says by what.
    pub fn revokes(&self, grant: &Grant) -> Option<String> {
        let hits = |issued_at: Option<&UnixTime>| issued_at.is_some_and(|t| grant.not_before <= *t);
        if self.grants.contains(&grant.id) {
            Some(format!("grant {} was revoked", grant.id))
        } else if hits(self.devices.get(&grant.client)) {
            Some(format!("device {} was revoked", grant.client.short()))
        } else if hits(self.users.get(&grant.user_id)) {
            Some(format!("user {} was revoked", grant.user_name))
        } else {
            None
        }
    }

    /// Forgets user and device revocations issued more than [`REVOCATION_RETENTION`] before
    /// `now`, when no grant they hit can verify any more; returns how many it dropped.
    ///
    /// `now` must be the corrected time grants are judged by: pruning with a clock that runs
    /// ahead would forget revocations a grant could still need once the clock is put right.
    pub fn prune(&mut self, now: UnixTime) -> usize {
        let before = self.devices.len() + self.users.len();
        let live = |issued_at: &UnixTime| now <= issued_at.saturating_add(REVOCATION_RETENTION);
        self.devices.retain(|_, issued_at| live(issued_at));
        self.users.retain(|_, issued_at| live(issued_at));
        before - (self.devices.len() + self.users.len())
    }

    /// How many targets (grants, devices, users) are revoked.
    pub fn len(&self) -> usize {
        self.grants.len() + self.devices.len() + self.users.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records `issued_at` for `target`, keeping the latest: a later revocation hits every grant an
/// earlier one does, and more.
fn insert_latest<K: Ord>(map: &mut BTreeMap<K, UnixTime>, target: K, issued_at: UnixTime) -> bool {
    match map.entry(target) {
        Entry::Vacant(entry) => {
            entry.insert(issued_at);
            true
        }
        Entry::Occupied(mut entry) if *entry.get() < issued_at => {
            entry.insert(issued_at);
            true
        }
        Entry::Occupied(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{GrantKind, Permissions, check_validity_window};
    use crate::hostile::{ALLOC_SLACK, hostile_body};
    use crate::id::SecretKey;
    use crate::signed::ENVELOPE_VERSION;
    use crate::test_alloc::largest_allocation;
    use proptest::prelude::*;

    const T: UnixTime = UnixTime::from_secs(1_800_000_000);

    fn ca() -> CaSigner {
        CaSigner::new(SecretKey::from_seed(&[1; 32]))
    }

    fn grant_starting(not_before: UnixTime) -> Grant {
        Grant {
            id: GrantId::from_bytes([9; 16]),
            user_id: UserId(7),
            user_name: "alice".into(),
            client: SecretKey::from_seed(&[3; 32]).node_id(),
            host: SecretKey::from_seed(&[2; 32]).node_id(),
            login: "deploy".into(),
            permissions: Permissions::SHELL,
            temporary: false,
            kind: GrantKind::Offline,
            not_before,
            not_after: not_before.saturating_add(OFFLINE_GRANT_MAX_TTL),
            max_session_secs: 60,
        }
    }

    fn revocation(target: RevocationTarget, issued_at: UnixTime) -> Revocation {
        Revocation {
            id: RevocationId::from_bytes([4; 16]),
            target,
            issued_at,
        }
    }

    fn targets(g: &Grant) -> [RevocationTarget; 2] {
        [
            RevocationTarget::User(g.user_id),
            RevocationTarget::Device(g.client),
        ]
    }

    #[test]
    fn user_and_device_revocations_hit_only_grants_issued_by_then() {
        let ms = Duration::from_millis(1);
        for target in targets(&grant_starting(T)) {
            let mut set = RevocationSet::default();
            assert!(set.insert(&revocation(target, T)));
            let earlier = grant_starting(T.saturating_sub(Duration::from_secs(3600)));
            assert!(set.revokes(&earlier).is_some(), "{target:?}: earlier grant");
            assert!(
                set.revokes(&grant_starting(T)).is_some(),
                "{target:?}: at issued_at"
            );
            let later = grant_starting(T.saturating_add(ms));
            assert_eq!(
                set.revokes(&later),
                None,
                "{target:?}: re-enrolled after it"
            );
        }
    }

    #[test]
    fn the_latest_of_several_revocations_of_one_target_counts() {
        let day = Duration::from_secs(86_400);
        for target in targets(&grant_starting(T)) {
            let (early, late) = (
                revocation(target, T),
                revocation(target, T.saturating_add(day)),
            );
            for order in [[&early, &late], [&late, &early]] {
                let mut set = RevocationSet::default();
                assert!(set.insert(order[0]));
                assert_eq!(set.insert(order[1]), order[1] == &late, "{target:?}");
                assert!(
                    set.revokes(&grant_starting(T.saturating_add(day)))
                        .is_some()
                );
                assert_eq!(set.len(), 1);
            }
        }
    }

    #[test]
    fn grant_revocations_apply_whenever_they_were_issued() {
        let g = grant_starting(T);
        let mut set = RevocationSet::default();
        set.insert(&revocation(RevocationTarget::Grant(g.id), UnixTime::EPOCH));
        assert!(set.revokes(&g).is_some());
        // Nor does pruning ever forget them.
        assert_eq!(set.prune(UnixTime::from_millis(u64::MAX)), 0);
        assert!(set.revokes(&g).is_some());
    }

    #[test]
    fn pruning_forgets_user_and_device_revocations_once_nothing_they_hit_can_verify() {
        let g = grant_starting(T);
        let mut set = RevocationSet::default();
        for target in targets(&g) {
            set.insert(&revocation(target, T));
        }
        set.insert(&revocation(
            RevocationTarget::Grant(GrantId::from_bytes([1; 16])),
            T,
        ));
        // The last moment the longest grant they hit still verifies: kept.
        let last = T.saturating_add(REVOCATION_RETENTION);
        assert!(check_validity_window(g.not_before, g.not_after, last).is_ok());
        assert_eq!(set.prune(last), 0);
        assert!(set.revokes(&g).is_some());
        // One millisecond later the grant has expired everywhere, and the entries can go.
        let after = last.saturating_add(Duration::from_millis(1));
        assert!(check_validity_window(g.not_before, g.not_after, after).is_err());
        assert_eq!(set.prune(after), 2);
        assert_eq!(set.len(), 1, "the grant revocation stays");
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
        /// Whatever a pruned revocation would have hit is refused anyway, as expired.
        #[test]
        fn pruning_never_lets_a_revoked_grant_through(
            issued_at in 0u64..u64::MAX / 2,
            before in 0u64..1_000_000_000_000,
            lifetime: u64,
            offline: bool,
            after in 0u64..1_000_000_000_000,
        ) {
            let issued_at = UnixTime::from_millis(issued_at);
            let mut g = grant_starting(issued_at.saturating_sub(Duration::from_millis(before)));
            g.kind = if offline { GrantKind::Offline } else { GrantKind::Online };
            // Any lifetime the grant's kind allows, up to its cap.
            let lifetime = lifetime % (g.kind.max_ttl().as_millis() as u64 + 1);
            g.not_after = g.not_before.saturating_add(Duration::from_millis(lifetime));
            prop_assert!(g.check_shape().is_ok());
            let now = issued_at.saturating_add(Duration::from_millis(after));
            for target in targets(&g) {
                let mut set = RevocationSet::default();
                set.insert(&revocation(target, issued_at));
                prop_assert!(set.revokes(&g).is_some());
                if set.prune(now) == 1 {
                    prop_assert!(check_validity_window(g.not_before, g.not_after, now).is_err());
                }
            }
        }

        /// Envelopes with a valid header (version, the pinned CA's key id) around hostile
        /// bodies. Signed by the CA they reach the body decoder; with a random signature they
        /// stop at the signature. Nothing panics or allocates beyond the input, and only a
        /// canonical body opens.
        #[test]
        fn hostile_revocation_bodies_never_panic_or_overallocate(
            body in hostile_body::<Revocation>(),
            signature in proptest::collection::vec(any::<u8>(), 64),
            signed: bool,
        ) {
            let ca = ca();
            let keys = CaKeySet::single(ca.public_key());
            let bytes = if signed {
                ca.seal_raw(Domain::Revocation, &body)
            } else {
                let mut bytes = vec![ENVELOPE_VERSION];
                bytes.extend_from_slice(ca.key_id().as_bytes());
                bytes.extend_from_slice(&signature);
                bytes.extend_from_slice(&body);
                bytes
            };
            let (result, largest) = largest_allocation(|| open_revocation(&bytes, &keys));
            prop_assert!(
                largest <= ALLOC_SLACK + 2 * bytes.len(),
                "allocated {} bytes for a {}-byte revocation", largest, bytes.len()
            );
            match result {
                Ok((revocation, key_id)) => {
                    prop_assert!(signed);
                    prop_assert_eq!(key_id, ca.key_id());
                    prop_assert_eq!(postcard::to_stdvec(&revocation).unwrap(), body.clone());
                }
                Err(Rejection::BadSignature { .. }) => {
                    prop_assert!(!signed, "the CA's own signature was refused");
                }
                Err(Rejection::Malformed { .. }) => {
                    let fits = bytes.len() <= Domain::Revocation.max_len();
                    prop_assert!(signed || !fits, "a random signature must stop at the signature");
                }
                Err(other) => prop_assert!(false, "{:?}", other),
            }
            crate::fuzzing::revocation_body(&body);
        }

        #[test]
        fn signed_revocations_round_trip(r: Revocation) {
            let ca = ca();
            let bytes = ca.sign_revocation(&r).unwrap();
            let keys = CaKeySet::single(ca.public_key());
            prop_assert_eq!(open_revocation(&bytes, &keys).unwrap().0, r);
        }
    }
}
