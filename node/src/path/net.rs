//! A node's networking as one piece: the path socket on the primary socket, the QUIC endpoint
//! on top of it, and a task keeping a connection to the relay up (reconnecting with backoff),
//! so agents, clients and the simulator start the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::messages::RELAY_ALPN;
use mesh_proto::socket::{DatagramSocket, SocketBinder};
use mesh_proto::{Clock, NodeId, SecretKey};

use super::dial::{StreamConnector, connect_quic};
use super::relay_client::{RELAY_INITIAL_MTU, RelayClient};
use super::socket::PathSocket;
use crate::agent::presence::Jitter;
use crate::endpoint::{Endpoint, EndpointOptions};
use crate::error::Error;

/// The first wait before reconnecting to the relay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between relay connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A relay connection that lasted this long was working: when it closes, reconnect at once.
const STABLE_RELAY: Duration = Duration::from_secs(5);
/// How long one attempt to reach the relay may take: UDP's head start and a TCP connection
/// with its TLS and QUIC handshakes fit in it.
const RELAY_ATTEMPT: Duration = Duration::from_secs(8);

/// Where a relay is: its key and the addresses to try (`host:port` or `ip:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayContact {
    /// The relay's key (pinned: learned from the coordinator, never from the relay).
    pub key: NodeId,
    /// Its addresses.
    pub addrs: Vec<String>,
}

/// A node's path socket and endpoint.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// The path socket.
    pub socket: Arc<PathSocket>,
    /// The QUIC endpoint on it.
    pub endpoint: Endpoint,
    /// Which relay the relay task keeps a connection to (none without a relay).
    relay_target: Option<Arc<tokio::sync::watch::Sender<RelayContact>>>,
}

/// How to start a node's networking beyond its key and sockets.
#[derive(Debug)]
pub struct NetOptions {
    /// Protocols the endpoint accepts (none for a client).
    pub accept_alpns: Vec<&'static [u8]>,
    /// The relay to keep a connection to, if any.
    pub relay: Option<RelayContact>,
    /// quinn's randomness from a seed, and the path socket's instance from it too
    /// (simulation only).
    pub seed: Option<[u8; 32]>,
    /// Reconnect jitter.
    pub jitter: Jitter,
    /// How the relay is reached when UDP does not answer (TCP, or the simulator's streams).
    pub streams: Arc<dyn StreamConnector>,
}

impl NodeNet {
    /// Starts the path socket on `primary`, the endpoint on it, and (with a relay) the task that
    /// keeps a relay connection up on sockets from `binder`. Call inside a tokio runtime.
    pub fn start(
        key: SecretKey,
        primary: Arc<dyn DatagramSocket>,
        binder: Arc<dyn SocketBinder + Send + Sync>,
        clock: Arc<dyn Clock>,
        options: NetOptions,
    ) -> Result<Self, Error> {
        let socket = match options.seed {
            Some(seed) => {
                let mut instance = [0u8; 8];
                instance.copy_from_slice(&seed[..8]);
                PathSocket::with_instance(key.clone(), primary, clock, u64::from_le_bytes(instance))
            }
            None => PathSocket::new(key.clone(), primary, clock),
        };
        let endpoint = Endpoint::with_options(
            key.clone(),
            socket.clone(),
            &options.accept_alpns,
            EndpointOptions {
                seed: options.seed,
                // What it accepts comes through this path socket (see `endpoint::Mtu::Peer`).
                accepts_peers: true,
                // An agent's one endpoint: its restarts reset stale connections (a client's
                // keys stay random).
                restart_keys: (!options.accept_alpns.is_empty()).then_some("agent"),
                ..EndpointOptions::default()
            },
        )?;
        // Birthday probing opens its extra sockets where the relay's come from.
        socket.set_binder(binder.clone());
        tokio::spawn(socket.clone().drive());
        let relay_target = options.relay.map(|relay| {
            let (target, watched) = tokio::sync::watch::channel(relay);
            tokio::spawn(keep_relay(
                Arc::downgrade(&socket),
                key,
                binder,
                options.streams,
                watched,
                options.seed,
                options.jitter,
            ));
            Arc::new(target)
        });
        Ok(Self {
            socket,
            endpoint,
            relay_target,
        })
    }

    /// Whether this node keeps a relay connection at all.
    pub fn has_relay(&self) -> bool {
        self.relay_target.is_some()
    }

    /// Moves the relay connection to `relay` (the coordinator named another): the current one
    /// is closed and the new one made at once. Returns whether anything changed; a node
    /// started without a relay ignores it.
    pub fn use_relay(&self, relay: RelayContact) -> bool {
        let Some(target) = &self.relay_target else {
            return false;
        };
        let changed = target.send_if_modified(|current| {
            if *current == relay {
                false
            } else {
                *current = relay;
                true
            }
        });
        if changed {
            // Until the new relay is up, `wait_for_relay` must wait for it, not the old one.
            self.socket.clear_relay();
        }
        changed
    }
}

