//! A host's presence at the coordinator: one long-lived control stream over the agent's own
//! endpoint (so the coordinator sees the address sessions arrive at), on which the host
//! reports where it listens, learns its settings and the coordinator's time, and receives
//! setting changes as they happen. It reconnects on its own, with backoff and jitter. The same
//! connection carries the audit uploads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use mesh_proto::messages::control::{ControlMessage, Hello, NatReport, Settings, TimeRequest};
use mesh_proto::nat::NatMapping;
use mesh_proto::{Clock, UnixTime};

use super::revocations::Revocations;
use crate::audit::AuditLog;
use crate::audit::upload::upload_forever;
use crate::control::{Enrollment, connect_coordinator, relay_contact};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::framed::{FrameReader, write_frame};
use crate::path::dial::StreamConnector;
use crate::rendezvous::{punch_toward_client, watch_nat};
use crate::tasks::AbortOnDrop;

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the host re-measures its clock offset while connected.
const TIME_CHECK: Duration = Duration::from_secs(60);

/// What the coordinator has told this host: its settings, and how far its clock is off.
#[derive(Debug)]
pub struct HostState {
    remote_shell: AtomicBool,
    temp_users: AtomicBool,
    /// Coordinator time minus local time, in milliseconds.
    offset_ms: AtomicI64,
    base: Arc<dyn Clock>,
    /// Bumped whenever the settings change, to wake sessions a change ends.
    changed: tokio::sync::watch::Sender<u64>,
}

