//! The host side of sessions: each QUIC stream on a session connection is one session.
//!
//! Order matters and is the point of this module: the grant is checked at the [`Gate`], then
//! the host's own policy (allowed logins) and its [limits](super::limits); only then does the
//! [`SessionBackend`] start anything. Once running, the host relays whole frames between the
//! client's stream and the session, which lets it watch for idleness, end a session at its
//! deadline with a [`Closed`] reason, and refuse messages a client must not send. When the
//! client goes away, or a limit ends the session, the host closes its side of the session's
//! link, and the backend hangs the session's processes up.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_proto::NodeId;
use mesh_proto::audit::AuditKind;
use mesh_proto::messages::agent::Start;
use mesh_proto::messages::session::{
    Closed, Data, Eof, ExitStatus, LoginRequest, Open, Opened, Refusal, Refused, SessionMessage,
    Stream,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::gate::{Admission, Authorized, Gate, system_uid};
use super::hangup::HANGUP_GRACE;
use super::limits::{SessionCounter, SessionEnd, session_deadline, until_expiry};
use super::process::spawn_session_process;
use crate::audit::{AuditLog, SessionAudit, Subject};
use crate::endpoint::Connection;
use crate::error::Error;
use crate::framed::{FrameReader, write_frame};
use crate::temp_accounts::{TempAccounts, TempLease};

/// A started session as the host sees it: a link carrying session frames both ways, and a
/// future that completes once everything the session ran is gone.
pub struct BackendSession<Io> {
    /// Session frames to and from the session (the client's, relayed).
    pub link: Io,
    /// Completes when the session's processes have ended. Closing the link's write side asks
    /// the session to hang up.
    pub ended: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<Io> std::fmt::Debug for BackendSession<Io> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSession").finish_non_exhaustive()
    }
}

/// What runs sessions: per-session processes with real PTYs ([`ProcessBackend`]) on real
/// hosts; an in-process backend in the simulator, where thousands of sessions share one
/// runtime.
pub trait SessionBackend: Send + Sync + 'static {
    /// The link to a running session.
    type Link: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Starts the session `start` describes (the grant and limits are already checked), or
    /// says in one line why it could not.
    fn start(
        &self,
        start: Start,
    ) -> impl Future<Output = Result<BackendSession<Self::Link>, String>> + Send;
}

/// How to start a per-session process: the `mesh` binary and the arguments of its
/// session-process entry point.
#[derive(Debug, Clone)]
pub struct SessionProgram {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Sessions as per-session processes (DESIGN.md, "Sessions").
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    program: SessionProgram,
}

impl ProcessBackend {
    /// Starts sessions with `program`.
    pub fn new(program: SessionProgram) -> Self {
        Self { program }
    }
}

/// How long a session process may take to exit once hung up before it is killed: the grace
/// its own processes get, and a margin for it to report.
const SESSION_PROCESS_EXIT: Duration = Duration::from_secs(HANGUP_GRACE.as_secs() + 3);

impl SessionBackend for ProcessBackend {
    type Link = tokio::net::UnixStream;

    async fn start(&self, start: Start) -> Result<BackendSession<Self::Link>, String> {
        let args: Vec<&str> = self.program.args.iter().map(String::as_str).collect();
        let (mut child, socket) = spawn_session_process(&self.program.program, &args, start)
            .await
            .map_err(|e| e.to_string())?;
        let ended = Box::pin(async move {
            // The session process hangs its processes up and exits when its socket closes;
            // kill it only if it does not.
            if tokio::time::timeout(SESSION_PROCESS_EXIT, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        });
        Ok(BackendSession {
            link: socket,
            ended,
        })
    }
}

/// The host's policy on which accounts sessions may run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginPolicy {
    /// Any account a grant names (an agent running as root).
    Any,
    /// Only these accounts (`allowed_logins`, or the agent's own account when it is not root).
    Only(Vec<String>),
}

impl LoginPolicy {
    fn allows(&self, login: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(logins) => logins.iter().any(|l| l == login),
        }
    }
}

/// Everything the host decides sessions by, besides the grant.
#[derive(Debug)]
pub struct HostPolicy {
    /// Which accounts.
    pub logins: LoginPolicy,
    /// The shell for accounts that name none.
    pub default_shell: Option<String>,
    /// Counting against the limits.
    pub counter: Arc<SessionCounter>,
    /// What the coordinator said (remote-shell on or off).
    pub state: Arc<crate::agent::presence::HostState>,
    /// What was revoked: sessions under a revoked grant, device or user end.
    pub revocations: Arc<crate::agent::revocations::Revocations>,
    /// Where temporary accounts come from; `None` when this host cannot make them (its agent
    /// is not root, or it is simulated).
    pub temp_accounts: Option<Arc<TempAccounts>>,
    /// Where sessions and refusals are recorded; `None`: not audited (tests, demos).
    pub audit: Option<Arc<AuditLog>>,
}

/// Serves sessions on authenticated connections.
#[derive(Debug)]
pub struct SessionHost<B> {
    gate: Gate,
    policy: HostPolicy,
    backend: B,
    next_session_id: AtomicU64,
}

