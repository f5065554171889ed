//! `mesh relay`: the relay on its own (DESIGN.md, "Relay"), for regions and scale.
//!
//! A standalone relay is enrolled like a host (its own invite, token and key; `mesh relay
//! join`). It serves [`RELAY_ALPN`] over UDP and over TLS-over-TCP on the same port, and keeps a
//! control stream to its coordinator: [`RelayHello`] with its addresses, then the coordinator
//! sends the set of keys allowed to use it ([`AllowedKeys`] pages) and sends it again whenever
//! it changes — a revoked device or a removed user drops out of the set, and its open relay
//! connections are closed at once. Each set is also kept in the relay's home, so a relay that
//! restarts while its coordinator cannot be reached still lets in the hosts and clients it
//! served (their sessions resume), and no one else; with no set ever received, nobody is let
//! in: the relay fails closed.
//!
//! Clients never trust the relay on first use: the coordinator names it, with its key, in
//! [`UseRelay`](mesh_proto::messages::control::UseRelay), and they pin that key.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_node::control::{Enrollment, connect_coordinator};
use mesh_node::endpoint::Endpoint;
use mesh_node::error::Error;
use mesh_node::framed::{FrameReader, write_frame};
use mesh_node::path::dial::{StreamAcceptor, StreamConnector};
use mesh_node::path::stream::StreamServerSocket;
use mesh_node::path::tls_stream::serve_streams;
use mesh_proto::messages::RELAY_ALPN;
use mesh_proto::messages::control::{AllowedKeys as AllowedPage, ControlMessage, RelayHello};
use mesh_proto::{NodeId, SecretKey};

use crate::relay::{AllowedKeys, RelayLimits, RelayServer};

/// The file, in a relay's home, that keeps the last allowed set: one key per line.
pub const ALLOWED_FILE: &str = "relay-allowed-keys";

/// The set kept at `path` (empty if there is none). A damaged file is refused with the line
/// that is wrong: the relay must not start on a set it cannot read.
pub fn load_allowed(path: &Path) -> Result<BTreeSet<NodeId>, Error> {
    let Some(text) = mesh_node::durable::read_if_exists(path)? else {
        return Ok(BTreeSet::new());
    };
    let mut keys = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        if keys.len() >= MAX_ALLOWED {
            return Err(Error::Refused(format!(
                "{} holds more than {MAX_ALLOWED} keys; remove it to start afresh",
                path.display()
            )));
        }
        let key = line.trim().parse::<NodeId>().map_err(|e| {
            Error::Refused(format!(
                "{} line {}: {e}; remove the file to start afresh (the coordinator sends \
                 the set again)",
                path.display(),
                n + 1
            ))
        })?;
        keys.insert(key);
    }
    Ok(keys)
}

/// Keeps `keys` at `path`, replacing the file whole (a crash leaves the old set or the new).
pub fn save_allowed(path: &Path, keys: &BTreeSet<NodeId>) -> Result<(), Error> {
    let mut text = String::with_capacity(keys.len() * 53);
    for key in keys {
        text.push_str(&key.to_string());
        text.push('\n');
    }
    mesh_node::durable::replace_file(path, 0o600, text.as_bytes())
}

/// First wait before reconnecting to the coordinator; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most keys a relay accepts in one set (pages beyond it are refused): a bound on memory
/// whatever the coordinator sends.
const MAX_ALLOWED: usize = 1 << 20;

/// What a standalone relay runs with.
#[derive(Debug)]
pub struct RelayParts {
    /// Its key.
    pub key: SecretKey,
    /// Its enrollment: the coordinator's key and addresses.
    pub enrollment: Enrollment,
    /// Its UDP endpoint (accepting [`RELAY_ALPN`]).
    pub endpoint: Endpoint,
    /// Where it listens (told to the coordinator, which tells nodes).
    pub listen_addrs: Vec<SocketAddr>,
    /// How the control stream reaches the coordinator when UDP does not.
    pub streams: Arc<dyn StreamConnector>,
    /// Where the last allowed set is kept between runs (none: memory only).
    pub allowed_file: Option<PathBuf>,
}

/// Runs the relay until `shutdown` completes: relay connections on `parts.endpoint` and, with
/// `tcp`, on TLS-over-TCP streams accepted there; the control stream to the coordinator beside.
pub async fn run(
    parts: RelayParts,
    tcp: Option<impl StreamAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_with(parts, tcp, shutdown, |_| {}).await
}