impl HostState {
    /// Defaults until the coordinator says otherwise: sessions allowed, no temporary users,
    /// the local clock as it is.
    pub fn new(base: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            remote_shell: AtomicBool::new(true),
            temp_users: AtomicBool::new(false),
            offset_ms: AtomicI64::new(0),
            base,
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Whether new sessions are allowed.
    pub fn remote_shell(&self) -> bool {
        self.remote_shell.load(Ordering::SeqCst)
    }

    /// Whether temporary accounts may be made and used.
    pub fn temp_users(&self) -> bool {
        self.temp_users.load(Ordering::SeqCst)
    }

    /// Takes the coordinator's settings (also how tests and the simulator set them).
    pub fn apply(&self, settings: Settings) {
        self.remote_shell
            .store(settings.remote_shell, Ordering::SeqCst);
        self.temp_users.store(settings.temp_users, Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Completes once temporary users are off (at once if they are): what ends temporary
    /// sessions when an admin turns them off.
    pub async fn until_temp_users_off(self: Arc<Self>) {
        let mut changes = self.changed.subscribe();
        while self.temp_users() {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records the coordinator's time `remote`, read between local times `sent` and
    /// `received` (the reply is assumed to sit in the middle of the round trip).
    fn measured(&self, sent: UnixTime, received: UnixTime, remote: UnixTime) {
        let midpoint = (i128::from(sent.as_millis()) + i128::from(received.as_millis())) / 2;
        let offset = i128::from(remote.as_millis()) - midpoint;
        let offset = i64::try_from(offset).unwrap_or(0);
        self.offset_ms.store(offset, Ordering::SeqCst);
    }

    /// The measured offset.
    pub fn offset(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

/// The host's wall clock corrected by the coordinator's time: what grants are judged by.
impl Clock for HostState {
    fn now(&self) -> UnixTime {
        let local = self.base.now().as_millis();
        let offset = self.offset_ms.load(Ordering::SeqCst);
        UnixTime::from_millis(local.saturating_add_signed(offset))
    }
}

/// How a host reaches its coordinator.
#[derive(Debug)]
pub struct CoordinatorRoute {
    /// The agent's endpoint (UDP, through its path socket).
    pub endpoint: Endpoint,
    /// Streams for when UDP does not answer (TCP, or the simulator's).
    pub streams: Arc<dyn StreamConnector>,
    /// The enrollment: the coordinator's key and addresses.
    pub enrollment: Enrollment,
    /// Where the agent listens (told to the coordinator).
    pub listen: SocketAddr,
    /// The node's networking, whose relay connection follows the relay the coordinator
    /// names.
    pub net: Option<crate::path::net::NodeNet>,
}

/// What a host tells the coordinator it listens on: its listen address (an unspecified one
/// the coordinator fills in with the address it sees), and each interface's address at that
/// port (LAN candidates for clients at the same site).
fn listen_addrs(listen: SocketAddr) -> Vec<SocketAddr> {
    let mut addrs = vec![listen];
    for addr in crate::path::local::local_addrs(listen, false) {
        if addrs.len() < mesh_proto::messages::control::MAX_LISTEN_ADDRS && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

/// Keeps the presence stream up until the task is dropped.
pub async fn run_presence(
    route: CoordinatorRoute,
    state: Arc<HostState>,
    revocations: Arc<Revocations>,
    audit: Arc<AuditLog>,
    jitter: Jitter,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let once = connect_once(&route, &state, &revocations, &audit);
        match once.await {
            // It was up: start the backoff over.
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => tracing::info!("coordinator unreachable: {e}"),
        }
        // Jitter (up to half the wait) so a fleet does not reconnect in lockstep after an
        // outage.
        let extra = backoff.mul_f64(jitter.fraction() / 2.0);
        tokio::time::sleep(backoff + extra).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect_once(
    route: &CoordinatorRoute,
    state: &HostState,
    revocations: &Revocations,
    audit: &AuditLog,
) -> Result<(), Error> {
    let CoordinatorRoute {
        endpoint,
        streams,
        enrollment,
        listen,
        net,
    } = route;
    let (streams, listen, net) = (&**streams, *listen, net.as_ref());
    let conn = connect_coordinator(
        endpoint,
        streams,
        enrollment.coordinator_key,
        &enrollment.coordinator_addrs,
    )
    .await?;
    let (mut send, recv) = conn.quic().open_bi().await.map_err(Error::Connection)?;
    let mut recv = FrameReader::new(recv);
    let hello = Hello {
        node: endpoint.node_id(),
        version: env!("CARGO_PKG_VERSION").into(),
        listen_addrs: listen_addrs(listen),
    };
    let sent = state.base.now();
    write_frame(&mut send, &ControlMessage::Hello(hello)).await?;
    match recv.next::<ControlMessage>().await? {
        Some(ControlMessage::Welcome(welcome)) => {
            state.measured(sent, state.base.now(), welcome.coordinator_time);
            state.apply(welcome.settings);
            tracing::info!(
                observed = %welcome.observed_addr,
                clock_offset_ms = state.offset(),
                remote_shell = welcome.settings.remote_shell,
                "connected to the coordinator"
            );
        }
        Some(ControlMessage::Failure(failure)) => return Err(Error::Refused(failure.message)),
        other => return Err(Error::Stream(format!("expected Welcome, got {other:?}"))),
    }
    // The NAT check runs beside the presence stream (now, then every minute); each verdict
    // is reported on it. The task goes with this connection.
    let (nat_tx, nat_rx) = tokio::sync::mpsc::channel(1);
    let _nat_watch = net.map(|net| {
        AbortOnDrop(tokio::spawn(watch_nat(
            net.socket.clone(),
            enrollment.coordinator_key,
            conn.quic().remote_address(),
            nat_tx,
        )))
    });
    // Spooled audit events go up on streams of their own over the same connection; if an
    // upload fails, the connection is started over (and the batch sent again).
    let relay = net.map(|net| (net, enrollment));
    let presence = presence_loop(&mut send, &mut recv, state, revocations, relay, nat_rx);
    tokio::select! {
        biased;
        result = presence => result,
        result = upload_forever(audit, &conn) => result,
    }
}

/// The presence stream after Welcome: pushes from the coordinator, and time checks.
async fn presence_loop(
    send: &mut quinn::SendStream,
    recv: &mut FrameReader<quinn::RecvStream>,
    state: &HostState,
    revocations: &Revocations,
    relay: Option<(&crate::path::net::NodeNet, &Enrollment)>,
    mut nat: tokio::sync::mpsc::Receiver<NatMapping>,
) -> Result<(), Error> {
    let mut nonce = 0u64;
    let mut asked_at = None;
    let mut checks = tokio::time::interval(TIME_CHECK);
    loop {
        tokio::select! {
            biased;
            frame = recv.next::<ControlMessage>() => match frame? {
                Some(ControlMessage::Settings(settings)) => {
                    state.apply(settings);
                    tracing::info!(?settings, "settings changed by the coordinator");
                }
                Some(ControlMessage::Revoke(revoke)) => match revocations.apply(&revoke.revocation) {
                    Ok(true) => tracing::info!("revocation received; sessions under it end"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("{e}"),
                },
                Some(ControlMessage::UseRelay(use_relay)) => {
                    if let Some((net, enrollment)) = relay {
                        let contact = relay_contact(use_relay.relay.as_ref(), enrollment);
                        if net.use_relay(contact) {
                            tracing::info!(
                                relay = ?use_relay.relay.map(|r| r.name),
                                "the coordinator names another relay"
                            );
                        }
                    }
                }
                Some(ControlMessage::Punch(rendezvous)) => {
                    if let Some((net, _)) = relay {
                        tracing::debug!(client = %rendezvous.peer.short(), "punching toward a client");
                        punch_toward_client(&net.socket, rendezvous, state.now());
                    }
                }
                Some(ControlMessage::TimeReply(reply)) => {
                    if let Some((n, sent)) = asked_at {
                        if reply.nonce == n {
                            state.measured(sent, state.base.now(), reply.coordinator_time);
                            asked_at = None;
                        }
                    }
                }
                Some(other) => tracing::debug!("ignored on the presence stream: {other:?}"),
                None => return Ok(()),
            },
            Some(verdict) = nat.recv() => {
                write_frame(send, &ControlMessage::NatReport(NatReport { nat: verdict })).await?;
            }
            _ = checks.tick() => {
                nonce += 1;
                asked_at = Some((nonce, state.base.now()));
                write_frame(send, &ControlMessage::TimeRequest(TimeRequest { nonce })).await?;
            }
        }
    }
}

/// A number in [0, 1) from the operating system's randomness (0 if it has none to give).
/// Where reconnect jitter comes from: the operating system's randomness in a real agent, a
/// seed in the simulator (whose runs must replay exactly).
#[derive(Debug)]
pub struct Jitter {
    /// splitmix64 state; `None`: draw from the operating system.
    seeded: Option<std::sync::Mutex<u64>>,
}

impl Jitter {
    /// Fresh randomness from the operating system for every draw.
    pub fn from_entropy() -> Self {
        Self { seeded: None }
    }

    /// A reproducible sequence from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seeded: Some(std::sync::Mutex::new(seed)),
        }
    }

    /// A number in `[0, 1)`.
    pub fn fraction(&self) -> f64 {
        let bits = match &self.seeded {
            Some(state) => {
                let mut state = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // splitmix64: tiny, and good enough to spread reconnects.
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) >> 32
            }
            None => {
                let mut bytes = [0u8; 4];
                if getrandom::fill(&mut bytes).is_err() {
                    return 0.0;
                }
                u64::from(u32::from_le_bytes(bytes))
            }
        };
        // `bits` < 2^32, exactly representable.
        #[allow(clippy::cast_precision_loss)]
        let bits = bits as f64;
        bits / (f64::from(u32::MAX) + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::ManualClock;

    #[test]
    fn the_corrected_clock_follows_the_coordinator() {
        let local = Arc::new(ManualClock::new(UnixTime::from_secs(1_000)));
        let state = HostState::new(local.clone());
        // Sent at 1000 s, answered at 1000.2 s; the coordinator said 4600.1 s: an hour ahead.
        state.measured(
            UnixTime::from_secs(1_000),
            UnixTime::from_millis(1_000_200),
            UnixTime::from_millis(4_600_100),
        );
        assert_eq!(state.offset(), 3_600_000);
        local.advance(Duration::from_secs(10));
        assert_eq!(state.now(), UnixTime::from_millis(4_610_000));
        // A host ahead of the coordinator corrects backwards.
        state.measured(
            UnixTime::from_secs(5_000),
            UnixTime::from_secs(5_000),
            UnixTime::from_secs(1_400),
        );
        assert_eq!(state.offset(), -3_600_000);
    }

    #[test]
    fn settings_apply() {
        let state = HostState::new(Arc::new(mesh_proto::SystemClock));
        assert!(state.remote_shell());
        state.apply(Settings {
            remote_shell: false,
            temp_users: true,
        });
        assert!(!state.remote_shell());
    }
}
