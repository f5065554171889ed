//! The datagram-socket seam: everything that sends UDP goes through [`DatagramSocket`].
//!
//! Real UDP (`mesh-node`) and the simulated internet (`mesh-netsim`) both implement it, so the
//! path socket, and quinn above it, never know which one they run on. The shape follows what
//! quinn's `AsyncUdpSocket` needs: a non-blocking send that reports `WouldBlock`, a way to wait
//! until sending may succeed, and a poll-based receive. No async runtime appears here.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Largest UDP payload over IPv4 or IPv6 without jumbograms; receive buffers of this size never
/// truncate a datagram.
pub const MAX_UDP_PAYLOAD: usize = 65_527;

/// A bound, non-blocking datagram socket.
pub trait DatagramSocket: Send + Sync + fmt::Debug + 'static {
    /// The address this socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends one datagram to `to` now, or fails with [`io::ErrorKind::WouldBlock`] when the
    /// socket cannot take it yet (then wait with [`poll_send_ready`](Self::poll_send_ready)).
    /// A datagram is sent whole or not at all.
    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()>;

    /// Ready when a [`try_send_to`](Self::try_send_to) may succeed; registers `cx`'s waker
    /// otherwise.
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Receives one datagram into `buf`, returning its length and sender; a datagram longer than
    /// `buf` is truncated (use [`MAX_UDP_PAYLOAD`] to avoid that). Registers `cx`'s waker when
    /// nothing is waiting.
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;
}

/// Opens sockets: the primary one per process, and the short-lived extra sockets that
/// birthday probing against a symmetric NAT needs.
pub trait SocketBinder: Send + Sync + fmt::Debug {
    /// Binds a new socket to `addr` (port 0 picks a free port).
    fn bind(&self, addr: SocketAddr) -> io::Result<Arc<dyn DatagramSocket>>;
}
