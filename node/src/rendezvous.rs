//! The node side of a rendezvous (DESIGN.md, "Rendezvous"): a node learns how its NAT maps
//! (the path socket's NAT check against the coordinator), a client offers its candidates with
//! its request, and both sides punch from the start time the coordinator set — the host when
//! the `Punch` push arrives on its presence stream, the client when the reply names it.
//!
//! Start times are in the coordinator's clock. A host converts with its corrected clock; a
//! client, which keeps none, with the reply's own timestamp and the connection's round trip
//! (the reply was stamped about half a round trip ago).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::NodeId;
use mesh_proto::UnixTime;
use mesh_proto::messages::control::{HostContact, PunchOffer, Rendezvous};
use mesh_proto::nat::NatMapping;
use tokio::time::Instant;

use crate::control::{Enrollment, connect_coordinator};
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
