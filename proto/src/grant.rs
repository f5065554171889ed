//! Grants: the CA-signed capability a host checks, offline, before it starts anything.
//!
//! A grant binds one user (id and name) on one client key to one host key and one Unix login,
//! with a set of [`Permissions`], a `temporary` flag, an online or offline [`GrantKind`], a
//! validity window and the longest a session started under it may run. [`verify_grant`] is a
//! plain function of the bytes, the pinned keys, the known revocations, the request and `now`:
//! it does no I/O, and its [`Rejection`] says exactly why a grant was refused.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Rejection};
use crate::id::NodeId;
use crate::revocation::RevocationSet;
use crate::signed::{CaKeySet, CaSigner, Domain, Envelope, KeyId};
use crate::time::{CLOCK_SKEW_TOLERANCE, UnixTime};

/// Default lifetime of an online grant, which serves one connection.
pub const ONLINE_GRANT_DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// Longest lifetime of an online grant.
pub const ONLINE_GRANT_MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// Default lifetime of an offline grant, which a client caches for use without the coordinator.
pub const OFFLINE_GRANT_DEFAULT_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Longest lifetime of an offline grant: the bound on how long a partitioned host can go on
/// accepting a grant whose revocation it has not heard of.
pub const OFFLINE_GRANT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default longest run of a session started under a grant.
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(12 * 60 * 60);
/// Longest run a grant may allow a session: the offline grant bound. Nothing a grant confers
/// outlasts what a host cut off from revocations may be made to accept, and a host can add it to
/// its monotonic clock without overflow. Hosts cap it further with their own limit.
pub const MAX_SESSION_LIMIT: Duration = OFFLINE_GRANT_MAX_TTL;
/// Longest Unix login name a grant may carry (Linux `useradd` allows 32).
pub const MAX_LOGIN_LEN: usize = 32;
/// Longest user name a grant may carry.
pub const MAX_USER_NAME_LEN: usize = 64;

random_id! {
    /// A grant's unique id: 16 random bytes, shown as 32 hex digits.
    GrantId
}

/// A user's id in the coordinator's database; stable across renames.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserId(pub u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a grant allows, as a set of flags. Unknown flags from a newer coordinator are kept
/// (so the signed bytes stay canonical) but allow nothing here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Permissions(u32);

impl Permissions {
    /// Nothing.
    pub const NONE: Self = Self(0);
    /// Open an interactive shell.
    pub const SHELL: Self = Self(1 << 0);
    /// Run a command.
    pub const EXEC: Self = Self(1 << 1);
    /// Copy files (a later issue).
    pub const COPY: Self = Self(1 << 2);
    /// Forward ports (a later issue).
    pub const FORWARD: Self = Self(1 << 3);

    /// Every flag this build knows.
    const KNOWN: Self = Self(Self::SHELL.0 | Self::EXEC.0 | Self::COPY.0 | Self::FORWARD.0);

