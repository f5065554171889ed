//! The node side of a rendezvous (DESIGN.md, "Rendezvous"): a node learns how its NAT maps
//! (the path socket's NAT check against the coordinator), a client offers its candidates with
//! its request, and both sides punch from the start time the coordinator set — the host when
//! the `Punch` push arrives on its presence stream, the client when the reply names it.
//!
//! A client keeps its session's path direct ([`keep_direct`]): when a direct path to the host
//! fails (the client moved, its NAT forgot the mapping), the session goes on over the relay
//! while the client asks the coordinator for another rendezvous — checking its NAT again, so
//! the host learns where it is now — with backoff until a direct path is back.
//!
//! Start times are in the coordinator's clock. A host converts with its corrected clock; a
//! client, which keeps none, with the reply's own timestamp and the connection's round trip
//! (the reply was stamped about half a round trip ago).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::NodeId;
use mesh_proto::UnixTime;
use mesh_proto::messages::control::{
    ContactRequest, ControlMessage, HostContact, PunchOffer, Rendezvous,
};
use mesh_proto::nat::NatMapping;
use tokio::time::Instant;

use crate::control::{Enrollment, connect_coordinator, request};
use crate::endpoint::Connection;
use crate::error::Error;
use crate::path::dial::StreamConnector;
use crate::path::local::local_addrs;
use crate::path::net::NodeNet;
use crate::path::socket::{PathSocket, PunchTarget};
use crate::path::stream::is_stream_addr;

/// How long a client waits for its NAT check once its coordinator connection is up (the
/// check usually finishes first: both take one round trip).
pub const CHECK_AFTER_CONNECT: Duration = Duration::from_millis(250);
/// The first wait between rendezvous a client asks for after its direct path failed; it
/// doubles up to [`MAX_REPUNCH_BACKOFF`] until a direct path is back.
pub const FIRST_REPUNCH_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between such rendezvous.
pub const MAX_REPUNCH_BACKOFF: Duration = Duration::from_secs(60);
/// How often a host checks its NAT again (a sequential NAT's newest mapping moves on as
/// sessions make mappings; a peer predicts from the newest).
pub const NAT_RECHECK: Duration = Duration::from_secs(60);

/// Connects to the coordinator as [`connect_coordinator`] does, with the NAT check of `net`'s
/// path socket running beside it against the first address. Returns the connection; the
/// verdict is kept in the path socket ([`PathSocket::own_nat`]).
pub async fn connect_checking_nat(
    net: &NodeNet,
    streams: &dyn StreamConnector,
    enrollment: &Enrollment,
) -> Result<Connection, Error> {
    let first = match enrollment.coordinator_addrs.first() {
        Some(addr) => tokio::net::lookup_host(addr.as_str())
            .await
            .ok()
            .and_then(|mut found| found.find(SocketAddr::is_ipv4)),
        None => None,
    };
    let connecting = connect_coordinator(
        &net.endpoint,
        streams,
        enrollment.coordinator_key,
        &enrollment.coordinator_addrs,
    );
    let Some(first) = first else {
        return connecting.await;
    };
    let checking = net.socket.check_nat(enrollment.coordinator_key, first);
    tokio::pin!(connecting, checking);
    let mut checked = false;
    let conn = loop {
        tokio::select! {
            biased;
            conn = &mut connecting => break conn?,
            _ = &mut checking, if !checked => checked = true,
        }
    };
    if !checked {
        let _ = tokio::time::timeout(CHECK_AFTER_CONNECT, checking).await;
    }
    Ok(conn)
}

/// What a client offers for a rendezvous: its process, its own addresses, how its NAT maps.
/// Loopback addresses go along only when the coordinator itself is on loopback (a test or
/// `mesh demo`, where the host is on this machine too).
pub fn offer(net: &NodeNet, coordinator: SocketAddr) -> PunchOffer {
    let bound = net
        .socket
        .primary_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    PunchOffer {
        instance: net.socket.instance(),
        addrs: local_addrs(bound, coordinator.ip().is_loopback()),
        nat: net.socket.own_nat(),
    }
}

/// Punches toward the host a reply names, if the coordinator arranged a rendezvous: its start
/// is `punch_at`, less the time since the reply was stamped (half of `rtt`).
pub fn punch_toward_host(socket: &Arc<PathSocket>, contact: &HostContact, rtt: Duration) {
    let Some(punch_at) = contact.punch_at else {
        return;
    };
    let stamped = contact.coordinator_time.saturating_add(rtt / 2);
    socket.punch(PunchTarget {
        peer: contact.key,
        instance: None,
        addrs: contact.addrs.clone(),
        nat: contact.nat,
        start: Instant::now() + until(punch_at, stamped),
    });
}

