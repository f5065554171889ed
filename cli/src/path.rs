//! `mesh path HOST [--json]` and the PATH column of `mesh hosts`: how this device reaches a
//! host, measured now rather than guessed.
//!
//! `mesh path` asks the coordinator where the host is (its key and addresses; no grant is
//! minted and no session opened), then does what `mesh exec` does up to the session: the NAT
//! check, the rendezvous (the host punches toward this device from the start time the
//! coordinator sets, and this device toward it), the path socket with a relay connection, a
//! QUIC handshake with the host that starts on the relay at once. It waits a moment for a
//! direct address to be confirmed by a round trip and reports the path the connection settled
//! on, both NATs, every candidate and what it answered, the relay, the bytes each path carried
//! and the punch's counters (time to first byte and to direct, pings, rounds).
//!
//! `mesh hosts` probes the online hosts it may reach (probes only, no handshakes) for up to a
//! second: a host whose listed address answered is `direct`, any other online host `relay`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::ExitCode;
use std::time::Duration;

use mesh_node::control::{EnrolledAs, Enrollment, follow_relay, request, session_net};
use mesh_node::path::dial::TcpConnector;
use mesh_node::path::net::{NodeNet, RelayContact};
use mesh_node::path::socket::PathInfo;
use mesh_node::path::state::{Path, Source};
use mesh_node::rendezvous::{connect_checking_nat, offer, punch_toward_host};
use mesh_proto::NodeId;
use mesh_proto::messages::SESSION_ALPN;
use mesh_proto::messages::control::{ContactRequest, ControlMessage, HostContact};
use serde_json::json;
use tokio::time::Instant;

use crate::control::failed;
use crate::exit::Failure;

/// How long `mesh path` waits for the relay connection before handshaking without it.
const RELAY_WAIT: Duration = Duration::from_secs(2);
/// How long the handshake with the host may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// After the handshake, how long to wait for probes to confirm a direct address (a few
/// round trips of a slow path; pings to unconfirmed candidates go out every 500 ms).
const SETTLE: Duration = Duration::from_millis(1500);
/// How long `mesh hosts` waits for its probes.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How often a wait looks at the path again.
const POLL: Duration = Duration::from_millis(20);

