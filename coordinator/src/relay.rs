//! The relay (issue 8, first part): forwards opaque packets between two authenticated keys
//! that may use it, never holding a session key.
//!
//! Peers connect to the relay over QUIC (ALPN `mesh/relay/1`; TLS with node keys, so the relay
//! knows who each peer is without trusting anything it says) and exchange relay messages as
//! QUIC datagrams: a peer sends [`relay::Send`] `{to, packet}`, the relay delivers
//! [`Deliver`] `{from, packet}` to `to`'s connection, with `from` taken from the TLS-proven
//! key. The packets are the peers' own QUIC packets, encrypted end to end; the relay sees who
//! talks to whom and how much. A destination not connected gets the sender one
//! [`Unreachable`] (at most once a second per destination, so it cannot be used to amplify).
//!
//! Who may use the relay is a [`RelayPolicy`]; each key's traffic goes through a byte budget
//! ([`TokenBucket`]): a peer that sends faster loses packets, not the relay's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh_node::endpoint::{Connection, Endpoint};
use mesh_proto::NodeId;
use mesh_proto::codec::{decode_exact, encode_frame};
use mesh_proto::messages::relay::{self, Deliver, RelayMessage, Unreachable};
use tokio::time::Instant;

/// How often the relay tells a sender that one destination is unreachable.
const UNREACHABLE_EVERY: Duration = Duration::from_secs(1);
/// What each packet costs from its sender's budget beyond its bytes: forwarding has a price
/// per packet, so a flood of tiny packets is limited too.
const PACKET_COST: usize = 64;
/// Most relay connections one key may hold (each process of a device has its own).
const MAX_CONNECTIONS_PER_KEY: usize = 16;

/// Who may use the relay.
pub trait RelayPolicy: std::fmt::Debug + Send + Sync + 'static {
    /// Whether `key` may connect and send.
    fn allowed(&self, key: NodeId) -> impl Future<Output = bool> + Send;
}

/// A fixed set of keys (tests, and a standalone relay's list until it hears the coordinator).
#[derive(Debug, Default)]
pub struct AllowedKeys(pub Mutex<std::collections::BTreeSet<NodeId>>);

impl AllowedKeys {
    /// Replaces the set.
    pub fn replace(&self, keys: std::collections::BTreeSet<NodeId>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    /// Whether `key` is in the set now.
    pub fn contains(&self, key: NodeId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key)
    }
}

impl RelayPolicy for AllowedKeys {
    async fn allowed(&self, key: NodeId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key)
    }
}

/// Each key's byte budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayLimits {
    /// Sustained bytes per second per key.
    pub bytes_per_sec: u64,
    /// Bytes a key may send in one burst.
    pub burst: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        // Enough for an interactive shell and a brisk copy; a relay serves many peers.
        Self {
            bytes_per_sec: 2_000_000,
            burst: 1_000_000,
        }
    }
}

/// A byte budget that refills at a steady rate: a plain state machine taking `now`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limits: RelayLimits,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limits: RelayLimits, now: Instant) -> Self {
        Self {
            limits,
            // Byte counts far below 2^53 are exact in an f64.
            #[allow(clippy::cast_precision_loss)]
            tokens: limits.burst as f64,
            last: now,
        }
    }

    /// Takes `bytes` from the budget at `now` if they are there.
    #[allow(clippy::cast_precision_loss)]
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.limits.bytes_per_sec as f64)
            .min(self.limits.burst as f64);
        let wanted = bytes as f64;
        if self.tokens >= wanted {
            self.tokens -= wanted;
            true
        } else {
            false
        }
    }
}

/// What the relay counted.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Packets forwarded.
    pub forwarded: AtomicU64,
    /// Bytes forwarded (the peers' packets, without framing).
    pub forwarded_bytes: AtomicU64,
    /// Packets for a destination not connected.
    pub unreachable: AtomicU64,
    /// Packets over a key's budget.
    pub over_limit: AtomicU64,
    /// Datagrams that were not a relay message a peer may send.
    pub malformed: AtomicU64,
    /// Connections refused (the key may not use the relay).
    pub refused: AtomicU64,
}

struct Peer {
    conn: quinn::Connection,
    /// Distinguishes this connection from others of the same key.
    id: u64,
    /// The process's instance, once it has sent something.
    instance: Option<u64>,
}

/// The relay server: the peers connected to it and what it counted. Who may connect is
/// decided before a connection reaches it ([`serve`](Self::serve) asks a [`RelayPolicy`]; the
/// coordinator asks its store).
#[derive(Debug)]
pub struct RelayServer {
    limits: RelayLimits,
    peers: Mutex<HashMap<NodeId, Vec<Peer>>>,
    /// Each key's byte budget, shared by all its connections.
    budgets: Mutex<HashMap<NodeId, TokenBucket>>,
    next_id: AtomicU64,
    counters: RelayCounters,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).finish()
    }
}