/// Keeps a relay connection up for `socket` until it is dropped.
async fn keep_relay(
    socket: std::sync::Weak<PathSocket>,
    key: SecretKey,
    binder: Arc<dyn SocketBinder + Send + Sync>,
    streams: Arc<dyn StreamConnector>,
    mut target: tokio::sync::watch::Receiver<RelayContact>,
    seed: Option<[u8; 32]>,
    jitter: Jitter,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u8 = 0;
    loop {
        if socket.upgrade().is_none_or(|s| s.is_dead()) {
            return;
        }
        attempt = attempt.wrapping_add(1);
        let relay = target.borrow_and_update().clone();
        let connecting = connect_relay(
            &key,
            &binder,
            &*streams,
            &relay,
            seed.map(|mut s| {
                // Each attempt's endpoint gets its own randomness, reproducibly.
                s[0] ^= attempt;
                s
            }),
        );
        let connected = tokio::select! {
            biased;
            connected = connecting => connected,
            // Told to use another relay: drop this attempt and start on that one.
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                backoff = FIRST_BACKOFF;
                continue;
            }
        };
        match connected {
            Ok(client) => {
                let Some(live) = socket.upgrade() else {
                    client.close();
                    return;
                };
                live.set_relay(client.clone());
                let mut lifetime = live.lifetime();
                drop(live);
                backoff = FIRST_BACKOFF;
                let up_since = tokio::time::Instant::now();
                tokio::select! {
                    biased;
                    () = client.closed() => {}
                    // The process is done with the socket (a finished `mesh exec`, a simulated
                    // client): the relay connection goes with it.
                    () = until_closed(&mut lifetime) => {
                        client.close();
                        return;
                    }
                    changed = target.changed() => {
                        client.close();
                        if let Some(live) = socket.upgrade() {
                            live.clear_relay();
                        }
                        if changed.is_err() {
                            return;
                        }
                        tracing::info!("moving to another relay");
                        continue;
                    }
                }
                if let Some(live) = socket.upgrade() {
                    live.clear_relay();
                }
                tracing::info!("the relay connection closed; reconnecting");
                // A connection that served a while and closed (the relay restarted and reset
                // it) is retried at once: sessions on the relay are waiting. One that closed
                // straight away waits out the backoff, so a relay that keeps refusing is not
                // hammered.
                if up_since.elapsed() >= STABLE_RELAY {
                    continue;
                }
            }
            Err(e) => tracing::info!("relay unreachable: {e}"),
        }
        let extra = backoff.mul_f64(jitter.fraction() / 2.0);
        tokio::select! {
            biased;
            () = tokio::time::sleep(backoff + extra) => {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // Another relay: try it at once.
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                backoff = FIRST_BACKOFF;
            }
        }
    }
}

/// Completes when the watched socket is dropped.
async fn until_closed(lifetime: &mut tokio::sync::watch::Receiver<bool>) {
    while lifetime.changed().await.is_ok() {}
}

async fn connect_relay(
    key: &SecretKey,
    binder: &Arc<dyn SocketBinder + Send + Sync>,
    streams: &dyn StreamConnector,
    relay: &RelayContact,
    seed: Option<[u8; 32]>,
) -> Result<RelayClient, Error> {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let socket = binder.bind(unspecified).map_err(|source| Error::Io {
        what: "cannot open a UDP socket for the relay",
        path: std::path::PathBuf::new(),
        source,
    })?;
    let options = EndpointOptions {
        seed,
        initial_mtu: RELAY_INITIAL_MTU,
        ..EndpointOptions::default()
    };
    let endpoint = Endpoint::with_options(key.clone(), socket, &[], options)?;
    let mut last = Error::Refused("the relay has no address".into());
    for addr in &relay.addrs {
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(addr.as_str()).await {
            Ok(found) => found.collect(),
            Err(e) => {
                last = Error::Refused(format!("cannot resolve the relay {addr}: {e}"));
                continue;
            }
        };
        for socket_addr in resolved {
            let connecting = async {
                let conn = connect_quic(
                    &endpoint,
                    streams,
                    key,
                    socket_addr,
                    relay.key,
                    RELAY_ALPN,
                    options,
                )
                .await?;
                Ok::<_, Error>(RelayClient::from_connection(conn))
            };
            match tokio::time::timeout(RELAY_ATTEMPT, connecting).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Refused(format!("no answer from the relay at {addr}")),
            }
        }
    }
    Err(last)
}
