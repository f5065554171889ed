//! Real UDP behind the [`DatagramSocket`] seam, on tokio's reactor.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_proto::socket::{DatagramSocket, SocketBinder};
use tokio::io::ReadBuf;

/// A UDP socket registered with the current tokio runtime.
#[derive(Debug)]
pub struct UdpSocket(tokio::net::UdpSocket);

impl UdpSocket {
    /// Binds a socket to `addr`. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(socket).map(Self)
    }
}

impl DatagramSocket for UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        let sent = self.0.try_send_to(datagram, to)?;
        if sent != datagram.len() {
            // UDP sends whole datagrams; a short count would mean a corrupted packet on the wire.
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes of a datagram",
                datagram.len()
            )));
        }
        Ok(())
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_send_ready(cx)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut read = ReadBuf::new(buf);
        self.0
            .poll_recv_from(cx, &mut read)
            .map_ok(|from| (read.filled().len(), from))
    }
}

/// Binds real UDP sockets.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpBinder;

impl SocketBinder for UdpBinder {
    fn bind(&self, addr: SocketAddr) -> io::Result<Arc<dyn DatagramSocket>> {
        Ok(Arc::new(UdpSocket::bind(addr)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn send(socket: &dyn DatagramSocket, datagram: &[u8], to: SocketAddr) {
        poll_fn(|cx| socket.poll_send_ready(cx)).await.unwrap();
        socket.try_send_to(datagram, to).unwrap();
    }

    async fn recv(socket: &dyn DatagramSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; mesh_proto::socket::MAX_UDP_PAYLOAD];
        let (len, from) = poll_fn(|cx| socket.poll_recv_from(cx, &mut buf))
            .await
            .unwrap();
        buf.truncate(len);
        (buf, from)
    }

    #[tokio::test]
    async fn datagrams_cross_loopback_whole_with_their_sender() {
        let a = UdpBinder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpBinder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b_addr = b.local_addr().unwrap();
        send(a.as_ref(), b"hello", b_addr).await;
        let (got, from) = recv(b.as_ref()).await;
        assert_eq!(got, b"hello");
        assert_eq!(from, a.local_addr().unwrap());

        // The largest IPv4 UDP payload arrives in one piece.
        let big: Vec<u8> = (0..65_507u32).map(|i| i as u8).collect();
        send(b.as_ref(), &big, a.local_addr().unwrap()).await;
        let (got, _) = recv(a.as_ref()).await;
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn binding_a_taken_port_fails() {
        let a = UdpBinder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = UdpBinder.bind(a.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
