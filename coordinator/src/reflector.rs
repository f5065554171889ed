//! NAT checks (DESIGN.md, "Rendezvous"): the coordinator answers a signed ping addressed to its
//! key with a pong carrying the address the ping came from, on its main UDP port (beside
//! QUIC, which never starts a packet with a zero byte) and on its check port
//! ([`mesh_proto::nat::check_port`]). A node pings both from one socket and compares the two
//! addresses ([`mesh_proto::nat::classify`]).
//!
//! A pong is a few dozen bytes more than its ping and goes only to the ping's source; a ping
//! must be signed by an enrolled-looking key and fresh (within the probe window), and budgets
//! bound the work: [`CHECKS_PER_SEC`] signature checks and [`ANSWERS_PER_SEC`] answers a
//! second. A flood of junk can use up the first and leave nodes' NAT checks `unknown` for a
//! while (they then punch with their candidates only), never the coordinator's CPU.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use mesh_proto::probe::{PROBE_WINDOW, Probe, ProbeKind, is_probe};
use mesh_proto::socket::DatagramSocket;
use mesh_proto::{Clock, SecretKey};
use tokio::time::Instant;

use crate::relay::{RelayLimits, TokenBucket};

/// Pongs per second, sustained (every host checks once a minute; a client once a command).
pub const ANSWERS_PER_SEC: u64 = 2000;
/// Pongs in one burst.
pub const ANSWER_BURST: u64 = 4000;
/// Signature checks per second, sustained (about half a core), and in one burst: pings that
/// fail the check cost this budget and not [`ANSWERS_PER_SEC`].
pub const CHECKS_PER_SEC: u64 = 10_000;
/// Signature checks in one burst.
pub const CHECK_BURST: u64 = 20_000;

/// Answers NAT-check pings as the coordinator's key.
#[derive(Debug)]
pub struct Reflector {
    key: SecretKey,
    clock: Arc<dyn Clock>,
    checks: Mutex<TokenBucket>,
    budget: Mutex<TokenBucket>,
}

impl Reflector {
    /// A reflector answering as `key`, stamping pongs with `clock`.
    pub fn new(key: SecretKey, clock: Arc<dyn Clock>) -> Arc<Self> {
        let limits = RelayLimits {
            bytes_per_sec: ANSWERS_PER_SEC,
            burst: ANSWER_BURST,
        };
        let check_limits = RelayLimits {
            bytes_per_sec: CHECKS_PER_SEC,
            burst: CHECK_BURST,
        };
        Arc::new(Self {
            key,
            clock,
            checks: Mutex::new(TokenBucket::new(check_limits, Instant::now())),
            budget: Mutex::new(TokenBucket::new(limits, Instant::now())),
        })
    }

    /// The pong for `datagram` from `from`, if it is a fresh ping for us with a valid
    /// signature and the budgets allow.
    pub fn answer(&self, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let take = |bucket: &Mutex<TokenBucket>| {
            bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(1, Instant::now())
        };
        if !take(&self.checks) {
            return None;
        }
        let ping = Probe::open(datagram, self.key.node_id()).ok()?;
        let now = self.clock.now();
        let fresh = ping
            .sent_at
            .duration_since(now)
            .or_else(|| now.duration_since(ping.sent_at))
            .is_some_and(|apart| apart <= PROBE_WINDOW);
        if ping.kind != ProbeKind::Ping || !fresh || !take(&self.budget) {
            return None;
        }
        let pong = Probe {
            kind: ProbeKind::Pong { echo: ping.nonce },
            sender: self.key.node_id(),
            sender_instance: 0,
            receiver: ping.sender,
            // Pongs need unique nonces only for the node's replay guard: the ping's is unique.
            nonce: ping.nonce,
            sent_at: self.clock.now(),
            observed: Some(from),
        };
        Some(pong.seal(&self.key))
    }

    /// Answers `datagram` from `from` on `socket`, if it is a ping to answer (a lost answer
    /// is a lost ping: the node asks again).
    pub fn reflect(&self, socket: &dyn DatagramSocket, datagram: &[u8], from: SocketAddr) {
        if let Some(pong) = self.answer(datagram, from) {
            let _ = socket.try_send_to(&pong, from);
        }
    }
}

/// The coordinator's main socket with NAT-check pings answered underneath: quinn sees
/// everything else.
#[derive(Debug)]
pub struct ReflectingSocket {
    inner: Arc<dyn DatagramSocket>,
    reflector: Arc<Reflector>,
}