/// [`run`], handing `started` the relay server once it serves (for its counters).
pub async fn run_with(
    parts: RelayParts,
    tcp: Option<impl StreamAcceptor>,
    shutdown: impl Future<Output = ()>,
    started: impl FnOnce(Arc<RelayServer>),
) -> Result<(), Error> {
    let relay = RelayServer::new(RelayLimits::default());
    let allowed = Arc::new(AllowedKeys::default());
    if let Some(path) = &parts.allowed_file {
        let kept = load_allowed(path)?;
        if !kept.is_empty() {
            tracing::info!(
                keys = kept.len(),
                "allowed keys from the last run, until the coordinator answers"
            );
        }
        allowed.replace(kept);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(relay.clone().serve(
        parts.endpoint.clone(),
        allowed.clone(),
        until_stopped(stopped.clone()),
    ));
    if let Some(acceptor) = tcp {
        let local = parts.endpoint.local_addr().map_err(|source| Error::Io {
            what: "the relay's endpoint has no address",
            path: PathBuf::new(),
            source,
        })?;
        let socket = StreamServerSocket::new(local);
        let over_streams = Endpoint::with_options(
            parts.key.clone(),
            socket.clone(),
            &[RELAY_ALPN],
            crate::server::endpoint_options(),
        )?;
        let accepting = serve_streams(
            acceptor,
            parts.key.clone(),
            socket,
            until_stopped(stopped.clone()),
        );
        tasks.spawn(async move {
            if let Err(e) = accepting.await {
                tracing::warn!("streams are not served: {e}");
            }
        });
        tasks.spawn(relay.clone().serve(
            over_streams,
            allowed.clone(),
            until_stopped(stopped.clone()),
        ));
    }
    started(relay.clone());
    let control = keep_control(parts, relay.clone(), allowed);
    tokio::select! {
        biased;
        () = control => {}
        () = shutdown => {}
    }
    stop.send_replace(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Keeps the control stream to the coordinator up, applying every allowed-key set it sends.
async fn keep_control(parts: RelayParts, relay: Arc<RelayServer>, allowed: Arc<AllowedKeys>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match control_once(&parts, &relay, &allowed).await {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => tracing::info!("coordinator unreachable: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn control_once(
    parts: &RelayParts,
    relay: &RelayServer,
    allowed: &AllowedKeys,
) -> Result<(), Error> {
    let conn = connect_coordinator(
        &parts.endpoint,
        &*parts.streams,
        parts.enrollment.coordinator_key,
        &parts.enrollment.coordinator_addrs,
    )
    .await?;
    let (mut send, recv) = conn.quic().open_bi().await.map_err(Error::Connection)?;
    let hello = ControlMessage::RelayHello(RelayHello {
        version: env!("CARGO_PKG_VERSION").into(),
        listen_addrs: parts.listen_addrs.clone(),
    });
    write_frame(&mut send, &hello).await?;
    let mut recv = FrameReader::new(recv);
    let mut pending: BTreeSet<NodeId> = BTreeSet::new();
    let mut first = true;
    loop {
        match recv.next::<ControlMessage>().await? {
            Some(ControlMessage::AllowedKeys(AllowedPage { keys, last })) => {
                if pending.len() + keys.len() > MAX_ALLOWED {
                    return Err(Error::Refused(format!(
                        "the coordinator sent more than {MAX_ALLOWED} allowed keys"
                    )));
                }
                pending.extend(keys);
                if last {
                    let set = std::mem::take(&mut pending);
                    let count = set.len();
                    if let Some(path) = &parts.allowed_file {
                        // Kept for a restart without the coordinator; failing to keep it
                        // must not stop the relay from applying it.
                        if let Err(e) = save_allowed(path, &set) {
                            tracing::warn!("cannot keep the allowed keys: {e}");
                        }
                    }
                    let closed = relay.disconnect_unless(|key| set.contains(&key));
                    allowed.replace(set);
                    if first {
                        tracing::info!(keys = count, "connected to the coordinator");
                        first = false;
                    } else {
                        tracing::info!(keys = count, closed, "allowed keys updated");
                    }
                }
            }
            Some(ControlMessage::Failure(failure)) => return Err(Error::Refused(failure.message)),
            Some(other) => tracing::debug!("ignored a control message: {other:?}"),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_round_trips_and_a_damaged_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ALLOWED_FILE);
        assert!(load_allowed(&path).unwrap().is_empty(), "no file: nobody");
        let keys: BTreeSet<NodeId> = (1..=3u8)
            .map(|n| SecretKey::from_seed(&[n; 32]).node_id())
            .collect();
        save_allowed(&path, &keys).unwrap();
        assert_eq!(load_allowed(&path).unwrap(), keys);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not-a-key\n");
        std::fs::write(&path, text).unwrap();
        let refused = load_allowed(&path).unwrap_err().to_string();
        assert!(refused.contains("line 4"), "{refused}");
    }
}