/// `mesh path HOST [--json]`.
pub(crate) fn path(home: &FsPath, host: &str, json_out: bool) -> Result<ExitCode, Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    let report = runtime.block_on(measure(home, host))?;
    if json_out {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// What `mesh path` found.
struct PathReport {
    contact: HostContact,
    info: PathInfo,
    /// The relay connection's key and address, if one was up.
    relay: Option<(NodeId, SocketAddr)>,
    /// The QUIC connection's smoothed round trip.
    quic_rtt: Duration,
    /// How long the handshake took.
    handshake: Duration,
    /// From the start of `mesh path` to the handshake's end (the host's first byte).
    first_byte: Duration,
    /// From the start of `mesh path` to the direct path, if it went direct.
    to_direct: Option<Duration>,
}

async fn measure(home: &FsPath, host: &str) -> Result<PathReport, Failure> {
    let enrollment = user_enrollment(home)?;
    let begun = Instant::now();
    let net = session_net(
        home,
        Some(RelayContact {
            key: enrollment.coordinator_key,
            addrs: enrollment.coordinator_addrs.clone(),
        }),
    )
    .map_err(failed)?;
    let contact = contact(&net, &enrollment, host).await?;
    let mapped = net.socket.peer_addr(contact.key, &contact.addrs);
    net.socket.wait_for_relay(RELAY_WAIT).await;
    let started = Instant::now();
    let conn = match tokio::time::timeout(
        HANDSHAKE_LIMIT,
        net.endpoint.connect(mapped, contact.key, SESSION_ALPN),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(unreachable(host, &contact, &e.to_string())),
        Err(_) => return Err(unreachable(host, &contact, "no answer")),
    };
    let handshake = started.elapsed();
    let settle_until = Instant::now() + SETTLE;
    while Instant::now() < settle_until && !is_direct(&net, contact.key) {
        tokio::time::sleep(POLL).await;
    }
    let info = net
        .socket
        .path_info(contact.key)
        .ok_or_else(|| failed("the path socket lost track of the host"))?;
    let report = PathReport {
        relay: net.socket.relay(),
        quic_rtt: conn.quic().rtt(),
        handshake,
        first_byte: started.duration_since(begun) + handshake,
        to_direct: info
            .direct_since
            .filter(|_| matches!(info.path, Path::Direct(_)))
            .map(|since| since.duration_since(begun)),
        contact,
        info,
    };
    conn.quic().close(0u32.into(), b"path measured");
    net.endpoint
        .close_and_flush(Duration::from_millis(200))
        .await;
    Ok(report)
}

fn unreachable(host: &str, contact: &HostContact, why: &str) -> Failure {
    let listed = contact
        .addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    failed(format!(
        "cannot reach {host} (listed at [{listed}]) directly or through the relay: {why}"
    ))
}

fn is_direct(net: &NodeNet, key: NodeId) -> bool {
    net.socket
        .path_info(key)
        .is_some_and(|info| matches!(info.path, Path::Direct(_)))
}

/// This device's enrollment, refusing a host's home.
fn user_enrollment(home: &FsPath) -> Result<Enrollment, Failure> {
    let enrollment = Enrollment::load(home).map_err(failed)?.ok_or_else(|| {
        failed(format!(
            "{} is not enrolled: run `mesh login TOKEN` (or pass --home)",
            home.display()
        ))
    })?;
    if !matches!(enrollment.enrolled_as, EnrolledAs::User { .. }) {
        return Err(failed(format!(
            "{} belongs to a host, not a user's device; use your own --home",
            home.display()
        )));
    }
    Ok(enrollment)
}

/// Where `host` is, as the coordinator says.
async fn contact(
    net: &NodeNet,
    enrollment: &Enrollment,
    host: &str,
) -> Result<HostContact, Failure> {
    let conn = connect_checking_nat(net, &TcpConnector, enrollment)
        .await
        .map_err(|e| failed(format!("cannot reach the coordinator: {e}")))?;
    // As a session would: the host punches toward us from the time the coordinator sets.
    let ask = ControlMessage::ContactRequest(ContactRequest {
        host: host.to_owned(),
        punch: Some(offer(net, conn.quic().remote_address())),
    });
    let (reply, relay) = tokio::join!(request(&conn, &ask), follow_relay(&conn, net, enrollment));
    if let Err(e) = relay {
        tracing::warn!("cannot learn which relay to use: {e}");
    }
    let reply = reply.map_err(failed);
    let rtt = conn.quic().rtt();
    conn.quic().close(0u32.into(), b"done");
    match reply? {
        ControlMessage::Contact(contact) => {
            punch_toward_host(&net.socket, &contact, rtt);
            Ok(contact)
        }
        other => Err(failed(format!("unexpected reply {other:?}"))),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Listed => "listed",
        Source::PeerReflexive => "peer-reflexive",
        Source::Punched => "punched",
    }
}

impl PathReport {
    /// The chosen path's name, its remote address and its round trip.
    fn chosen(&self) -> (&'static str, Option<SocketAddr>, Duration) {
        match self.info.path {
            Path::Direct(route) => (
                "direct",
                Some(route.addr),
                self.info.rtt.unwrap_or(self.quic_rtt),
            ),
            Path::Relay => ("relay", self.relay.map(|(_, addr)| addr), self.quic_rtt),
            Path::Guess(route) => ("direct (unconfirmed)", Some(route.addr), self.quic_rtt),
            Path::None => ("none", None, self.quic_rtt),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let (path, remote, rtt) = self.chosen();
        json!({
            "host": self.contact.name,
            "node_id": self.contact.key.to_string(),
            "path": path,
            "remote_addr": remote.map(|a| a.to_string()),
            "rtt_ms": ms(rtt),
            "handshake_ms": ms(self.handshake),
            "relay": self.relay.map(|(key, addr)| json!({
                "node_id": key.to_string(),
                "addr": addr.to_string(),
            })),
            "bytes_sent": {
                "direct": self.info.direct_bytes,
                "relay": self.info.relay_bytes,
            },
            "nat": {
                "this_device": self.info.own_nat.name(),
                "host": self.contact.nat.name(),
            },
            "punch": {
                "rendezvous": self.contact.punch_at.is_some(),
                "time_to_first_byte_ms": ms(self.first_byte),
                "time_to_direct_ms": self.to_direct.map(ms),
                "probes_sent": self.info.pings_sent,
                "punch_rounds": self.info.punch_rounds,
                "bytes_relayed": self.info.relay_bytes,
            },
            "candidates": self.info.candidates.iter().map(|c| json!({
                "addr": c.route.addr.to_string(),
                "punch_socket": c.route.via != 0,
                "source": source_name(c.source),
                "confirmed": c.confirmed,
                "rtt_ms": c.rtt.map(ms),
                "pings": c.pings,
            })).collect::<Vec<_>>(),
        })
    }

    fn to_text(&self) -> String {
        let (path, remote, rtt) = self.chosen();
        let mut out = format!(
            "{} (node {})\n",
            self.contact.name,
            self.contact.key.short()
        );
        let remote = remote.map_or_else(|| "-".to_owned(), |a| a.to_string());
        out.push_str(&format!("path        {path} {remote}\n"));
        out.push_str(&format!("rtt         {:.1} ms\n", ms(rtt)));
        out.push_str(&format!("handshake   {:.1} ms\n", ms(self.handshake)));
        match self.relay {
            Some((key, addr)) => {
                out.push_str(&format!("relay       {} at {addr}\n", key.short()));
            }
            None => out.push_str("relay       none connected\n"),
        }
        out.push_str(&format!(
            "sent        direct {} B, relay {} B\n",
            self.info.direct_bytes, self.info.relay_bytes
        ));
        out.push_str(&format!(
            "nat         this device: {}; host: {}\n",
            self.info.own_nat.name(),
            self.contact.nat.name()
        ));
        let to_direct = self
            .to_direct
            .map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", ms(d)));
        out.push_str(&format!(
            "punch       {}first byte {:.1} ms, direct {to_direct}, {} probe(s), {} round(s)\n",
            if self.contact.punch_at.is_some() {
                ""
            } else {
                "no rendezvous (host offline?); "
            },
            ms(self.first_byte),
            self.info.pings_sent,
            self.info.punch_rounds
        ));
        if self.info.candidates.is_empty() {
            out.push_str("candidates  none (the coordinator knows no address of the host)\n");
        } else {
            out.push_str("candidates\n");
            for c in &self.info.candidates {
                let state = match (c.confirmed, c.rtt) {
                    (true, Some(rtt)) => format!("confirmed, rtt {:.1} ms", ms(rtt)),
                    (true, None) => "confirmed".to_owned(),
                    (false, Some(_)) => "answered before, silent now".to_owned(),
                    (false, None) => format!("no answer to {} ping(s)", c.pings),
                };
                out.push_str(&format!(
                    "  {:<28} {:<15} {state}\n",
                    c.route.to_string(),
                    source_name(c.source)
                ));
            }
        }
        out
    }
}

/// A host's path as `mesh hosts` shows it.
pub(crate) struct HostPath {
    /// `direct` or `relay`.
    pub(crate) path: &'static str,
    /// The direct address that answered.
    pub(crate) remote_addr: Option<SocketAddr>,
    /// Its round trip.
    pub(crate) rtt: Option<Duration>,
}

/// Probes `hosts` (name, key, addresses) from a path socket of this device for up to
/// [`PROBE_WAIT`] (less once every host answered): the ones whose listed address answers are
/// direct, the others relay.
pub(crate) async fn probe_hosts(
    home: &FsPath,
    hosts: &[HostContact],
) -> Result<HashMap<String, HostPath>, Failure> {
    let net = session_net(home, None).map_err(failed)?;
    for host in hosts {
        net.socket.peer_addr(host.key, &host.addrs);
    }
    let deadline = Instant::now() + PROBE_WAIT;
    while Instant::now() < deadline && !hosts.iter().all(|h| is_direct(&net, h.key)) {
        tokio::time::sleep(POLL).await;
    }
    let paths = hosts
        .iter()
        .map(|host| {
            let info = net.socket.path_info(host.key);
            let shown = match info.as_ref().map(|i| (i.path, i.rtt)) {
                Some((Path::Direct(route), rtt)) => HostPath {
                    path: "direct",
                    remote_addr: Some(route.addr),
                    rtt,
                },
                _ => HostPath {
                    path: "relay",
                    remote_addr: None,
                    rtt: None,
                },
            };
            (host.name.clone(), shown)
        })
        .collect();
    net.endpoint.close();
    Ok(paths)
}