impl<B: SessionBackend> SessionHost<B> {
    /// A host that checks grants with `gate`, decides by `policy` and starts sessions with
    /// `backend`.
    pub fn new(gate: Gate, policy: HostPolicy, backend: B) -> Arc<Self> {
        Arc::new(Self {
            gate,
            policy,
            backend,
            next_session_id: AtomicU64::new(1),
        })
    }

    /// Serves every session stream the client opens on `conn`, until it closes.
    pub async fn serve_connection(self: Arc<Self>, conn: Connection) {
        let client = conn.peer();
        while let Ok((send, recv)) = conn.quic().accept_bi().await {
            let host = self.clone();
            tokio::spawn(async move {
                if let Err(e) = host.serve_stream(send, recv, client).await {
                    tracing::info!(client = %client.short(), "session ended with an error: {e}");
                }
            });
        }
    }

    /// One session: gate, policy and limits, start, relay, end.
    pub async fn serve_stream<S, R>(
        &self,
        mut send: S,
        recv: R,
        client: NodeId,
    ) -> Result<(), Error>
    where
        S: AsyncWrite + Send + Unpin,
        R: AsyncRead + Send + Unpin,
    {
        let mut recv = FrameReader::new(recv);
        let (open, authorized) = match self
            .gate
            .admit_or_refuse(&mut recv, &mut send, client, &system_uid)
            .await?
        {
            Admission::Admitted(open, authorized) => (open, *authorized),
            Admission::Refused { open, reason } => {
                let reason = match reason {
                    Refusal::Grant(rejection) => rejection.to_string(),
                    Refusal::Host(reason) => reason,
                };
                self.audit_refusal(client, None, &open, &reason);
                return Ok(());
            }
            Admission::NoOpen => return Ok(()),
        };
        let grant = &authorized.grant.grant;
        let refuse = async |send: &mut S, reason: String| {
            tracing::info!(client = %client.short(), user = %grant.user_name, "refused: {reason}");
            self.audit_refusal(client, Some(grant), &open, &reason);
            let refused = SessionMessage::Refused(Refused {
                reason: Refusal::Host(reason),
            });
            write_frame(send, &refused).await?;
            let _ = send.shutdown().await;
            Ok(())
        };
        let decided = self.decide(&open, &authorized).and_then(|(start, slot)| {
            // Room for the session's start and end in the audit spool, or no session.
            let audit = self.policy.audit.as_ref().map(AuditLog::admit_session);
            Ok((start, slot, audit.transpose()?))
        });
        let (mut start, slot, mut audit) = match decided {
            Ok(decided) => decided,
            Err(reason) => return refuse(&mut send, reason).await,
        };
        // A temporary account is made only now, after every check that could refuse.
        let lease = match &self.policy.temp_accounts {
            Some(accounts) if grant.temporary => {
                match accounts
                    .acquire(grant.user_id, &grant.user_name, &grant.login)
                    .await
                {
                    Ok(lease) => {
                        start.login = lease.name().to_owned();
                        Some(lease)
                    }
                    Err(reason) => return refuse(&mut send, reason).await,
                }
            }
            _ => None,
        };
        let login = start.login.clone();
        let session = match self.backend.start(start).await {
            Ok(session) => session,
            Err(reason) => {
                release(lease).await;
                return refuse(&mut send, reason).await;
            }
        };
        let session_id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let subject = Subject {
            device: client,
            grant: Some(grant),
            login: Some(&login),
        };
        // Recorded (fsync'd) before the client hears Opened.
        record_session(
            &mut audit,
            AuditKind::SessionStarted,
            subject,
            session_id,
            "",
            |_| {},
        );
        tracing::info!(session_id, client = %client.short(), user = %grant.user_name, %login, "session started");
        write_frame(&mut send, &SessionMessage::Opened(Opened { session_id })).await?;
        let limits = *self.policy.counter.limits();
        let grant_max = grant.max_session();
        let expires = grant.temporary.then(|| self.temporary_expiry(grant));
        let deadline = |started, last| {
            until_expiry(session_deadline(&limits, grant_max, started, last), expires)
        };
        let BackendSession { link, ended } = session;
        let revoked = self.policy.revocations.clone().until_revoked(grant.clone());
        let temp_users_off = self.policy.state.clone().until_temp_users_off();
        let ended_by_host = async {
            if !grant.temporary {
                return revoked.await;
            }
            tokio::select! {
                biased;
                reason = revoked => reason,
                () = temp_users_off => "temporary users were turned off on this host".to_owned(),
            }
        };
        let tally = Tally::default();
        let outcome = relay(&mut recv, &mut send, link, deadline, ended_by_host, &tally).await;
        ended.await;
        release(lease).await;
        let reason = match &outcome {
            Ok(end) => end.describe(),
            Err(e) => format!("relay failed: {e}"),
        };
        record_session(
            &mut audit,
            AuditKind::SessionEnded,
            subject,
            session_id,
            &reason,
            |event| {
                event.exit = tally.exit();
                event.bytes_up = tally.up.load(Ordering::Relaxed);
                event.bytes_down = tally.down.load(Ordering::Relaxed);
            },
        );
        drop(audit);
        drop(slot);
        let _ = send.shutdown().await;
        tracing::info!(session_id, "session ended: {outcome:?}");
        outcome.map(|_| ())
    }

