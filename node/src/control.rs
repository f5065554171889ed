//! The control protocol, node side: enrollment, one request per stream, and where a node keeps
//! what enrollment taught it (`enrollment.toml` in its home).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_proto::messages::CONTROL_ALPN;
use mesh_proto::messages::control::{ControlMessage, Enroll, Enrolled, HostEntry, HostsRequest};
use mesh_proto::token::{open_token, token_bytes_from_text};
use mesh_proto::{CaKeySet, NodeId, UnixTime};
use serde::{Deserialize, Serialize};

use crate::endpoint::{Connection, Endpoint, EndpointOptions};
use crate::error::Error;
use crate::framed::{FrameReader, write_frame};
use crate::path::dial::{StreamConnector, connect_quic};

/// The file in a home that records the enrollment.
pub const ENROLLMENT_FILE: &str = "enrollment.toml";
/// How long one attempt to reach one coordinator address may take.
/// UDP's head start and a TCP connection with its TLS and QUIC handshakes fit in it.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(8);

/// What a node learned when it enrolled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The coordinator's key.
    pub coordinator_key: NodeId,
    /// Where to reach it, in order of preference.
    pub coordinator_addrs: Vec<String>,
    /// The CA keys grants are checked against.
    pub ca_keys: Vec<NodeId>,
    /// Host name, or the user this device belongs to.
    pub enrolled_as: EnrolledAs,
}

/// Which kind of node this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolledAs {
    /// A host with this name.
    Host {
        /// Its name.
        name: String,
    },
    /// A device of this user.
    User {
        /// The user's name.
        name: String,
    },
    /// A standalone relay with this name.
    Relay {
        /// Its name.
        name: String,
    },
}

impl Enrollment {
    /// Reads the home's enrollment, `None` if it has none.
    pub fn load(home: &Path) -> Result<Option<Self>, Error> {
        let path = home.join(ENROLLMENT_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map(Some).map_err(|e| Error::Config {
                path,
                reason: e.message().lines().next().unwrap_or("invalid").to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                what: "cannot read",
                path,
                source,
            }),
        }
    }

