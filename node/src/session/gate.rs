//! The gate: reads a session's [`Open`] and checks its grant, offline, before anything starts.
//!
//! The check itself is [`verify_grant`], a pure function; the gate supplies this host's key,
//! its pinned CA keys and known revocations, the corrected time, and uid resolution. A refusal
//! goes back to the client as a typed [`Refusal`] and the stream is closed; nothing else runs.

use std::sync::{Arc, RwLock};

use mesh_proto::grant::{GrantRequest, Permissions, RequestedLogin, VerifiedGrant, verify_grant};
use mesh_proto::messages::session::{LoginRequest, Open, Refusal, Refused, SessionMessage};
use mesh_proto::{CaKeySet, Clock, NodeId, RevocationSet};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::Error;
use crate::framed::{FrameReader, write_frame};

/// `(uid_t)-1` is never a real account's uid (`setreuid` reads it as "unchanged"), so a login
/// name that does not exist here is checked as this uid and matches no grant.
const NO_SUCH_UID: u32 = u32::MAX;

/// A session that passed the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// The grant it was opened under.
    pub grant: VerifiedGrant,
    /// The account to run as: `Some((name, uid))`, or `None` for a temporary account.
    pub login: Option<(String, u32)>,
}

/// What a host checks grants against.
#[derive(Debug, Clone)]
pub struct Gate {
    /// This host's key.
    pub host: NodeId,
    /// CA keys this host trusts.
    pub ca_keys: CaKeySet,
    /// Revocations this host has been told of (shared with what receives them).
    pub revocations: Arc<RwLock<RevocationSet>>,
    /// The host's (coordinator-corrected) wall clock.
    pub clock: Arc<dyn Clock>,
}

impl Gate {
    /// Checks `open` from the client whose key is `client`. `resolve_uid` maps a login name to
    /// this host's uid (see [`system_uid`]).
    pub fn check(
        &self,
        open: &Open,
        client: NodeId,
        resolve_uid: &(dyn Fn(&str) -> Option<u32> + Sync),
    ) -> Result<Authorized, Refusal> {
        let needs = if open.command.is_some() {
            Permissions::EXEC
        } else {
            Permissions::SHELL
        };
        let (login, requested) = match &open.login {
            LoginRequest::Named(name) => {
                let uid = resolve_uid(name).unwrap_or(NO_SUCH_UID);
                (
                    Some((name.clone(), uid)),
                    RequestedLogin::Unix { name, uid },
                )
            }
            LoginRequest::Temporary => (None, RequestedLogin::Temporary),
        };
        let request = GrantRequest {
            now: self.clock.now(),
            host: self.host,
            client,
            needs,
            login: requested,
        };
        let revocations = self
            .revocations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let grant = verify_grant(
            &open.grant,
            &self.ca_keys,
            &revocations,
            &request,
            resolve_uid,
        )
        .map_err(Refusal::Grant)?;
        Ok(Authorized { grant, login })
    }

    /// Reads the stream's first frame, which must be an [`Open`], and checks it. On refusal,
    /// sends [`Refused`] with the reason, finishes the stream and returns `Ok(None)`.
    pub async fn admit<R, W>(
        &self,
        recv: &mut FrameReader<R>,
        send: &mut W,
        client: NodeId,
        resolve_uid: &(dyn Fn(&str) -> Option<u32> + Sync),
    ) -> Result<Option<(Open, Authorized)>, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match self
            .admit_or_refuse(recv, send, client, resolve_uid)
            .await?
        {
            Admission::Admitted(open, authorized) => Ok(Some((open, *authorized))),
            Admission::Refused { .. } | Admission::NoOpen => Ok(None),
        }
    }

    /// [`admit`](Self::admit), telling the caller what was refused and why (for the audit).
    pub async fn admit_or_refuse<R, W>(
        &self,
        recv: &mut FrameReader<R>,
        send: &mut W,
        client: NodeId,
        resolve_uid: &(dyn Fn(&str) -> Option<u32> + Sync),
    ) -> Result<Admission, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let open = match recv.next::<SessionMessage>().await? {
            Some(SessionMessage::Open(open)) => open,
            Some(other) => {
                return Err(Error::Stream(format!(
                    "a session must start with Open, got {other:?}"
                )));
            }
            None => return Ok(Admission::NoOpen),
        };
        match self.check(&open, client, resolve_uid) {
            Ok(authorized) => Ok(Admission::Admitted(open, Box::new(authorized))),
            Err(reason) => {
                let refused = SessionMessage::Refused(Refused {
                    reason: reason.clone(),
                });
                write_frame(send, &refused).await?;
                send.shutdown()
                    .await
                    .map_err(|e| Error::Stream(e.to_string()))?;
                Ok(Admission::Refused { open, reason })
            }
        }
    }
}