impl RelayServer {
    /// A relay holding each key within `limits`.
    pub fn new(limits: RelayLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            peers: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: RelayCounters::default(),
        })
    }

    /// What it counted so far.
    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Vec<Peer>>> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves relay connections on `endpoint` until `shutdown` completes, letting in the keys
    /// `policy` allows (a standalone relay).
    pub async fn serve<P: RelayPolicy>(
        self: Arc<Self>,
        endpoint: Endpoint,
        policy: Arc<P>,
        shutdown: impl Future<Output = ()>,
    ) {
        endpoint
            .accept_until(shutdown, |conn| {
                let (relay, policy) = (self.clone(), policy.clone());
                async move {
                    if policy.allowed(conn.peer()).await {
                        relay.serve_peer(conn).await;
                    } else {
                        relay.refuse(&conn);
                    }
                }
            })
            .await;
        endpoint.close_and_flush(Duration::from_secs(1)).await;
    }

    /// Closes every connection of a key `allowed` no longer admits (a revoked device, a
    /// removed user); returns how many.
    pub fn disconnect_unless(&self, allowed: impl Fn(NodeId) -> bool) -> usize {
        let mut peers = self.lock();
        let gone: Vec<NodeId> = peers.keys().filter(|k| !allowed(**k)).copied().collect();
        let mut closed = 0;
        for key in gone {
            for peer in peers.remove(&key).unwrap_or_default() {
                peer.conn
                    .close(2u32.into(), b"this key may no longer use the relay");
                closed += 1;
            }
        }
        closed
    }

    /// How many connections are up now.
    pub fn connections(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Closes the connection of a key that may not use the relay, and counts it.
    pub fn refuse(&self, conn: &Connection) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        conn.quic()
            .close(1u32.into(), b"this key may not use the relay");
    }

    /// Serves one admitted peer's connection until it ends. One key may hold several
    /// connections at once (each process of a device has its own); each says its instance
    /// in every `Send`.
    pub async fn serve_peer(self: Arc<Self>, conn: Connection) {
        let key = conn.peer();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let quic = conn.quic().clone();
        {
            let mut peers = self.lock();
            let conns = peers.entry(key).or_default();
            if conns.len() >= MAX_CONNECTIONS_PER_KEY {
                drop(peers);
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                quic.close(3u32.into(), b"too many relay connections for this key");
                return;
            }
            conns.push(Peer {
                conn: quic.clone(),
                id,
                instance: None,
            });
        }
        tracing::debug!(peer = %key.short(), "relay peer connected");
        let mut told_unreachable: HashMap<NodeId, Instant> = HashMap::new();
        while let Ok(datagram) = quic.read_datagram().await {
            self.handle(key, id, &quic, &datagram, &mut told_unreachable);
        }
        let mut peers = self.lock();
        if let Some(conns) = peers.get_mut(&key) {
            conns.retain(|p| p.id != id);
            if conns.is_empty() {
                peers.remove(&key);
                // The key's budget goes with its last connection.
                self.budgets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&key);
            }
        }
    }

    /// Takes `bytes` (and the per-packet cost) from `key`'s budget.
    fn charge(&self, key: NodeId, bytes: usize, now: Instant) -> bool {
        let mut budgets = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        budgets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(self.limits, now))
            .take(bytes.saturating_add(PACKET_COST), now)
    }

    /// The connection for `to`'s process `instance`, or `to`'s latest connection.
    fn target(&self, to: NodeId, instance: Option<u64>) -> Option<quinn::Connection> {
        let peers = self.lock();
        let conns = peers.get(&to)?;
        // Newest first: after a reconnect, the process's new connection, not its dead one.
        match instance {
            Some(instance) => conns.iter().rev().find(|p| p.instance == Some(instance)),
            None => conns.last(),
        }
        .map(|p| p.conn.clone())
    }

    fn handle(
        &self,
        from: NodeId,
        conn_id: u64,
        from_conn: &quinn::Connection,
        datagram: &[u8],
        told_unreachable: &mut HashMap<NodeId, Instant>,
    ) {
        let Ok(RelayMessage::Send(relay::Send {
            to,
            to_instance,
            from_instance,
            packet,
        })) = decode_exact::<RelayMessage>(datagram)
        else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A QUIC packet is never empty: an empty one only costs the relay work.
        if packet.is_empty() {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The connection's instance, as its process says (it only routes replies).
        if let Some(me) = self
            .lock()
            .get_mut(&from)
            .and_then(|conns| conns.iter_mut().find(|p| p.id == conn_id))
        {
            me.instance = Some(from_instance);
        }
        let now = Instant::now();
        if !self.charge(from, packet.len(), now) {
            self.counters.over_limit.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(target) = self.target(to, to_instance) else {
            self.counters.unreachable.fetch_add(1, Ordering::Relaxed);
            let due = told_unreachable
                .get(&to)
                .is_none_or(|last| now.saturating_duration_since(*last) >= UNREACHABLE_EVERY);
            if due {
                told_unreachable.insert(to, now);
                if told_unreachable.len() > 1024 {
                    told_unreachable
                        .retain(|_, t| now.saturating_duration_since(*t) < UNREACHABLE_EVERY);
                }
                let reply = RelayMessage::Unreachable(Unreachable { peer: to });
                if let Ok(bytes) = encode_frame(&reply) {
                    let _ = from_conn.send_datagram(bytes.into());
                }
            }
            return;
        };
        let len = packet.len();
        let deliver = RelayMessage::Deliver(Deliver {
            from,
            from_instance,
            packet,
        });
        let sent =
            encode_frame(&deliver).is_ok_and(|bytes| target.send_datagram(bytes.into()).is_ok());
        if sent {
            self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            self.counters
                .forwarded_bytes
                .fetch_add(u64::try_from(len).unwrap_or(u64::MAX), Ordering::Relaxed);
        } else {
            // A full or closed destination loses the packet, as a router's queue would.
            self.counters.unreachable.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let limits = RelayLimits {
            bytes_per_sec: 1000,
            burst: 1500,
        };
        let mut bucket = TokenBucket::new(limits, t0);
        assert!(bucket.take(1500, t0));
        assert!(!bucket.take(1, t0));
        assert!(
            !bucket.take(600, t0 + Duration::from_millis(500)),
            "500 B back, not 600"
        );
        assert!(bucket.take(500, t0 + Duration::from_millis(500)));
        // Idle for a minute: only the burst comes back.
        assert!(!bucket.take(1501, t0 + Duration::from_secs(60)));
        assert!(bucket.take(1500, t0 + Duration::from_secs(60)));
    }
}