    const NAMES: [(Self, &'static str); 4] = [
        (Self::SHELL, "shell"),
        (Self::EXEC, "exec"),
        (Self::COPY, "copy"),
        (Self::FORWARD, "forward"),
    ];

    /// Whether every flag of `needed` is set here.
    pub const fn contains(self, needed: Self) -> bool {
        self.0 & needed.0 == needed.0
    }

    /// Both sets of flags.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The raw flags.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Only the flags this build knows (a newer coordinator's flags allow nothing here).
    pub const fn known(self) -> Self {
        Self(self.0 & Self::KNOWN.0)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses one permission name (`shell`, `exec`, `copy`, `forward`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Self::NAMES
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, n)| *n)
            .peekable();
        if names.peek().is_none() {
            return f.write_str("none");
        }
        let joined: Vec<&str> = names.collect();
        f.write_str(&joined.join(","))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// Which of the two grant lifetimes this is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum GrantKind {
    /// Serves one connection; short-lived.
    Online,
    /// Cached by the client for use while the coordinator is unreachable.
    Offline,
}

impl GrantKind {
    /// The longest lifetime (`not_after - not_before`) a grant of this kind may have.
    pub const fn max_ttl(self) -> Duration {
        match self {
            Self::Online => ONLINE_GRANT_MAX_TTL,
            Self::Offline => OFFLINE_GRANT_MAX_TTL,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// The privilege temporary grants carry in their `login`: the temporary account gets root
/// (through sudo). The only one hosts make accounts with.
pub const TEMPORARY_ROOT: &str = "root";

/// The content of a grant, as the CA signs it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Grant {
    /// Unique id, for revocation and audit.
    pub id: GrantId,
    /// The user's id.
    pub user_id: UserId,
    /// The user's name, for audit and display.
    pub user_name: String,
    /// The device key the grant is for; only that key may present it.
    pub client: NodeId,
    /// The host key the grant is for.
    pub host: NodeId,
    /// The Unix login allowed. For a temporary grant, the privilege the temporary account gets.
    pub login: String,
    /// What the holder may do.
    pub permissions: Permissions,
    /// Whether the host creates a temporary account for the session.
    pub temporary: bool,
    /// Online (one connection) or offline (cached).
    pub kind: GrantKind,
    /// Start of validity.
    pub not_before: UnixTime,
    /// End of validity: no session starts after this. At most [`GrantKind::max_ttl`] after
    /// `not_before`.
    pub not_after: UnixTime,
    /// Longest a session started under this grant may run, in seconds: 1 to
    /// [`MAX_SESSION_LIMIT`]. It may exceed the grant's own lifetime, which bounds only when
    /// sessions start.
    pub max_session_secs: u64,
}

impl Grant {
    /// The longest a session started under this grant may run.
    pub fn max_session(&self) -> Duration {
        Duration::from_secs(self.max_session_secs)
    }

    /// Checks what a signature alone cannot: sizes, a validity window no longer than the
    /// grant's kind allows, a sane session limit and at least one permission this build knows.
    ///
    /// The lifetime cap is what bounds how long a host cut off from the coordinator can be made
    /// to accept a revoked grant, and what lets a [`RevocationSet`] forget old revocations; so
    /// it is enforced here, on every grant, not trusted to the coordinator.
    pub(crate) fn check_shape(&self) -> Result<(), String> {
        if self.login.is_empty() || self.login.len() > MAX_LOGIN_LEN {
            return Err(format!("login must be 1 to {MAX_LOGIN_LEN} bytes"));
        }
        if self.user_name.len() > MAX_USER_NAME_LEN {
            return Err(format!("user name longer than {MAX_USER_NAME_LEN} bytes"));
        }
        let Some(lifetime) = self.not_after.duration_since(self.not_before) else {
            return Err("validity window ends before it starts".into());
        };
        let max_ttl = self.kind.max_ttl();
        if lifetime > max_ttl {
            return Err(format!(
                "{} grant valid for {}, longer than the {} an {} grant may last",
                self.kind.name(),
                humantime::format_duration(lifetime),
                humantime::format_duration(max_ttl),
                self.kind.name(),
            ));
        }
        if self.max_session_secs == 0 || self.max_session() > MAX_SESSION_LIMIT {
            return Err(format!(
                "maximum session of {} s is outside 1 s to {}",
                self.max_session_secs,
                humantime::format_duration(MAX_SESSION_LIMIT)
            ));
        }
        if self.permissions.known().is_empty() {
            return Err(format!(
                "allows no permission this host knows (flags {:#x})",
                self.permissions.bits()
            ));
        }
        Ok(())
    }
}

impl CaSigner {
    /// Signs `grant`, refusing one whose shape no host would accept.
    pub fn sign_grant(&self, grant: &Grant) -> Result<Vec<u8>, Error> {
        grant.check_shape().map_err(|reason| Error::Encode {
            what: "grant",
            reason,
        })?;
        self.seal(Domain::Grant, grant)
    }
}

/// The login a session asks to run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedLogin<'a> {
    /// An existing Unix account, by name and by the uid the host resolved it to.
    Unix {
        /// The name asked for.
        name: &'a str,
        /// Its uid on this host.
        uid: u32,
    },
    /// A temporary account the host creates for the session.
    Temporary,
}

/// What a host checks a grant against.
#[derive(Clone, Copy, Debug)]
pub struct GrantRequest<'a> {
    /// The host's corrected wall-clock time.
    pub now: UnixTime,
    /// This host's key.
    pub host: NodeId,
    /// The key the client authenticated with in the TLS handshake.
    pub client: NodeId,
    /// The permission the action needs.
    pub needs: Permissions,
    /// The login asked for.
    pub login: RequestedLogin<'a>,
}

/// A grant that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGrant {
    /// Its content.
    pub grant: Grant,
    /// The CA key that signed it.
    pub issuer: KeyId,
}

