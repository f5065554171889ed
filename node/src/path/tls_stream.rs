//! TLS over TCP (or over any [`ByteStream`]) for the stream transport ([`super::stream`]):
//! how a client behind a firewall that passes only outbound TCP reaches the coordinator and
//! the relay.
//!
//! The handshake is the one QUIC uses ([`crate::tls`]): TLS 1.3, both sides presenting their
//! node keys as raw public keys, the client pinning the server's key. The QUIC inside
//! authenticates both sides again; this layer's own check keeps an impostor from even seeing
//! the QUIC handshake, and makes a wrong server key the same typed error as over UDP.
//!
//! The server side ([`serve_tcp`]) treats every connection as hostile until its handshake
//! completes: each handshake runs in its own task under a deadline, at most
//! [`MAX_HANDSHAKES`] run at once, and a failure is logged and forgotten.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::{NodeId, SecretKey};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::stream::{ByteStream, StreamServerSocket};
use crate::error::Error;
use crate::tls;

/// The TLS protocol name of the stream transport: QUIC datagrams framed on the stream.
pub const STREAM_ALPN: &[u8] = b"mesh/stream/1";
/// How long a server gives a new connection to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS handshakes a server runs at once; connections beyond it are closed unanswered, so a
/// flood of silent connections costs a bounded number of tasks and buffers.
pub const MAX_HANDSHAKES: usize = 256;
/// Pause after a failed `accept` (out of descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The TLS server configuration for the stream transport, as `key`.
pub fn server_config(key: &SecretKey) -> Result<Arc<rustls::ServerConfig>, Error> {
    tls::server_config(key, &[STREAM_ALPN]).map(Arc::new)
}

/// Runs the client's TLS handshake on `stream` as `key`; fails unless the server proves it
/// holds `expected`'s key ([`Error::WrongHostKey`] if it holds another) and agrees to
/// [`STREAM_ALPN`].
pub async fn tls_client(
    stream: ByteStream,
    key: &SecretKey,
    expected: NodeId,
) -> Result<ByteStream, Error> {
    let (config, presented_instead) = tls::client_config(key, expected, STREAM_ALPN)?;
    // The server name is unused: identity is the raw key, checked by the verifier.
    let name =
        ServerName::try_from("mesh").map_err(|e| Error::Stream(format!("TLS server name: {e}")))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| match presented_instead.get() {
            Some(presented) => Error::WrongHostKey {
                expected,
                presented: *presented,
            },
            None => Error::Stream(format!("TLS handshake: {e}")),
        })?;
    if tls.get_ref().1.alpn_protocol() != Some(STREAM_ALPN) {
        return Err(Error::Stream(
            "the server does not speak the stream transport (no ALPN agreed)".into(),
        ));
    }
    Ok(Box::new(tls))
}

/// Runs the server's TLS handshake on `stream` with `config` (which must offer
/// [`STREAM_ALPN`], as [`server_config`]'s does); returns the stream and the key the client
/// proved it holds.
pub async fn tls_server(
    stream: ByteStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<(ByteStream, NodeId), Error> {
    let tls = TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(|e| Error::Stream(format!("TLS handshake: {e}")))?;
    let session = tls.get_ref().1;
    if session.alpn_protocol() != Some(STREAM_ALPN) {
        return Err(Error::Stream(
            "the client did not ask for the stream transport (no ALPN agreed)".into(),
        ));
    }
    let client = session
        .peer_certificates()
        .and_then(|keys| keys.first())
        .and_then(|der| tls::node_id_from_spki(der))
        .ok_or_else(|| Error::Stream("the client is not authenticated by a node key".into()))?;
    Ok((Box::new(tls), client))
}

/// Connects over TCP to `addr` (Nagle off: QUIC's packets must not wait for each other) and
/// runs the client's TLS handshake as `key` with the node `expected`, all within `limit`.
pub async fn connect_tcp(
    addr: SocketAddr,
    key: &SecretKey,
    expected: NodeId,
    limit: Duration,
) -> Result<ByteStream, Error> {
    let connecting = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Stream(format!("TCP connection to {addr}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| Error::Stream(format!("TCP_NODELAY on the connection to {addr}: {e}")))?;
        tls_client(Box::new(tcp), key, expected).await
    };
    tokio::time::timeout(limit, connecting).await.map_err(|_| {
        Error::Stream(format!(
            "no TLS connection to {addr} within {}",
            humantime::format_duration(limit)
        ))
    })?
}

/// Accepts TCP connections on `listener` until `shutdown` completes: [`serve_streams`] over
/// real TCP.
///
/// Fails only if no TLS configuration can be made from `key`, before accepting anything.
pub async fn serve_tcp(
    listener: TcpListener,
    key: SecretKey,
    socket: Arc<StreamServerSocket>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_streams(super::dial::TcpAcceptor(listener), key, socket, shutdown).await
}

/// Accepts streams from `acceptor` until `shutdown` completes, runs the server's TLS
/// handshake on each as `key` and adds each authenticated stream to `socket`. Handshakes in
/// progress are abandoned at shutdown; streams already added stay with `socket`.
///
/// Fails only if no TLS configuration can be made from `key`, before accepting anything.
pub async fn serve_streams(
    acceptor: impl super::dial::StreamAcceptor,
    key: SecretKey,
    socket: Arc<StreamServerSocket>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let config = server_config(&key)?;
    let mut handshakes = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = acceptor.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("accepting a stream failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if handshakes.len() >= MAX_HANDSHAKES {
            tracing::debug!(%peer, "{MAX_HANDSHAKES} TLS handshakes under way; connection closed");
            continue;
        }
        handshakes.spawn(handshake(stream, peer, config.clone(), socket.clone()));
    }
}

async fn handshake(
    stream: ByteStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    socket: Arc<StreamServerSocket>,
) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls_server(stream, config)).await {
        Ok(Ok((stream, client))) => {
            let client = client.short();
            match socket.add(stream, peer) {
                Some(synthetic) => tracing::debug!(%peer, %client, %synthetic, "stream client"),
                None => tracing::debug!(%peer, %client, "too many streams; closed"),
            }
        }
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