/// Punches toward the client a host's `Punch` push names; `now` is the host's corrected time.
pub fn punch_toward_client(socket: &Arc<PathSocket>, rendezvous: Rendezvous, now: UnixTime) {
    socket.punch(PunchTarget {
        peer: rendezvous.peer,
        instance: Some(rendezvous.peer_instance),
        addrs: rendezvous.addrs,
        nat: rendezvous.nat,
        start: Instant::now() + until(rendezvous.start_at, now),
    });
}

/// Checks the host's NAT against the coordinator at `coordinator_addr` now and every
/// [`NAT_RECHECK`], sending each verdict to `report`, until `report` closes. Nothing is
/// checked for a coordinator reached over a TCP stream (UDP does not reach it).
pub async fn watch_nat(
    socket: Arc<PathSocket>,
    coordinator: NodeId,
    coordinator_addr: SocketAddr,
    report: tokio::sync::mpsc::Sender<NatMapping>,
) {
    if is_stream_addr(coordinator_addr) {
        return;
    }
    loop {
        let verdict = socket.check_nat(coordinator, coordinator_addr).await;
        if report.send(verdict).await.is_err() {
            return;
        }
        tokio::time::sleep(NAT_RECHECK).await;
    }
}

/// Keeps the path to the host `host` (key `host_key`) direct for as long as the task runs:
/// each time a direct path to it fails, asks the coordinator for another rendezvous at once,
/// then again after [`FIRST_REPUNCH_BACKOFF`], doubling up to [`MAX_REPUNCH_BACKOFF`], until
/// a direct path is confirmed. A session that never went direct (two NATs that map per
/// destination) asks nothing: only a failure starts it.
pub async fn keep_direct(
    net: NodeNet,
    streams: Arc<dyn StreamConnector>,
    enrollment: Enrollment,
    host: String,
    host_key: NodeId,
) {
    let mut failures = net.socket.path_failures();
    let failed =
        |all: &std::collections::HashMap<NodeId, u64>| all.get(&host_key).copied().unwrap_or(0);
    let mut seen = failed(&failures.borrow());
    loop {
        if failures.wait_for(|all| failed(all) > seen).await.is_err() {
            return;
        }
        let mut backoff = FIRST_REPUNCH_BACKOFF;
        loop {
            match repunch(&net, &*streams, &enrollment, &host).await {
                Ok(()) => tracing::info!(%host, "asked for another rendezvous"),
                Err(e) => tracing::info!(%host, "cannot ask for another rendezvous: {e}"),
            }
            tokio::time::sleep(backoff).await;
            let direct = net
                .socket
                .path_info(host_key)
                .is_some_and(|info| matches!(info.path, crate::path::state::Path::Direct(_)));
            if direct {
                tracing::info!(%host, "the path to the host is direct again");
                break;
            }
            backoff = (backoff * 2).min(MAX_REPUNCH_BACKOFF);
        }
        // Failures while re-punching are the one being handled.
        seen = failed(&failures.borrow());
    }
}

/// One more rendezvous with `host`: a fresh NAT check (the client's address may have
/// changed), a contact request with the offer, the punch from the start time.
async fn repunch(
    net: &NodeNet,
    streams: &dyn StreamConnector,
    enrollment: &Enrollment,
    host: &str,
) -> Result<(), Error> {
    let conn = connect_checking_nat(net, streams, enrollment).await?;
    let ask = ControlMessage::ContactRequest(ContactRequest {
        host: host.to_owned(),
        punch: Some(offer(net, conn.quic().remote_address())),
    });
    let reply = request(&conn, &ask).await;
    let rtt = conn.quic().rtt();
    conn.quic().close(0u32.into(), b"rendezvous");
    match reply? {
        ControlMessage::Contact(contact) => {
            punch_toward_host(&net.socket, &contact, rtt);
            Ok(())
        }
        other => Err(Error::Stream(format!(
            "unexpected reply to a contact request: {other:?}"
        ))),
    }
}

/// How long from `now` until `at` (zero if it has passed).
fn until(at: UnixTime, now: UnixTime) -> Duration {
    Duration::from_millis(at.as_millis().saturating_sub(now.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_convert_to_waits_from_now() {
        let now = UnixTime::from_millis(10_000);
        assert_eq!(
            until(UnixTime::from_millis(10_120), now),
            Duration::from_millis(120)
        );
        assert_eq!(until(UnixTime::from_millis(9_000), now), Duration::ZERO);
    }
}