    /// Writes it to the home, refusing to replace an existing enrollment.
    pub fn save(&self, home: &Path) -> Result<(), Error> {
        let path = home.join(ENROLLMENT_FILE);
        let text = toml::to_string(self).map_err(|e| Error::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Refused(format!(
                        "{} is already enrolled ({}); use another --home for another identity",
                        path.parent().unwrap_or(&path).display(),
                        path.display()
                    ))
                } else {
                    Error::Io {
                        what: "cannot write",
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| Error::Io {
                what: "cannot write",
                path,
                source,
            })
    }

    /// The pinned CA keys as a set.
    pub fn ca_key_set(&self) -> Option<CaKeySet> {
        let mut keys = self.ca_keys.iter();
        let mut set = CaKeySet::single(*keys.next()?);
        for key in keys {
            set.pin(*key);
        }
        Some(set)
    }
}

/// The relay a node should keep a connection to: the standalone relay the coordinator named
/// (`relay`), or the coordinator's own.
pub fn relay_contact(
    relay: Option<&mesh_proto::messages::control::RelayInfo>,
    enrollment: &Enrollment,
) -> crate::path::net::RelayContact {
    match relay {
        Some(info) => crate::path::net::RelayContact {
            key: info.key,
            addrs: info.addrs.iter().map(ToString::to_string).collect(),
        },
        None => crate::path::net::RelayContact {
            key: enrollment.coordinator_key,
            addrs: enrollment.coordinator_addrs.clone(),
        },
    }
}

/// Asks the coordinator which relay to use and moves `net`'s relay connection there.
pub async fn follow_relay(
    conn: &Connection,
    net: &crate::path::net::NodeNet,
    enrollment: &Enrollment,
) -> Result<(), Error> {
    let reply = request(
        conn,
        &ControlMessage::RelayRequest(mesh_proto::messages::control::RelayRequest),
    )
    .await?;
    let ControlMessage::UseRelay(use_relay) = reply else {
        return Err(Error::Stream(format!(
            "unexpected reply to RelayRequest: {reply:?}"
        )));
    };
    if net.use_relay(relay_contact(use_relay.relay.as_ref(), enrollment)) {
        tracing::info!(relay = ?use_relay.relay.map(|r| r.name), "the coordinator names another relay");
    }
    Ok(())
}

/// Connects to the coordinator at the first of `addrs` that answers as `key`: over UDP from
/// `endpoint`, or over TLS-over-TCP through `streams` when UDP does not answer
/// ([`crate::path::dial`]).
pub async fn connect_coordinator(
    endpoint: &Endpoint,
    streams: &dyn StreamConnector,
    key: NodeId,
    addrs: &[String],
) -> Result<Connection, Error> {
    let mut last = None;
    for addr in addrs {
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(addr.as_str()).await {
            Ok(found) => found.collect(),
            Err(e) => {
                last = Some(Error::Refused(format!("cannot resolve {addr}: {e}")));
                continue;
            }
        };
        for socket_addr in resolved {
            match tokio::time::timeout(
                CONNECT_ATTEMPT,
                connect_quic(
                    endpoint,
                    streams,
                    endpoint.secret_key(),
                    socket_addr,
                    key,
                    CONTROL_ALPN,
                    EndpointOptions::default(),
                ),
            )
            .await
            {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Refused(format!(
                        "no answer from the coordinator at {addr}"
                    )));
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Refused("no coordinator address is known".into())))
}

/// The whole host directory, page by page (a fleet's directory does not fit one frame).
pub async fn directory(conn: &Connection) -> Result<Vec<HostEntry>, Error> {
    let mut hosts = Vec::new();
    let mut after = None;
    loop {
        let ask = ControlMessage::HostsRequest(HostsRequest {
            after: after.clone(),
        });
        let reply = request(conn, &ask).await?;
        let ControlMessage::Hosts(page) = reply else {
            return Err(Error::Refused(format!("unexpected reply {reply:?}")));
        };
        let last = page.hosts.last().map(|h| h.name.clone());
        hosts.extend(page.hosts);
        match page.next {
            // Each page must end where the next begins and move forward: a coordinator
            // repeating a page would keep us here forever.
            Some(next) if last.as_ref() == Some(&next) && after.as_ref() < Some(&next) => {
                after = Some(next);
            }
            Some(_) => {
                return Err(Error::Refused(
                    "the coordinator's directory pages do not follow each other".into(),
                ));
            }
            None => return Ok(hosts),
        }
    }
}

/// Sends one request on a new stream and returns the reply; a [`Failure`] reply becomes
/// [`Error::Refused`] with the coordinator's words.
///
/// [`Failure`]: mesh_proto::messages::control::Failure
pub async fn request(conn: &Connection, message: &ControlMessage) -> Result<ControlMessage, Error> {
    let (mut send, recv) = conn.quic().open_bi().await.map_err(Error::Connection)?;
    write_frame(&mut send, message).await?;
    let _ = send.finish();
    let mut recv = FrameReader::new(recv);
    match recv.next::<ControlMessage>().await? {
        Some(ControlMessage::Failure(failure)) => Err(Error::Refused(failure.message)),
        Some(reply) => Ok(reply),
        None => Err(Error::Stream(
            "the coordinator closed the request without an answer".into(),
        )),
    }
}

/// Enrolls `endpoint`'s key with the token in `token_text`: checks the token's signature and
/// expiry locally, connects to the coordinator it names (over UDP, or through `streams`),
/// redeems it, and returns what to save.
pub async fn enroll(
    endpoint: &Endpoint,
    streams: &dyn StreamConnector,
    token_text: &str,
    coordinator_override: Option<String>,
    now: UnixTime,
) -> Result<Enrollment, Error> {
    let bytes = token_bytes_from_text(token_text).map_err(|e| Error::Refused(e.to_string()))?;
    let token = open_token(&bytes, None, now).map_err(|e| Error::Refused(e.to_string()))?;
    let addrs = match coordinator_override {
        Some(addr) => vec![addr],
        None => token.coordinator_addrs.clone(),
    };
    let conn = connect_coordinator(endpoint, streams, token.coordinator_key, &addrs).await?;
    let reply = request(&conn, &ControlMessage::Enroll(Enroll { token: bytes })).await?;
    conn.quic().close(0u32.into(), b"enrolled");
    let enrolled_as = match reply {
        ControlMessage::Enrolled(Enrolled::Host { name }) => EnrolledAs::Host { name },
        ControlMessage::Enrolled(Enrolled::Device { user, .. }) => EnrolledAs::User { name: user },
        ControlMessage::Enrolled(Enrolled::Relay { name }) => EnrolledAs::Relay { name },
        other => {
            return Err(Error::Stream(format!(
                "unexpected reply to Enroll: {other:?}"
            )));
        }
    };
    Ok(Enrollment {
        coordinator_key: token.coordinator_key,
        coordinator_addrs: addrs,
        ca_keys: vec![token.ca_key],
        enrolled_as,
    })
}

/// A client device's connection to its coordinator, made from its home: its key, its
/// enrollment, one endpoint (reused for the host afterwards).
#[derive(Debug)]
pub struct ClientLink {
    /// The endpoint (this device's key, one UDP socket).
    pub endpoint: Endpoint,
    /// The open control connection.
    pub conn: Connection,
    /// What enrollment recorded.
    pub enrollment: Enrollment,
}

/// Opens the device's endpoint from `home` and connects it to the coordinator.
pub async fn connect_from_home(home: &Path) -> Result<ClientLink, Error> {
    let enrollment = Enrollment::load(home)?.ok_or_else(|| {
        Error::Refused(format!(
            "{} is not enrolled: run `mesh login TOKEN` (or pass --home)",
            home.display()
        ))
    })?;
    if !matches!(enrollment.enrolled_as, EnrolledAs::User { .. }) {
        return Err(Error::Refused(format!(
            "{} belongs to a host, not a user's device; use your own --home",
            home.display()
        )));
    }
    let endpoint = client_endpoint(home)?;
    let conn = connect_coordinator(
        &endpoint,
        &crate::path::dial::TcpConnector,
        enrollment.coordinator_key,
        &enrollment.coordinator_addrs,
    )
    .await?;
    Ok(ClientLink {
        endpoint,
        conn,
        enrollment,
    })
}

/// A client's networking for sessions: the path socket on a fresh UDP port and, when `relay`
/// is given, a connection to that relay kept up beside it.
pub fn session_net(
    home: &Path,
    relay: Option<crate::path::net::RelayContact>,
) -> Result<crate::path::net::NodeNet, Error> {
    let key = crate::keyfile::read_secret_key(&home.join(crate::agent::KEY_FILE))?;
    let socket =
        crate::udp::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(|source| {
            Error::Io {
                what: "cannot open a UDP socket",
                path: home.to_owned(),
                source,
            }
        })?;
    crate::path::net::NodeNet::start(
        key,
        std::sync::Arc::new(socket),
        std::sync::Arc::new(crate::udp::UdpBinder),
        std::sync::Arc::new(mesh_proto::SystemClock),
        crate::path::net::NetOptions {
            accept_alpns: Vec::new(),
            relay,
            seed: None,
            jitter: crate::agent::presence::Jitter::from_entropy(),
            streams: crate::path::dial::tcp(),
        },
    )
}

/// An endpoint with the home's key on a fresh UDP socket (all interfaces, any port), for
/// requests to the coordinator.
pub fn client_endpoint(home: &Path) -> Result<Endpoint, Error> {
    let key = crate::keyfile::read_secret_key(&home.join(crate::agent::KEY_FILE))?;
    let socket =
        crate::udp::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(|source| {
            Error::Io {
                what: "cannot open a UDP socket",
                path: home.to_owned(),
                source,
            }
        })?;
    Endpoint::new(key, std::sync::Arc::new(socket), &[])
}