/// What the gate made of a session stream.
#[derive(Debug)]
pub enum Admission {
    /// The grant holds.
    Admitted(Open, Box<Authorized>),
    /// Refused (the client has been told).
    Refused {
        /// What the client asked.
        open: Open,
        /// Why not.
        reason: Refusal,
    },
    /// The stream ended before an `Open`.
    NoOpen,
}

/// This machine's uid for `login`, from the system's user database.
pub fn system_uid(login: &str) -> Option<u32> {
    nix::unistd::User::from_name(login)
        .ok()
        .flatten()
        .map(|user| user.uid.as_raw())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    use mesh_proto::grant::{DEFAULT_MAX_SESSION, GrantId, GrantKind, UserId};
    use mesh_proto::messages::SESSION_ALPN;
    use mesh_proto::signed::CaSigner;
    use mesh_proto::{Grant, ManualClock, Rejection, SecretKey, UnixTime};

    use crate::endpoint::Endpoint;
    use crate::udp::UdpSocket;

    pub(crate) const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

    /// A test CA, host and client, and a gate for the host at [`NOW`].
    pub(crate) struct Fixture {
        pub(crate) ca: CaSigner,
        pub(crate) host_key: SecretKey,
        pub(crate) client_key: SecretKey,
        pub(crate) gate: Gate,
    }

    pub(crate) fn fixture() -> Fixture {
        let ca = CaSigner::new(SecretKey::from_seed(&[1; 32]));
        let host_key = SecretKey::from_seed(&[2; 32]);
        let gate = Gate {
            host: host_key.node_id(),
            ca_keys: CaKeySet::single(ca.public_key()),
            revocations: Arc::default(),
            clock: Arc::new(ManualClock::new(NOW)),
        };
        Fixture {
            ca,
            host_key,
            client_key: SecretKey::from_seed(&[3; 32]),
            gate,
        }
    }

    /// An online exec grant for the fixture's client on its host, as root, valid at [`NOW`].
    pub(crate) fn grant(f: &Fixture) -> Grant {
        Grant {
            id: GrantId::from_bytes([7; 16]),
            user_id: UserId(1),
            user_name: "alice".into(),
            client: f.client_key.node_id(),
            host: f.host_key.node_id(),
            login: "root".into(),
            permissions: Permissions::EXEC,
            temporary: false,
            kind: GrantKind::Online,
            not_before: NOW,
            not_after: NOW.saturating_add(Duration::from_secs(300)),
            max_session_secs: DEFAULT_MAX_SESSION.as_secs(),
        }
    }

    fn open(grant: Vec<u8>, command: Option<&str>) -> Open {
        Open {
            grant,
            login: LoginRequest::Named("root".into()),
            command: command.map(str::to_owned),
            pty: None,
            env: vec![],
        }
    }

    /// Sends `open` over a real QUIC connection from `client_key` and returns what the host's
    /// gate admitted and what the client read back.
    async fn over_quic(
        f: &Fixture,
        client_key: SecretKey,
        open: Open,
    ) -> (Option<Authorized>, Option<SessionMessage>) {
        let bind = || Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let host = Endpoint::new(f.host_key.clone(), bind(), &[SESSION_ALPN]).unwrap();
        let client = Endpoint::new(client_key, bind(), &[]).unwrap();
        let host_addr = host.local_addr().unwrap();
        let gate = f.gate.clone();
        let host_side = tokio::spawn(async move {
            let conn = host.accept().await.unwrap().unwrap();
            let (mut send, mut recv) = conn.quic().accept_bi().await.unwrap();
            let admitted = gate
                .admit(
                    &mut FrameReader::new(&mut recv),
                    &mut send,
                    conn.peer(),
                    &system_uid,
                )
                .await
                .unwrap();
            // Stands in for the session, which answers Opened: end the stream either way.
            let _ = send.finish();
            let _ = conn.quic().closed().await;
            admitted.map(|(_, a)| a)
        });
        let conn = client
            .connect(host_addr, f.host_key.node_id(), SESSION_ALPN)
            .await
            .unwrap();
        let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
        write_frame(&mut send, &SessionMessage::Open(open))
            .await
            .unwrap();
        send.finish().unwrap();
        let reply = crate::framed::read_frame::<SessionMessage, _>(&mut recv)
            .await
            .unwrap();
        conn.quic().close(0u32.into(), b"done");
        (host_side.await.unwrap(), reply)
    }

    fn refusal(reply: Option<SessionMessage>) -> Rejection {
        match reply {
            Some(SessionMessage::Refused(Refused {
                reason: Refusal::Grant(r),
            })) => r,
            other => panic!("expected a grant refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_good_grant_is_admitted_with_the_resolved_uid() {
        let f = fixture();
        let bytes = f.ca.sign_grant(&grant(&f)).unwrap();
        let (admitted, reply) =
            over_quic(&f, f.client_key.clone(), open(bytes, Some("true"))).await;
        let admitted = admitted.expect("admitted");
        assert_eq!(admitted.login, Some(("root".into(), 0)));
        assert_eq!(
            reply, None,
            "the gate says nothing on success; the session does"
        );
    }

    #[tokio::test]
    async fn an_expired_grant_is_refused_as_expired() {
        let f = fixture();
        let mut g = grant(&f);
        g.not_before = NOW.saturating_sub(Duration::from_secs(3600));
        g.not_after = NOW.saturating_sub(Duration::from_secs(600));
        let bytes = f.ca.sign_grant(&g).unwrap();
        let (admitted, reply) =
            over_quic(&f, f.client_key.clone(), open(bytes, Some("true"))).await;
        assert!(admitted.is_none());
        assert!(matches!(refusal(reply), Rejection::Expired { .. }));
    }

    #[tokio::test]
    async fn a_grant_for_another_host_is_refused_as_wrong_host() {
        let f = fixture();
        let mut g = grant(&f);
        g.host = SecretKey::from_seed(&[9; 32]).node_id();
        let bytes = f.ca.sign_grant(&g).unwrap();
        let (admitted, reply) =
            over_quic(&f, f.client_key.clone(), open(bytes, Some("true"))).await;
        assert!(admitted.is_none());
        assert!(matches!(refusal(reply), Rejection::WrongHost { .. }));
    }

    #[tokio::test]
    async fn a_grant_presented_by_another_key_is_refused_as_wrong_client() {
        let f = fixture();
        let bytes = f.ca.sign_grant(&grant(&f)).unwrap();
        let thief = SecretKey::from_seed(&[4; 32]);
        let (admitted, reply) = over_quic(&f, thief, open(bytes, Some("true"))).await;
        assert!(admitted.is_none());
        assert!(matches!(refusal(reply), Rejection::WrongClient { .. }));
    }

    #[test]
    fn a_shell_needs_the_shell_permission_and_unknown_logins_match_nothing() {
        let f = fixture();
        let bytes = f.ca.sign_grant(&grant(&f)).unwrap();
        let client = f.client_key.node_id();
        let err = f
            .gate
            .check(&open(bytes.clone(), None), client, &system_uid)
            .unwrap_err();
        assert!(
            matches!(err, Refusal::Grant(Rejection::PermissionNotGranted { .. })),
            "{err:?}"
        );

        let mut g = grant(&f);
        g.login = "no-such-user-here".into();
        let bytes = f.ca.sign_grant(&g).unwrap();
        let mut request = open(bytes, Some("true"));
        request.login = LoginRequest::Named("no-such-user-here".into());
        let err = f.gate.check(&request, client, &system_uid).unwrap_err();
        assert!(
            matches!(err, Refusal::Grant(Rejection::LoginNotAllowed { .. })),
            "{err:?}"
        );
    }
}