/// Decodes a grant's signed envelope after checking the signature against the pinned keys, but
/// without judging it against any request (for display and caching).
pub fn open_grant(bytes: &[u8], keys: &CaKeySet) -> Result<VerifiedGrant, Rejection> {
    let envelope = Envelope::parse(Domain::Grant, bytes)?;
    let key = keys.get(&envelope.key_id).ok_or(Rejection::WrongIssuer {
        key_id: envelope.key_id,
    })?;
    let grant: Grant = envelope.open(key)?;
    grant.check_shape().map_err(|reason| Rejection::Malformed {
        what: "grant".into(),
        reason,
    })?;
    Ok(VerifiedGrant {
        grant,
        issuer: envelope.key_id,
    })
}

/// Checks a signed grant for `request`, offline.
///
/// In order: the request itself (it must need at least one permission this build knows;
/// anything else is a bug in the caller, refused rather than let through), envelope and
/// signature (issuer pinned, content unaltered), shape, revocation, host, client, validity
/// window (with [`CLOCK_SKEW_TOLERANCE`] either side), permission, login. Logins are compared as
/// uids: `resolve_uid` maps the grant's login name to this host's uid, so two names for one
/// account match and a name that does not exist here matches nothing.
pub fn verify_grant(
    bytes: &[u8],
    keys: &CaKeySet,
    revocations: &RevocationSet,
    request: &GrantRequest<'_>,
    resolve_uid: &dyn Fn(&str) -> Option<u32>,
) -> Result<VerifiedGrant, Rejection> {
    // Every grant contains the empty set, so a request needing nothing would pass any grant.
    if request.needs.is_empty() || request.needs.known() != request.needs {
        return Err(Rejection::InvalidRequest {
            reason: format!(
                "the host asked for permission {:#x}, which is none this build knows",
                request.needs.bits()
            ),
        });
    }
    let verified = open_grant(bytes, keys)?;
    let grant = &verified.grant;
    if let Some(what) = revocations.revokes(grant) {
        return Err(Rejection::Revoked { what });
    }
    if grant.host != request.host {
        return Err(Rejection::WrongHost {
            granted: grant.host,
            this: request.host,
        });
    }
    if grant.client != request.client {
        return Err(Rejection::WrongClient {
            granted: grant.client,
            presented: request.client,
        });
    }
    check_validity_window(grant.not_before, grant.not_after, request.now)?;
    if !grant.permissions.contains(request.needs) {
        return Err(Rejection::PermissionNotGranted {
            needed: request.needs,
            granted: grant.permissions,
        });
    }
    check_login(grant, request.login, resolve_uid)?;
    Ok(verified)
}