    /// Records a refused session, if this host audits.
    fn audit_refusal(
        &self,
        client: NodeId,
        grant: Option<&mesh_proto::Grant>,
        open: &Open,
        reason: &str,
    ) {
        let Some(log) = &self.policy.audit else {
            return;
        };
        let login = match &open.login {
            LoginRequest::Named(name) => Some(name.as_str()),
            LoginRequest::Temporary => None,
        };
        let subject = Subject {
            device: client,
            grant,
            login,
        };
        if let Some(event) = log.event(AuditKind::Refused, subject, reason) {
            log.record(event);
        }
    }

    /// The host's own checks after the grant's: the login, then the limits. Returns what to
    /// start and the session's slot, or the one-line reason for the client.
    fn decide(
        &self,
        open: &Open,
        authorized: &Authorized,
    ) -> Result<(Start, super::limits::SessionSlot), String> {
        let grant = &authorized.grant.grant;
        if !self.policy.state.remote_shell() {
            return Err(
                "remote shell is off on this host; an admin can turn it on with \
                        `mesh host set HOST remote-shell=on`"
                    .to_owned(),
            );
        }
        let login = match (&open.login, &authorized.login) {
            (LoginRequest::Named(_), Some((login, uid))) => {
                if crate::temp_accounts::is_temporary_login(login, *uid) {
                    return Err(format!(
                        "login {login:?} is a temporary account; only its own user's `--temp` \
                         sessions may use it"
                    ));
                }
                if !self.policy.logins.allows(login) {
                    return Err(format!(
                        "login {login:?} is not allowed on this host (allowed_logins in its \
                         config.toml)"
                    ));
                }
                login.clone()
            }
            (LoginRequest::Temporary, None) if grant.temporary => {
                if !self.policy.state.temp_users() {
                    return Err(
                        "temporary users are off on this host; an admin can allow them \
                         with `mesh host set HOST temp-users=on`"
                            .to_owned(),
                    );
                }
                if self.policy.temp_accounts.is_none() {
                    return Err(
                        "this host cannot make temporary accounts: its agent does not \
                         run as root"
                            .to_owned(),
                    );
                }
                // Named once the account exists (see `serve_stream`).
                String::new()
            }
            _ => return Err("the login asked for does not match the grant".to_owned()),
        };
        let slot = self
            .policy
            .counter
            .try_admit(grant.user_id, &grant.user_name)
            .map_err(|limit| limit.to_string())?;
        let start = Start {
            login,
            command: open.command.clone(),
            pty: open.pty.clone(),
            env: open.env.clone(),
            default_shell: self.policy.default_shell.clone(),
        };
        Ok((start, slot))
    }
}

impl<B> SessionHost<B> {
    /// When a temporary grant's session must end, on the monotonic clock: the grant's
    /// `not_after` judged by the host's corrected wall clock now.
    fn temporary_expiry(&self, grant: &mesh_proto::Grant) -> Instant {
        let left = grant
            .not_after
            .duration_since(mesh_proto::Clock::now(&*self.policy.state))
            .unwrap_or(Duration::ZERO);
        Instant::now() + left
    }
}

/// Gives a session's temporary account back, if it had one; the last session's release
/// deletes the account.
async fn release(lease: Option<TempLease>) {
    if let Some(lease) = lease {
        lease.release().await;
    }
}

/// How a relayed session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// The session's program ended and everything it said reached the client.
    Finished,
    /// The client went away (or broke the protocol); the session was hung up.
    ClientGone,
    /// The host ended it at a limit.
    Ended(SessionEnd),
    /// The host ended it for a reason outside the session: its grant, device or user was
    /// revoked, or its temporary account was withdrawn (the reason, in words).
    EndedByHost(String),
}

impl RelayEnd {
    /// How the session ended, in words, for the audit.
    fn describe(&self) -> String {
        match self {
            Self::Finished => "finished".to_owned(),
            Self::ClientGone => "the client went away".to_owned(),
            Self::Ended(why) => why.to_string(),
            Self::EndedByHost(reason) => reason.clone(),
        }
    }
}

/// Records one of a session's events in its reserved audit room, after `fill` adds what only
/// the caller knows.
fn record_session(
    audit: &mut Option<SessionAudit>,
    kind: AuditKind,
    subject: Subject<'_>,
    session_id: u64,
    reason: &str,
    fill: impl FnOnce(&mut mesh_proto::audit::AuditEvent),
) {
    let Some(audit) = audit else {
        return;
    };
    if let Some(mut event) = audit.log().event(kind, subject, reason) {
        event.session = Some(session_id);
        fill(&mut event);
        audit.record(event);
    }
}

/// What a relay saw pass, for the audit: bytes each way and the exit status.
#[derive(Debug, Default)]
struct Tally {
    up: AtomicU64,
    down: AtomicU64,
    exit: std::sync::Mutex<Option<ExitStatus>>,
}

impl Tally {
    fn data(&self, counter: &AtomicU64, message: &SessionMessage) {
        if let SessionMessage::Data(data) = message {
            counter.fetch_add(data.bytes.len() as u64, Ordering::Relaxed);
        }
    }

