//! Reaching a coordinator or a relay: QUIC over UDP first, and QUIC over TLS-over-TCP
//! ([`super::stream`], [`super::tls_stream`]) beside it when UDP has not answered within a head
//! start — so a site whose firewall drops UDP and lets outbound TCP through still enrolls,
//! lists hosts and gets shells (DESIGN.md, "Relay"). The first transport to finish its QUIC
//! handshake wins; the other attempt is dropped.
//!
//! Streams are opened through [`StreamConnector`] and accepted through [`StreamAcceptor`], so
//! the simulator runs the same code over its simulated TCP.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::{NodeId, SecretKey};

use super::stream::{ByteStream, StreamClientSocket};
use super::tls_stream::tls_client;
use crate::endpoint::{Connection, Endpoint, EndpointOptions};
use crate::error::Error;

/// How long QUIC over UDP has to answer before TCP is tried beside it: a few round trips of
/// a slow path, short enough that a UDP-blocked site waits only this much more.
pub const UDP_HEAD_START: Duration = Duration::from_millis(1000);
/// How long opening a stream and its TLS handshake may take.
pub const STREAM_CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// A boxed future, as trait methods return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens byte streams (TCP connections, or the simulator's).
pub trait StreamConnector: Send + Sync + fmt::Debug + 'static {
    /// A stream to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<ByteStream>>;
}

/// Accepts byte streams (a TCP listener, or the simulator's).
pub trait StreamAcceptor: Send + Sync + 'static {
    /// The next stream and the address it came from.
    fn accept(&self) -> BoxFuture<'_, io::Result<(ByteStream, SocketAddr)>>;
}

/// Real TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl StreamConnector for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<ByteStream>> {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            // Interactive traffic: every keystroke's packet goes out at once.
            tcp.set_nodelay(true)?;
            Ok(Box::new(tcp) as ByteStream)
        })
    }
}

/// A real TCP listener.
#[derive(Debug)]
pub struct TcpAcceptor(pub tokio::net::TcpListener);

impl StreamAcceptor for TcpAcceptor {
    fn accept(&self) -> BoxFuture<'_, io::Result<(ByteStream, SocketAddr)>> {
        Box::pin(async move {
            let (tcp, peer) = self.0.accept().await?;
            tcp.set_nodelay(true)?;
            Ok((Box::new(tcp) as ByteStream, peer))
        })
    }
}

/// Connects `endpoint` (over UDP) to `server` at `addr` under `alpn`; if that has not
/// finished within [`UDP_HEAD_START`], also connects over TLS-over-TCP to the same address
/// and port through `streams`, from an endpoint of its own with `stream_options`. The first
/// to connect wins. `key` is the endpoint's key (the TLS client's too).
pub async fn connect_quic(
    endpoint: &Endpoint,
    streams: &dyn StreamConnector,
    key: &SecretKey,
    addr: SocketAddr,
    server: NodeId,
    alpn: &[u8],
    stream_options: EndpointOptions,
) -> Result<Connection, Error> {
    let udp = endpoint.connect(addr, server, alpn);
    tokio::pin!(udp);
    tokio::select! {
        biased;
        done = &mut udp => match done {
            Ok(conn) => return Ok(conn),
            // A wrong key is the same over TCP; anything else may be UDP's fault.
            Err(e @ Error::WrongHostKey { .. }) => return Err(e),
            Err(udp_error) => {
                return connect_over_stream(streams, key, addr, server, alpn, stream_options)
                    .await
                    .map_err(|tcp_error| both_failed(udp_error, tcp_error));
            }
        },
        () = tokio::time::sleep(UDP_HEAD_START) => {}
    }
    let tcp = connect_over_stream(streams, key, addr, server, alpn, stream_options);
    tokio::pin!(tcp);
    tokio::select! {
        biased;
        done = &mut udp => match done {
            Ok(conn) => Ok(conn),
            Err(udp_error) => tcp.await.map_err(|tcp_error| both_failed(udp_error, tcp_error)),
        },
        done = &mut tcp => match done {
            Ok(conn) => {
                tracing::info!(%addr, "UDP did not answer; connected over TCP");
                Ok(conn)
            }
            Err(tcp_error) => udp.await.map_err(|udp_error| both_failed(udp_error, tcp_error)),
        },
    }
}

fn both_failed(udp: Error, tcp: Error) -> Error {
    match (udp, tcp) {
        (_, e @ Error::WrongHostKey { .. }) | (e @ Error::WrongHostKey { .. }, _) => e,
        (udp, tcp) => Error::Refused(format!("over UDP: {udp}; over TCP: {tcp}")),
    }
}

/// QUIC to `server` over one TLS-over-TCP stream to `addr`.
pub async fn connect_over_stream(
    streams: &dyn StreamConnector,
    key: &SecretKey,
    addr: SocketAddr,
    server: NodeId,
    alpn: &[u8],
    options: EndpointOptions,
) -> Result<Connection, Error> {
    let stream = tokio::time::timeout(STREAM_CONNECT_LIMIT, async {
        let raw = streams
            .connect(addr)
            .await
            .map_err(|e| Error::Stream(format!("TCP connection to {addr}: {e}")))?;
        tls_client(raw, key, server).await
    })
    .await
    .map_err(|_| Error::Stream(format!("no TLS connection to {addr} in time")))??;
    let local = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = StreamClientSocket::new(stream, addr, local);
    let endpoint = Endpoint::with_options(key.clone(), socket, &[], options)?;
    endpoint.connect(addr, server, alpn).await
}

/// A connector that can reach nothing: for callers that must not open streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStreams;

impl StreamConnector for NoStreams {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<ByteStream>> {
        Box::pin(async move {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no stream transport to reach {addr}"),
            ))
        })
    }
}

/// The default connector outside simulations.
pub fn tcp() -> Arc<dyn StreamConnector> {
    Arc::new(TcpConnector)
}