/// Whether `now` lies in `[not_before, not_after]`, widened by the skew tolerance.
pub fn check_validity_window(
    not_before: UnixTime,
    not_after: UnixTime,
    now: UnixTime,
) -> Result<(), Rejection> {
    if now < not_before.saturating_sub(CLOCK_SKEW_TOLERANCE) {
        return Err(Rejection::NotYetValid { not_before, now });
    }
    if now > not_after.saturating_add(CLOCK_SKEW_TOLERANCE) {
        return Err(Rejection::Expired { not_after, now });
    }
    Ok(())
}

fn check_login(
    grant: &Grant,
    requested: RequestedLogin<'_>,
    resolve_uid: &dyn Fn(&str) -> Option<u32>,
) -> Result<(), Rejection> {
    let refuse = |requested: &str| Rejection::LoginNotAllowed {
        requested: requested.into(),
        granted: if grant.temporary {
            format!("a temporary account with {} rights", grant.login)
        } else {
            grant.login.clone()
        },
    };
    match (requested, grant.temporary) {
        (RequestedLogin::Temporary, true) => Ok(()),
        (RequestedLogin::Temporary, false) => Err(refuse("a temporary account")),
        (RequestedLogin::Unix { name, .. }, true) => Err(refuse(name)),
        (RequestedLogin::Unix { name, uid }, false) => match resolve_uid(&grant.login) {
            Some(granted_uid) if granted_uid == uid => Ok(()),
            _ => Err(refuse(name)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::{ALLOC_SLACK, hostile_body_of};
    use crate::id::SecretKey;
    use crate::revocation::{Revocation, RevocationTarget};
    use crate::signed::ENVELOPE_VERSION;
    use crate::test_alloc::largest_allocation;
    use proptest::prelude::*;

    const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

    struct World {
        ca: CaSigner,
        keys: CaKeySet,
        host: NodeId,
        client: NodeId,
    }

    fn world() -> World {
        let ca = CaSigner::new(SecretKey::from_seed(&[1; 32]));
        World {
            keys: CaKeySet::single(ca.public_key()),
            ca,
            host: SecretKey::from_seed(&[2; 32]).node_id(),
            client: SecretKey::from_seed(&[3; 32]).node_id(),
        }
    }

    fn grant(w: &World) -> Grant {
        Grant {
            id: GrantId::from_bytes([9; 16]),
            user_id: UserId(7),
            user_name: "alice".into(),
            client: w.client,
            host: w.host,
            login: "deploy".into(),
            permissions: Permissions::SHELL.union(Permissions::EXEC),
            temporary: false,
            kind: GrantKind::Online,
            not_before: NOW.saturating_sub(Duration::from_secs(60)),
            not_after: NOW.saturating_add(ONLINE_GRANT_DEFAULT_TTL),
            max_session_secs: DEFAULT_MAX_SESSION.as_secs(),
        }
    }

    fn request(w: &World) -> GrantRequest<'static> {
        GrantRequest {
            now: NOW,
            host: w.host,
            client: w.client,
            needs: Permissions::SHELL,
            login: RequestedLogin::Unix {
                name: "deploy",
                uid: 1001,
            },
        }
    }

    fn users(name: &str) -> Option<u32> {
        match name {
            "deploy" => Some(1001),
            "deploy-alias" => Some(1001),
            "root" => Some(0),
            _ => None,
        }
    }

    fn check(w: &World, bytes: &[u8], req: &GrantRequest<'_>) -> Result<VerifiedGrant, Rejection> {
        verify_grant(bytes, &w.keys, &RevocationSet::default(), req, &users)
    }

    #[test]
    fn a_good_grant_verifies() {
        let w = world();
        let g = grant(&w);
        let bytes = w.ca.sign_grant(&g).unwrap();
        let v = check(&w, &bytes, &request(&w)).unwrap();
        assert_eq!(v.grant, g);
        assert_eq!(v.issuer, w.ca.key_id());
    }

    #[test]
    fn every_tampered_byte_fails_with_the_reason_for_that_byte() {
        let w = world();
        let bytes = w.ca.sign_grant(&grant(&w)).unwrap();
        for position in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut tampered = bytes.clone();
                tampered[position] ^= flip;
                let err = check(&w, &tampered, &request(&w)).unwrap_err();
                let expected_ok = match position {
                    0 => {
                        matches!(err, Rejection::Malformed { ref reason, .. } if reason.contains("version"))
                    }
                    1..=8 => matches!(err, Rejection::WrongIssuer { .. }),
                    _ => matches!(err, Rejection::BadSignature { .. }),
                };
                assert!(expected_ok, "byte {position} ^ {flip:#x}: {err:?}");
            }
        }
    }

    #[test]
    fn appended_or_removed_bytes_fail_as_bad_signature() {
        let w = world();
        let bytes = w.ca.sign_grant(&grant(&w)).unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            check(&w, &longer, &request(&w)),
            Err(Rejection::BadSignature { .. })
        ));
        let shorter = &bytes[..bytes.len() - 1];
        assert!(matches!(
            check(&w, shorter, &request(&w)),
            Err(Rejection::BadSignature { .. })
        ));
    }

    #[test]
    fn signed_by_an_unpinned_key_is_wrong_issuer() {
        let w = world();
        let rogue = CaSigner::new(SecretKey::from_seed(&[66; 32]));
        let bytes = rogue.sign_grant(&grant(&w)).unwrap();
        let err = check(&w, &bytes, &request(&w)).unwrap_err();
        assert_eq!(
            err,
            Rejection::WrongIssuer {
                key_id: rogue.key_id()
            }
        );
    }

    #[test]
    fn a_rotated_ca_key_verifies_once_pinned() {
        let mut w = world();
        let next = CaSigner::new(SecretKey::from_seed(&[4; 32]));
        let bytes = next.sign_grant(&grant(&w)).unwrap();
        assert!(matches!(
            check(&w, &bytes, &request(&w)),
            Err(Rejection::WrongIssuer { .. })
        ));
        w.keys.pin(next.public_key());
        assert_eq!(
            check(&w, &bytes, &request(&w)).unwrap().issuer,
            next.key_id()
        );
    }

    #[test]
    fn expired_fails_as_expired_after_the_tolerance() {
        let w = world();
        let g = grant(&w);
        let bytes = w.ca.sign_grant(&g).unwrap();
        let mut req = request(&w);
        req.now = g.not_after.saturating_add(CLOCK_SKEW_TOLERANCE);
        assert!(check(&w, &bytes, &req).is_ok(), "within tolerance");
        req.now = req.now.saturating_add(Duration::from_millis(1));
        assert_eq!(
            check(&w, &bytes, &req).unwrap_err(),
            Rejection::Expired {
                not_after: g.not_after,
                now: req.now
            }
        );
    }

    #[test]
    fn not_yet_valid_fails_as_not_yet_valid() {
        let w = world();
        let g = grant(&w);
        let bytes = w.ca.sign_grant(&g).unwrap();
        let mut req = request(&w);
        req.now = g
            .not_before
            .saturating_sub(CLOCK_SKEW_TOLERANCE)
            .saturating_sub(Duration::from_millis(1));
        assert_eq!(
            check(&w, &bytes, &req).unwrap_err(),
            Rejection::NotYetValid {
                not_before: g.not_before,
                now: req.now
            }
        );
    }

    #[test]
    fn a_grant_for_another_host_fails_as_wrong_host() {
        let w = world();
        let bytes = w.ca.sign_grant(&grant(&w)).unwrap();
        let mut req = request(&w);
        req.host = SecretKey::from_seed(&[5; 32]).node_id();
        assert_eq!(
            check(&w, &bytes, &req).unwrap_err(),
            Rejection::WrongHost {
                granted: w.host,
                this: req.host
            }
        );
    }

    #[test]
    fn a_grant_presented_by_another_key_fails_as_wrong_client() {
        let w = world();
        let bytes = w.ca.sign_grant(&grant(&w)).unwrap();
        let mut req = request(&w);
        req.client = SecretKey::from_seed(&[6; 32]).node_id();
        assert_eq!(
            check(&w, &bytes, &req).unwrap_err(),
            Rejection::WrongClient {
                granted: w.client,
                presented: req.client
            }
        );
    }

    #[test]
    fn logins_are_compared_by_uid() {
        let w = world();
        let bytes = w.ca.sign_grant(&grant(&w)).unwrap();
        let mut req = request(&w);
        // Another name for the same uid is the same account.
        req.login = RequestedLogin::Unix {
            name: "deploy-alias",
            uid: 1001,
        };
        assert!(check(&w, &bytes, &req).is_ok());
        req.login = RequestedLogin::Unix {
            name: "root",
            uid: 0,
        };
        let err = check(&w, &bytes, &req).unwrap_err();
        assert_eq!(
            err,
            Rejection::LoginNotAllowed {
                requested: "root".into(),
                granted: "deploy".into()
            }
        );
    }

    #[test]
    fn a_granted_login_missing_on_this_host_allows_nothing() {
        let w = world();
        let mut g = grant(&w);
        g.login = "ghost".into();
        let bytes = w.ca.sign_grant(&g).unwrap();
        let mut req = request(&w);
        req.login = RequestedLogin::Unix {
            name: "ghost",
            uid: 4242,
        };
        assert!(matches!(
            check(&w, &bytes, &req),
            Err(Rejection::LoginNotAllowed { .. })
        ));
    }

    #[test]
    fn temporary_accounts_need_a_temporary_grant_and_vice_versa() {
        let w = world();
        let bytes = w.ca.sign_grant(&grant(&w)).unwrap();
        let mut req = request(&w);
        req.login = RequestedLogin::Temporary;
        assert!(matches!(
            check(&w, &bytes, &req),
            Err(Rejection::LoginNotAllowed { .. })
        ));

        let mut g = grant(&w);
        g.temporary = true;
        g.login = "root".into();
        let temp = w.ca.sign_grant(&g).unwrap();
        assert!(check(&w, &temp, &req).is_ok());
        let named = request(&w);
        assert!(matches!(
            check(&w, &temp, &named),
            Err(Rejection::LoginNotAllowed { .. })
        ));
    }

    #[test]
    fn a_missing_permission_is_refused() {
        let w = world();
        let mut g = grant(&w);
        g.permissions = Permissions::EXEC;
        let bytes = w.ca.sign_grant(&g).unwrap();
        assert_eq!(
            check(&w, &bytes, &request(&w)).unwrap_err(),
            Rejection::PermissionNotGranted {
                needed: Permissions::SHELL,
                granted: Permissions::EXEC
            }
        );
    }

    #[test]
    fn revoked_grant_device_or_user_fails_as_revoked() {
        let w = world();
        let g = grant(&w);
        let bytes = w.ca.sign_grant(&g).unwrap();
        for target in [
            RevocationTarget::Grant(g.id),
            RevocationTarget::Device(g.client),
            RevocationTarget::User(g.user_id),
        ] {
            let mut revoked = RevocationSet::default();
            revoked.insert(&Revocation {
                id: crate::revocation::RevocationId::from_bytes([1; 16]),
                target,
                issued_at: NOW,
            });
            let err = verify_grant(&bytes, &w.keys, &revoked, &request(&w), &users).unwrap_err();
            assert!(
                matches!(err, Rejection::Revoked { .. }),
                "{target:?}: {err:?}"
            );
        }
    }

    #[test]
    fn shapes_no_host_accepts_are_not_signed() {
        let w = world();
        let mut g = grant(&w);
        g.login = String::new();
        assert!(w.ca.sign_grant(&g).is_err());
        let mut g = grant(&w);
        g.not_after = g.not_before.saturating_sub(Duration::from_secs(1));
        assert!(w.ca.sign_grant(&g).is_err());
    }

    /// Signs `g` without the shape check, as a buggy or hostile CA might.
    fn sign_unchecked(w: &World, g: &Grant) -> Vec<u8> {
        w.ca.seal(Domain::Grant, g).unwrap()
    }

    /// `g` is neither signed by a checking CA nor accepted from an unchecking one.
    fn assert_bad_shape(w: &World, g: &Grant, expected: &str) {
        let err = w.ca.sign_grant(g).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        let err = check(w, &sign_unchecked(w, g), &request(w)).unwrap_err();
        assert!(
            matches!(err, Rejection::Malformed { ref reason, .. } if reason.contains(expected)),
            "{err}"
        );
    }

    #[test]
    fn grant_lifetimes_are_capped_by_kind() {
        let w = world();
        for (kind, max) in [
            (GrantKind::Online, ONLINE_GRANT_MAX_TTL),
            (GrantKind::Offline, OFFLINE_GRANT_MAX_TTL),
        ] {
            let mut g = grant(&w);
            g.kind = kind;
            g.not_after = g.not_before.saturating_add(max);
            let bytes = w.ca.sign_grant(&g).unwrap();
            assert!(
                check(&w, &bytes, &request(&w)).is_ok(),
                "{kind:?} at its cap"
            );
            g.not_after = g.not_after.saturating_add(Duration::from_millis(1));
            assert_bad_shape(&w, &g, "longer than");
        }
        // The longest span there is, as an online grant.
        let mut g = grant(&w);
        g.not_before = UnixTime::EPOCH;
        g.not_after = UnixTime::from_millis(u64::MAX);
        assert_bad_shape(&w, &g, "online grant valid for");
    }

    #[test]
    fn the_session_limit_a_grant_carries_is_capped() {
        let w = world();
        let mut g = grant(&w);
        g.max_session_secs = MAX_SESSION_LIMIT.as_secs();
        assert!(check(&w, &w.ca.sign_grant(&g).unwrap(), &request(&w)).is_ok());
        g.max_session_secs = 1;
        assert!(check(&w, &w.ca.sign_grant(&g).unwrap(), &request(&w)).is_ok());
        for bad in [0, MAX_SESSION_LIMIT.as_secs() + 1, u64::MAX] {
            g.max_session_secs = bad;
            assert_bad_shape(&w, &g, "maximum session");
        }
    }

    #[test]
    fn a_grant_allowing_nothing_known_is_malformed() {
        let w = world();
        let mut g = grant(&w);
        let unknown = Permissions(1 << 20);
        for nothing in [Permissions::NONE, unknown] {
            g.permissions = nothing;
            assert_bad_shape(&w, &g, "no permission");
        }
        // A newer coordinator's flag beside a known one is kept, and allows nothing itself.
        g.permissions = Permissions::SHELL.union(unknown);
        let bytes = w.ca.sign_grant(&g).unwrap();
        assert!(check(&w, &bytes, &request(&w)).is_ok());
    }

    #[test]
    fn a_request_that_needs_nothing_known_is_refused_as_a_caller_bug() {
        let w = world();
        let unknown = Permissions(1 << 20);
        let mut g = grant(&w);
        g.permissions = Permissions::SHELL.union(unknown);
        let bytes = w.ca.sign_grant(&g).unwrap();
        for needs in [Permissions::NONE, unknown] {
            let mut req = request(&w);
            req.needs = needs;
            let err = check(&w, &bytes, &req).unwrap_err();
            assert!(
                matches!(err, Rejection::InvalidRequest { .. }),
                "{needs:?}: {err:?}"
            );
            assert!(err.to_string().contains("bug in this host"), "{err}");
        }
    }

    #[test]
    fn permissions_display_and_parse() {
        assert_eq!(
            Permissions::SHELL.union(Permissions::EXEC).to_string(),
            "shell,exec"
        );
        assert_eq!(Permissions::NONE.to_string(), "none");
        assert_eq!(
            Permissions::from_name("Forward"),
            Some(Permissions::FORWARD)
        );
        assert_eq!(Permissions::from_name("root"), None);
    }

    /// `g` bent into a shape the CA signs: a short ASCII login, no user name, an ordered window
    /// no longer than its kind allows, a session limit in range and a known permission.
    fn well_shaped(mut g: Grant) -> Grant {
        g.login = "a".repeat(g.login.len().clamp(1, MAX_LOGIN_LEN));
        g.user_name.truncate(0);
        if g.not_after < g.not_before {
            std::mem::swap(&mut g.not_after, &mut g.not_before);
        }
        g.not_after = g
            .not_after
            .min(g.not_before.saturating_add(g.kind.max_ttl()));
        g.max_session_secs = g.max_session_secs.clamp(1, MAX_SESSION_LIMIT.as_secs());
        if g.permissions.known().is_empty() {
            g.permissions = g.permissions.union(Permissions::EXEC);
        }
        g
    }

    /// Grants that pass the shape check, half of them for the test world's host and client
    /// and valid at [`NOW`], so that verification of their mutations gets far.
    fn plausible_grants() -> impl Strategy<Value = Grant> {
        (any::<Grant>(), any::<bool>()).prop_map(|(g, for_this_world)| {
            let mut g = well_shaped(g);
            if for_this_world {
                let w = world();
                (g.host, g.client, g.login) = (w.host, w.client, "deploy".into());
                g.not_before = NOW;
                g.not_after = NOW.saturating_add(ONLINE_GRANT_DEFAULT_TTL);
            }
            g
        })
    }

    proptest! {
        #[test]
        fn signed_grants_round_trip(g: Grant) {
            let g = well_shaped(g);
            let w = world();
            let bytes = w.ca.sign_grant(&g).unwrap();
            let opened = open_grant(&bytes, &w.keys).unwrap();
            prop_assert_eq!(opened.grant, g);
        }

        /// Envelopes with a valid header (version, the pinned CA's key id) around hostile
        /// bodies. Signed by the pinned CA they reach the body decoder and the shape check;
        /// with a random signature they stop at the signature. Either way nothing panics or
        /// allocates beyond the input, and only a canonical, well-shaped grant verifies.
        #[test]
        fn hostile_grant_bodies_never_panic_or_overallocate(
            body in hostile_body_of(plausible_grants()),
            signature in proptest::collection::vec(any::<u8>(), 64),
            signed: bool,
        ) {
            let w = world();
            let bytes = if signed {
                w.ca.seal_raw(Domain::Grant, &body)
            } else {
                let mut bytes = vec![ENVELOPE_VERSION];
                bytes.extend_from_slice(w.ca.key_id().as_bytes());
                bytes.extend_from_slice(&signature);
                bytes.extend_from_slice(&body);
                bytes
            };
            let (result, largest) = largest_allocation(|| check(&w, &bytes, &request(&w)));
            prop_assert!(
                largest <= ALLOC_SLACK + 2 * bytes.len(),
                "allocated {} bytes for a {}-byte grant", largest, bytes.len()
            );
            let fits = bytes.len() <= Domain::Grant.max_len();
            match result {
                Ok(verified) => {
                    prop_assert!(signed);
                    prop_assert!(verified.grant.check_shape().is_ok());
                    prop_assert_eq!(postcard::to_stdvec(&verified.grant).unwrap(), body.clone());
                }
                Err(Rejection::BadSignature { .. }) => {
                    prop_assert!(!signed, "the CA's own signature was refused");
                }
                Err(Rejection::WrongIssuer { .. }) => {
                    prop_assert!(false, "the envelope names the pinned key");
                }
                Err(other) => {
                    // A random signature must stop at the signature check, before the body.
                    prop_assert!(signed || !fits, "{:?}", other);
                }
            }
            crate::fuzzing::grant_body(&body);
        }
    }
}