    fn exit(&self) -> Option<ExitStatus> {
        *self
            .exit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Relays frames between the client's stream and the session's link until the session's side
/// ends, ending it early when the client goes away or `deadline(started, last_activity)`
/// passes.
///
/// The two directions run concurrently, each with its own backpressure, as ssh's channels
/// have their own windows: a command that neither reads its stdin nor stops writing must not
/// stall either direction behind the other.
async fn relay<C, S, L>(
    client_recv: &mut FrameReader<C>,
    client_send: &mut S,
    link: L,
    deadline: impl Fn(Instant, Instant) -> (Instant, SessionEnd),
    ended_by_host: impl Future<Output = String>,
    tally: &Tally,
) -> Result<RelayEnd, Error>
where
    C: AsyncRead + Unpin,
    S: AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    let (link_read, mut link_write) = tokio::io::split(link);
    let mut from_session = FrameReader::new(link_read);
    let started = Instant::now();
    let activity = Activity::new(started);
    let end = std::sync::Mutex::new(None::<RelayEnd>);
    let set_end = |why: RelayEnd| {
        let mut end = end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        end.get_or_insert(why);
    };
    // Tells the upstream half to stop and hang the session up.
    let hang_up = tokio::sync::Notify::new();
    // Tells the downstream half that the client is gone, so the session must end soon.
    let client_gone = tokio::sync::Notify::new();

    let upstream = async {
        loop {
            let frame = tokio::select! {
                biased;
                () = hang_up.notified() => break,
                frame = client_recv.next::<SessionMessage>() => frame,
            };
            match frame {
                Ok(Some(message)) if is_client_message(&message) => {
                    if matches!(message, SessionMessage::Data(_)) {
                        activity.touch();
                    }
                    tally.data(&tally.up, &message);
                    tokio::select! {
                        biased;
                        () = hang_up.notified() => break,
                        written = write_frame(&mut link_write, &message) => {
                            if written.is_err() {
                                break;
                            }
                        }
                    }
                }
                // The stream ended, failed, or carried what a client must not send.
                _ => {
                    set_end(RelayEnd::ClientGone);
                    client_gone.notify_one();
                    break;
                }
            }
        }
        // Closing our side asks the session to hang up; after a normal end it is a no-op.
        let _ = link_write.shutdown().await;
    };

    tokio::pin!(ended_by_host);
    let downstream = async {
        // Set once the session is being hung up: how long it has left to end on its own.
        let mut drain_until: Option<Instant> = None;
        let result = loop {
            let (at, why) = deadline(started, activity.last());
            let give_up = drain_until.unwrap_or(at);
            tokio::select! {
                biased;
                frame = from_session.next::<SessionMessage>() => match frame {
                    Ok(Some(message)) => {
                        if matches!(message, SessionMessage::Data(_)) {
                            activity.touch();
                        }
                        tally.data(&tally.down, &message);
                        if let SessionMessage::Exited(status) = message {
                            *tally.exit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(status);
                        }
                        let client_there = !matches!(
                            *end.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                            Some(RelayEnd::ClientGone)
                        );
                        if client_there && write_frame(client_send, &message).await.is_err() {
                            set_end(RelayEnd::ClientGone);
                            hang_up.notify_one();
                            drain_until.get_or_insert(Instant::now() + SESSION_PROCESS_EXIT);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                () = client_gone.notified(), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + SESSION_PROCESS_EXIT);
                }
                () = tokio::time::sleep_until(at), if drain_until.is_none() => {
                    // Activity may have moved the deadline since this sleep began.
                    if Instant::now() >= deadline(started, activity.last()).0 {
                        drain_until = Some(Instant::now() + SESSION_PROCESS_EXIT);
                        set_end(RelayEnd::Ended(why));
                        let closed = SessionMessage::Closed(Closed { reason: why.to_string() });
                        let _ = write_frame(client_send, &closed).await;
                        hang_up.notify_one();
                    }
                }
                reason = &mut ended_by_host, if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + SESSION_PROCESS_EXIT);
                    let closed_reason = format!("the host ended the session: {reason}");
                    set_end(RelayEnd::EndedByHost(reason));
                    let reason = closed_reason;
                    let closed = SessionMessage::Closed(Closed { reason });
                    let _ = write_frame(client_send, &closed).await;
                    hang_up.notify_one();
                }
                // The session did not end after a hangup: stop relaying; `ended` kills it.
                () = tokio::time::sleep_until(give_up), if drain_until.is_some() => break Ok(()),
            }
        };
        set_end(RelayEnd::Finished);
        hang_up.notify_one();
        result
    };
    let ((), result) = tokio::join!(upstream, downstream);
    result?;
    let end = end
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(end.unwrap_or(RelayEnd::Finished))
}

/// When a session last carried bytes, shared by the two halves of a relay.
struct Activity {
    started: Instant,
    millis_since_start: AtomicU64,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Self {
            started,
            millis_since_start: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis_since_start.fetch_max(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.millis_since_start.load(Ordering::Relaxed))
    }
}