impl ReflectingSocket {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn DatagramSocket>, reflector: Arc<Reflector>) -> Arc<Self> {
        Arc::new(Self { inner, reflector })
    }
}

impl DatagramSocket for ReflectingSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        self.inner.try_send_to(datagram, to)
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_send_ready(cx)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        // A bounded number per call, so a flood of pings cannot starve QUIC.
        for _ in 0..64 {
            let (len, from) = match self.inner.poll_recv_from(cx, buf) {
                Poll::Ready(Ok(got)) => got,
                other => return other,
            };
            if !is_probe(&buf[..len]) {
                return Poll::Ready(Ok((len, from)));
            }
            self.reflector.reflect(&*self.inner, &buf[..len], from);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Answers NAT-check pings on the check port's `socket` until `shutdown` completes.
pub async fn serve_check_port(
    socket: Arc<dyn DatagramSocket>,
    reflector: Arc<Reflector>,
    shutdown: impl Future<Output = ()>,
) {
    let mut buf = vec![0u8; 2048];
    let serving = async {
        loop {
            let got = std::future::poll_fn(|cx| socket.poll_recv_from(cx, &mut buf)).await;
            match got {
                Ok((len, from)) => reflector.reflect(&*socket, &buf[..len], from),
                // An ICMP error surfacing on the socket: keep serving.
                Err(e) if e.kind() != io::ErrorKind::NotConnected => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = serving => {}
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::SystemClock;

    /// A coordinator's reflector, a node's key, and a ping from the node to the coordinator.
    fn setup() -> (Arc<Reflector>, SecretKey, SecretKey, Probe) {
        let coordinator = SecretKey::from_seed(&[1; 32]);
        let node = SecretKey::from_seed(&[2; 32]);
        let reflector = Reflector::new(coordinator.clone(), Arc::new(SystemClock));
        let ping = Probe {
            kind: ProbeKind::Ping,
            sender: node.node_id(),
            sender_instance: 5,
            receiver: coordinator.node_id(),
            nonce: [7; 16],
            sent_at: SystemClock.now(),
            observed: None,
        };
        (reflector, coordinator, node, ping)
    }

    #[tokio::test]
    async fn a_ping_for_us_gets_a_pong_with_its_source_and_anything_else_nothing() {
        let (reflector, coordinator, node, ping) = setup();
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        let pong = reflector.answer(&ping.seal(&node), from).expect("a pong");
        let pong = Probe::open(&pong, node.node_id()).expect("signed by the coordinator");
        assert_eq!(pong.kind, ProbeKind::Pong { echo: [7; 16] });
        assert_eq!(pong.observed, Some(from));
        assert_eq!(pong.sender, coordinator.node_id());
        // Not for us, forged, or a pong: no answer.
        let other = SecretKey::from_seed(&[3; 32]);
        let elsewhere = Probe {
            receiver: other.node_id(),
            ..ping.clone()
        };
        assert!(reflector.answer(&elsewhere.seal(&node), from).is_none());
        assert!(reflector.answer(&ping.seal(&other), from).is_none());
        let pong_in = Probe {
            kind: ProbeKind::Pong { echo: [1; 16] },
            ..ping.clone()
        };
        assert!(reflector.answer(&pong_in.seal(&node), from).is_none());
        // A recorded ping an hour old: no answer.
        let stale = Probe {
            sent_at: SystemClock
                .now()
                .saturating_sub(std::time::Duration::from_secs(3600)),
            ..ping.clone()
        };
        assert!(reflector.answer(&stale.seal(&node), from).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_answers() {
        let (reflector, _, node, ping) = setup();
        let ping = ping.seal(&node);
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        let answered = (0..ANSWER_BURST + 100)
            .filter(|_| reflector.answer(&ping, from).is_some())
            .count();
        assert_eq!(answered as u64, ANSWER_BURST);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(reflector.answer(&ping, from).is_some(), "refilled");
    }

    #[tokio::test(start_paused = true)]
    async fn forged_pings_do_not_use_up_the_answers() {
        let (reflector, _, node, ping) = setup();
        let forger = SecretKey::from_seed(&[9; 32]);
        let forged = ping.seal(&forger);
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        for _ in 0..ANSWER_BURST * 2 {
            assert!(reflector.answer(&forged, from).is_none());
        }
        assert!(
            reflector.answer(&ping.seal(&node), from).is_some(),
            "a genuine ping is still answered"
        );
    }
}