/// Whether a client may send `message` once the session runs.
fn is_client_message(message: &SessionMessage) -> bool {
    matches!(
        message,
        SessionMessage::Data(Data {
            stream: Stream::Stdin,
            ..
        }) | SessionMessage::Eof(Eof {
            stream: Stream::Stdin
        }) | SessionMessage::Resize(_)
            | SessionMessage::Signal(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::messages::SESSION_ALPN;
    use mesh_proto::messages::session::{Data, ExitStatus, Open, Stream};

    use crate::endpoint::Endpoint;
    use crate::session::account::tests::current_user;
    use crate::session::fake_shell::FakeShellBackend;
    use crate::session::gate::tests::{Fixture, fixture, grant};
    use crate::session::limits::Limits;
    use crate::session::process::tests::test_session_program;
    use crate::udp::UdpSocket;

    fn test_policy(limits: Limits) -> HostPolicy {
        HostPolicy {
            logins: LoginPolicy::Any,
            default_shell: None,
            counter: SessionCounter::new(limits),
            state: crate::agent::presence::HostState::new(Arc::new(mesh_proto::SystemClock)),
            // The gate fixture's CA.
            revocations: crate::agent::revocations::Revocations::in_memory(
                mesh_proto::CaKeySet::single(fixture().ca.public_key()),
            ),
            temp_accounts: None,
            audit: None,
        }
    }

    /// A host on loopback and a client connected to it, with a grant for the current user.
    struct Running {
        conn: Connection,
        grant: Vec<u8>,
        ca: mesh_proto::CaSigner,
        granted: mesh_proto::Grant,
        _client: Endpoint,
    }

    impl Running {
        /// Replaces the grant sessions are opened with by an adjusted copy.
        fn regrant(&mut self, adjust: impl FnOnce(&mut mesh_proto::Grant)) {
            adjust(&mut self.granted);
            self.grant = self.ca.sign_grant(&self.granted).unwrap();
        }
    }

    async fn start(policy: HostPolicy) -> Running {
        start_with(policy, ProcessBackend::new(test_session_program())).await
    }

    async fn start_with(policy: HostPolicy, backend: impl SessionBackend) -> Running {
        let f = fixture();
        let mut granted = grant(&f);
        granted.login = current_user().name;
        let Fixture {
            ca,
            host_key,
            client_key,
            gate,
        } = f;
        let grant = ca.sign_grant(&granted).unwrap();
        let bind = || Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let host = Endpoint::new(host_key.clone(), bind(), &[SESSION_ALPN]).unwrap();
        let host_addr = host.local_addr().unwrap();
        // The gate reads the same revocations the policy receives, as in the agent.
        let gate = Gate {
            revocations: policy.revocations.shared(),
            ..gate
        };
        let sessions = SessionHost::new(gate, policy, backend);
        tokio::spawn(async move {
            while let Some(Ok(conn)) = host.accept().await {
                tokio::spawn(sessions.clone().serve_connection(conn));
            }
        });
        let client = Endpoint::new(client_key, bind(), &[]).unwrap();
        let conn = client
            .connect(host_addr, host_key.node_id(), SESSION_ALPN)
            .await
            .unwrap();
        Running {
            conn,
            grant,
            ca,
            granted,
            _client: client,
        }
    }

    /// One session stream as a client drives it.
    struct Session {
        send: quinn::SendStream,
        recv: FrameReader<quinn::RecvStream>,
    }

    impl Running {
        async fn open(&self, command: &str) -> Session {
            let (mut send, recv) = self.conn.quic().open_bi().await.unwrap();
            let open = Open {
                grant: self.grant.clone(),
                login: LoginRequest::Named(current_user().name),
                command: Some(command.into()),
                pty: None,
                env: vec![],
            };
            write_frame(&mut send, &SessionMessage::Open(open))
                .await
                .unwrap();
            Session {
                send,
                recv: FrameReader::new(recv),
            }
        }
    }

    impl Session {
        async fn send(&mut self, message: SessionMessage) {
            write_frame(&mut self.send, &message).await.unwrap();
        }

        /// Every frame until the host finishes the stream.
        async fn rest(&mut self) -> Vec<SessionMessage> {
            let mut frames = Vec::new();
            while let Ok(Some(frame)) = self.recv.next::<SessionMessage>().await {
                frames.push(frame);
            }
            frames
        }

        async fn first_line(&mut self) -> String {
            let mut out = Vec::new();
            while !out.contains(&b'\n') {
                match self.recv.next::<SessionMessage>().await.unwrap() {
                    Some(SessionMessage::Data(Data { bytes, .. })) => out.extend(bytes),
                    Some(_) => {}
                    None => panic!("ended before a line: {out:?}"),
                }
            }
            String::from_utf8(out).unwrap().trim().to_owned()
        }
    }

    fn stdout_of(frames: &[SessionMessage]) -> Vec<u8> {
        frames
            .iter()
            .filter_map(|f| match f {
                SessionMessage::Data(Data {
                    stream: Stream::Stdout,
                    bytes,
                }) => Some(bytes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn refusal(frames: &[SessionMessage]) -> String {
        match frames.first() {
            Some(SessionMessage::Refused(Refused {
                reason: Refusal::Host(reason),
            })) => reason.clone(),
            other => panic!("expected a host refusal, got {other:?}"),
        }
    }

    /// Polls (bounded) until `pid` is gone or a zombie; false if it still runs after 10 s.
    async fn gone_within_10s(pid: i32) -> bool {
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            if stat.map_or(true, |s| s.split_whitespace().nth(2) == Some("Z")) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_granted_command_runs_in_a_session_process_over_quic() {
        let host = start(test_policy(Limits::default())).await;
        let mut session = host.open("cat; echo err >&2; exit 5").await;
        let stdin = Data {
            stream: Stream::Stdin,
            bytes: b"typed\n".to_vec(),
        };
        session.send(SessionMessage::Data(stdin)).await;
        session
            .send(SessionMessage::Eof(Eof {
                stream: Stream::Stdin,
            }))
            .await;
        let frames = session.rest().await;
        assert!(matches!(frames[0], SessionMessage::Opened(_)), "{frames:?}");
        assert_eq!(stdout_of(&frames), b"typed\n");
        assert!(frames.contains(&SessionMessage::Data(Data {
            stream: Stream::Stderr,
            bytes: b"err\n".to_vec()
        })));
        assert_eq!(
            frames.last(),
            Some(&SessionMessage::Exited(ExitStatus::Code(5)))
        );
    }

    #[tokio::test]
    async fn the_session_over_the_limit_is_refused_before_anything_starts() {
        let limits = Limits {
            max_sessions: 1,
            ..Limits::default()
        };
        let host = start(test_policy(limits)).await;
        let mut first = host.open("echo ready; read line").await;
        assert_eq!(first.first_line().await, "ready");
        let marker = tempfile::tempdir().unwrap();
        let marker = marker.path().join("ran");
        let mut second = host.open(&format!("touch {}", marker.display())).await;
        let reason = refusal(&second.rest().await);
        assert!(reason.contains("max_sessions"), "{reason}");
        assert!(!marker.exists(), "the refused session's command ran");
        // The first one is unaffected, and its slot comes back when it ends.
        first
            .send(SessionMessage::Data(Data {
                stream: Stream::Stdin,
                bytes: b"go\n".to_vec(),
            }))
            .await;
        assert_eq!(
            first.rest().await.last(),
            Some(&SessionMessage::Exited(ExitStatus::Code(0)))
        );
        let mut third = host.open("echo again").await;
        assert_eq!(stdout_of(&third.rest().await), b"again\n");
    }

    #[tokio::test]
    async fn an_idle_session_is_closed_with_the_limit_named_and_hung_up() {
        let limits = Limits {
            idle_timeout: Some(Duration::from_millis(500)),
            ..Limits::default()
        };
        let host = start(test_policy(limits)).await;
        let mut session = host.open("echo $$; exec sleep 300").await;
        let pid: i32 = session.first_line().await.parse().unwrap();
        let frames = session.rest().await;
        let closed = frames.iter().find_map(|f| match f {
            SessionMessage::Closed(Closed { reason }) => Some(reason.clone()),
            _ => None,
        });
        assert!(
            closed
                .as_deref()
                .is_some_and(|r| r.contains("idle_timeout")),
            "{frames:?}"
        );
        assert_eq!(
            frames.last(),
            Some(&SessionMessage::Exited(ExitStatus::Signal(1))),
            "hung up with SIGHUP"
        );
        assert!(gone_within_10s(pid).await);
    }

    #[tokio::test]
    async fn a_vanished_client_gets_its_session_hung_up_including_background_jobs() {
        let host = start(test_policy(Limits::default())).await;
        let mut session = host
            .open("(trap '' HUP; exec sleep 300) & echo $!; exec sleep 300")
            .await;
        let stubborn: i32 = session.first_line().await.parse().unwrap();
        // The job sets its trap before it execs sleep: wait (bounded) for the exec.
        for _ in 0..500 {
            let comm = std::fs::read_to_string(format!("/proc/{stubborn}/comm")).unwrap();
            if comm.trim() == "sleep" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = std::fs::read_to_string(format!("/proc/{stubborn}/status")).unwrap();
        // SIGHUP (bit 0) is ignored: only the SIGKILL after the grace can end it.
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(ignored & 1, 1, "{status}");
        // The client resets its stream: to the host, the client is gone.
        session.send.reset(0u32.into()).unwrap();
        drop(session);
        assert!(
            gone_within_10s(stubborn).await,
            "a job ignoring SIGHUP survived"
        );
    }

    fn closed_reason(frames: &[SessionMessage]) -> Option<String> {
        frames.iter().find_map(|f| match f {
            SessionMessage::Closed(Closed { reason }) => Some(reason.clone()),
            _ => None,
        })
    }

    /// Virtual time: a 30-minute idle timeout ends a fake session after exactly that long of
    /// silence, while keep-alives hold the QUIC connection up throughout.
    #[tokio::test(start_paused = true)]
    async fn in_virtual_time_an_idle_session_closes_at_its_idle_timeout() {
        let idle = Duration::from_secs(30 * 60);
        let limits = Limits {
            idle_timeout: Some(idle),
            ..Limits::default()
        };
        let host = start_with(test_policy(limits), FakeShellBackend).await;
        let began = Instant::now();
        let mut session = host.open("sleep 7200").await;
        let frames = session.rest().await;
        let took = began.elapsed();
        assert!(
            closed_reason(&frames).is_some_and(|r| r.contains("idle_timeout")),
            "{frames:?}"
        );
        assert_eq!(
            frames.last(),
            Some(&SessionMessage::Exited(ExitStatus::Signal(1)))
        );
        assert!(
            took >= idle && took < idle + Duration::from_secs(5),
            "{took:?}"
        );
    }

    /// Virtual time: traffic keeps a session alive past its idle timeout, and the grant's
    /// shorter session limit ends it at exactly its length.
    #[tokio::test(start_paused = true)]
    async fn in_virtual_time_activity_defers_the_idle_timeout_and_the_grant_caps_duration() {
        let limits = Limits {
            idle_timeout: Some(Duration::from_secs(60)),
            max_duration: Duration::from_secs(24 * 3600),
            ..Limits::default()
        };
        let mut host = start_with(test_policy(limits), FakeShellBackend).await;
        // The fixture's grant allows 12 h sessions; make this one's limit 10 minutes.
        host.regrant(|g| g.max_session_secs = 600);
        let began = Instant::now();
        let mut session = host.open("cat").await;
        // A tick every 45 s (inside the 60 s idle timeout) up to 585 s.
        for _ in 0..13 {
            tokio::time::sleep(Duration::from_secs(45)).await;
            session
                .send(SessionMessage::Data(Data {
                    stream: Stream::Stdin,
                    bytes: b"tick\n".to_vec(),
                }))
                .await;
        }
        let frames = session.rest().await;
        let took = began.elapsed();
        let reason = closed_reason(&frames).unwrap_or_default();
        assert!(reason.contains("max_duration"), "{reason}: {frames:?}");
        assert!(
            took >= Duration::from_secs(600) && took < Duration::from_secs(605),
            "{took:?}"
        );
        // Every tick sent before the end came back.
        let echoed = String::from_utf8(stdout_of(&frames)).unwrap();
        assert_eq!(echoed.matches("tick").count(), 13, "{echoed}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fake_shell_runs_lines_and_reports_the_exit_code() {
        let mut host = start_with(test_policy(Limits::default()), FakeShellBackend).await;
        host.regrant(|g| g.permissions = mesh_proto::Permissions::SHELL);
        let (mut send, recv) = host.conn.quic().open_bi().await.unwrap();
        let open = Open {
            grant: host.grant.clone(),
            login: LoginRequest::Named(current_user().name),
            command: None,
            pty: None,
            env: vec![],
        };
        write_frame(&mut send, &SessionMessage::Open(open))
            .await
            .unwrap();
        let mut session = Session {
            send,
            recv: FrameReader::new(recv),
        };
        session
            .send(SessionMessage::Data(Data {
                stream: Stream::Stdin,
                bytes: b"echo hi there\nnope\nexit 3\n".to_vec(),
            }))
            .await;
        let frames = session.rest().await;
        let out = String::from_utf8(stdout_of(&frames)).unwrap();
        assert_eq!(out, "$ hi there\n$ $ ", "{frames:?}");
        assert_eq!(
            frames.last(),
            Some(&SessionMessage::Exited(ExitStatus::Code(3)))
        );
    }

    #[tokio::test]
    async fn revoking_the_grant_ends_its_running_session_and_refuses_it_again() {
        let policy = test_policy(Limits::default());
        let revocations = policy.revocations.clone();
        let host = start(policy).await;
        let mut session = host.open("echo $$; exec sleep 300").await;
        let pid: i32 = session.first_line().await.parse().unwrap();
        let revocation = mesh_proto::Revocation {
            id: mesh_proto::RevocationId::from_bytes([4; 16]),
            target: mesh_proto::RevocationTarget::Grant(host.granted.id),
            issued_at: mesh_proto::UnixTime::from_secs(1),
        };
        let signed = host.ca.sign_revocation(&revocation).unwrap();
        assert!(revocations.apply(&signed).unwrap());
        let frames = session.rest().await;
        let reason = closed_reason(&frames).unwrap_or_default();
        assert!(reason.contains("revoked"), "{frames:?}");
        assert_eq!(
            frames.last(),
            Some(&SessionMessage::Exited(ExitStatus::Signal(1)))
        );
        assert!(gone_within_10s(pid).await);
        // The gate refuses the same grant from now on.
        let mut again = host.open("true").await;
        match again.rest().await.first() {
            Some(SessionMessage::Refused(Refused {
                reason: Refusal::Grant(rejection),
            })) => assert!(rejection.to_string().contains("revoked"), "{rejection}"),
            other => panic!("expected a revoked grant's refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_login_outside_the_hosts_policy_is_refused() {
        let policy = HostPolicy {
            logins: LoginPolicy::Only(vec!["someone-else".into()]),
            ..test_policy(Limits::default())
        };
        let host = start(policy).await;
        let mut session = host.open("true").await;
        let reason = refusal(&session.rest().await);
        assert!(reason.contains("allowed_logins"), "{reason}");
    }

    /// A policy auditing into a spool in `dir`.
    fn audited(dir: &std::path::Path, limit: u64, allow: bool) -> (HostPolicy, Arc<AuditLog>) {
        let log = AuditLog::open(dir, limit, allow, Arc::new(mesh_proto::SystemClock)).unwrap();
        let policy = HostPolicy {
            audit: Some(log.clone()),
            ..test_policy(Limits::default())
        };
        (policy, log)
    }

    /// Everything spooled, acknowledging (deleting) it as an uploader would.
    fn drain(log: &AuditLog) -> Vec<mesh_proto::audit::AuditEvent> {
        let mut out = Vec::new();
        while let Some((seq, events)) = log.next_batch().unwrap() {
            out.extend(events);
            log.acknowledged(seq).unwrap();
        }
        out
    }

    #[tokio::test]
    async fn sessions_and_refusals_are_recorded_with_exit_status_bytes_and_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, log) = audited(dir.path(), 1 << 20, false);
        let host = start(policy).await;
        let mut session = host.open("cat; exit 5").await;
        session
            .send(SessionMessage::Data(Data {
                stream: Stream::Stdin,
                bytes: b"12345\n".to_vec(),
            }))
            .await;
        session
            .send(SessionMessage::Eof(Eof {
                stream: Stream::Stdin,
            }))
            .await;
        let frames = session.rest().await;
        assert_eq!(
            frames.last(),
            Some(&SessionMessage::Exited(ExitStatus::Code(5)))
        );
        // A grant for another host: refused at the gate.
        let mut other = host.granted.clone();
        other.host = mesh_proto::SecretKey::from_seed(&[9; 32]).node_id();
        let mut refused = Running { ..host };
        refused.grant = refused.ca.sign_grant(&other).unwrap();
        let _ = refused.open("true").await.rest().await;

        let events = drain(&log);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                AuditKind::SessionStarted,
                AuditKind::SessionEnded,
                AuditKind::Refused
            ],
            "{events:?}"
        );
        let (started, ended, gate) = (&events[0], &events[1], &events[2]);
        assert_eq!(started.session, ended.session);
        assert_eq!(started.grant, Some(refused.granted.id));
        assert_eq!(started.user.as_ref().unwrap().name, "alice");
        assert_eq!(started.login.as_deref(), Some(current_user().name.as_str()));
        assert_eq!(ended.exit, Some(ExitStatus::Code(5)));
        assert_eq!(ended.bytes_up, 6);
        assert_eq!(ended.bytes_down, 6);
        assert_eq!(ended.reason, "finished");
        // A grant that failed its check is no evidence of who the user is.
        assert_eq!(gate.user, None);
        assert_eq!(gate.grant, None);
        assert!(gate.reason.contains("host"), "{}", gate.reason);
        assert!(events.iter().all(|e| e.device.is_some()));
    }

    #[tokio::test]
    async fn a_full_spool_refuses_sessions_with_the_reason_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, log) = audited(dir.path(), 3 * crate::audit::spool::MAX_RECORD, false);
        let host = start_with(policy, FakeShellBackend).await;
        let mut ran = 0;
        let reason = loop {
            assert!(ran < 20, "never full");
            let frames = host.open("echo hi").await.rest().await;
            match frames.first() {
                Some(SessionMessage::Opened(_)) => ran += 1,
                _ => break refusal(&frames),
            }
        };
        assert_eq!(reason, crate::audit::SPOOL_FULL);
        assert!(ran >= 1);
        // Every session that ran has its start and end.
        let mut events = drain(&log);
        let ended = events
            .iter()
            .filter(|e| e.kind == AuditKind::SessionEnded)
            .count();
        assert_eq!(ended, ran, "{events:?}");
        // With room again (uploaded), sessions run; the refusal is there, or, if even it did
        // not fit, the count of dropped events is.
        let frames = host.open("echo hi").await.rest().await;
        assert!(matches!(frames.first(), Some(SessionMessage::Opened(_))));
        events.extend(drain(&log));
        let accounted = events.iter().any(|e| {
            matches!(e.kind, AuditKind::Dropped { .. })
                || (e.kind == AuditKind::Refused && e.reason == crate::audit::SPOOL_FULL)
        });
        assert!(accounted, "{events:?}");
    }

    #[tokio::test]
    async fn when_allowed_a_full_spool_admits_sessions_and_the_dropped_count_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, log) = audited(dir.path(), 3 * crate::audit::spool::MAX_RECORD, true);
        let host = start_with(policy, FakeShellBackend).await;
        for _ in 0..60 {
            let frames = host.open("echo hi").await.rest().await;
            assert!(
                matches!(frames.first(), Some(SessionMessage::Opened(_))),
                "{frames:?}"
            );
            if log.dropped() > 0 {
                break;
            }
        }
        // One more, wholly unaudited.
        let frames = host.open("echo hi").await.rest().await;
        assert!(matches!(frames.first(), Some(SessionMessage::Opened(_))));
        let lost = log.dropped();
        assert!(lost >= 2, "the spool never filled");
        let events = drain(&log);
        let recorded: u64 = events
            .iter()
            .chain(drain(&log).iter())
            .map(|e| match e.kind {
                AuditKind::Dropped { count } => count,
                _ => 0,
            })
            .sum();
        assert_eq!(recorded, lost, "{events:?}");
        assert_eq!(log.dropped(), 0);
    }
}
