//! Simulated TCP streams for the code under test: [`SimStream`] (tokio's `AsyncRead` and
//! `AsyncWrite`) and [`SimStreamListener`], opened through a host's [`HostBinder`].
//!
//! The model is TCP as the two applications see it, not TCP's wire protocol:
//!
//! - **Route.** Decided when a connection opens: up from the connecting host through the NATs
//!   above it to the network where the address is a host. Each NAT crossed gives the connection
//!   a fresh external port (TCP ports are apart from UDP's), so the listener sees the outermost
//!   NAT's address. A firewall that blocks UDP (`block_udp`) lets TCP through. Nothing goes down
//!   through a NAT: no port forwarding or simultaneous open is modelled.
//! - **Handshake.** The SYN, SYN-ACK and final ACK travel the route as segments. `connect`
//!   finishes when the SYN-ACK arrives (one round trip); the listener can accept when the ACK
//!   arrives (half a round trip later, the client's first bytes right behind it). A SYN that
//!   reaches its host with nothing listening is answered by a reset: `ConnectionRefused` after
//!   one round trip. A SYN that is dropped — at a NAT's outside, or for want of a host with the
//!   address — is never answered: `TimedOut` after 127 s, as Linux gives up after its six SYN
//!   retries; the error says where the SYN went.
//! - **Bytes.** Writes are cut into segments of the route's MSS (its smallest MTU less 40). A
//!   segment arrives after the sum of the route's latencies, plus one jitter draw per jittery
//!   link, plus its serialization at the narrowest link's bandwidth (each direction of each
//!   connection is paced as if alone on that link: streams do not compete with each other or
//!   with UDP for bandwidth). The arrival times of one direction never decrease, so jitter never
//!   reorders bytes.
//! - **No loss, but partitions.** Links' loss, MTU drops and queue limits do not apply
//!   (retransmission is below this model). A link that is down ([`World::set_host_link`],
//!   [`World::set_nat_link`]) holds a connection's segments at the sender until it comes up; a
//!   segment in flight while a link on its route goes down (or goes down and comes back) is lost
//!   and sent again, once the route is up, ahead of newer bytes, and the receiver puts segments
//!   back in order. Retransmission starts the moment a loss is seen or the link heals, without
//!   TCP's backoff. Window updates are held and resent the same way; resets are not (they are
//!   sent once, when they happen).
//! - **Window.** Each direction has at most 256 KiB written and not yet read by the other
//!   application (plus the window update's trip back); beyond that, `poll_write` is pending.
//!   This bounds what a fast writer can make the world hold: its unsent bytes, the bytes in
//!   flight and the receiver's buffer together.
//! - **Close.** Shutting down or dropping a stream sends a FIN after its bytes: the other side
//!   reads EOF once it has read them. Bytes arriving at a stream whose handle is dropped are
//!   answered by a reset, so the writer's next read or write fails with `ConnectionReset`.
//!   (Unread bytes at a drop are discarded without a reset, unlike Linux.)
//! - **Resets.** When a NAT the connection crosses forgets its state ([`World::flush_nat`]) or
//!   an end's host moves ([`World::move_host`]), both ends fail at once with `ConnectionReset`,
//!   and the NAT ports the connection held are free again.
//!
//! Timing is seen through tokio's timer, which wakes on whole milliseconds: an arrival at
//! 113.76 ms is read at 114 ms.
//!
//! These are thin handles: every call goes to the world's connection machine under the world's
//! lock and at its virtual time, and everything that happens later is an event in the world's
//! one queue, with jitter from its seeded generator, so streams and UDP share one order and a
//! seed replays a run exactly. No task or thread of their own runs anywhere. Bytes delivered
//! are counted in [`Counters::stream_bytes`](crate::world::Counters::stream_bytes), and a
//! [`Capture`](crate::capture::Capture) records them.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tcp::{Opened, Side};
use crate::world::{HostBinder, World};

impl HostBinder {
    /// Listens for stream connections on `port` of this host (a free ephemeral port for 0).
    /// TCP ports are apart from UDP ports, as in a real kernel.
    pub fn listen_stream(&self, port: u16) -> io::Result<SimStreamListener> {
        let port = self
            .world
            .with_streams(|streams, network, _| streams.listen(network, self.host, port))?;
        Ok(SimStreamListener {
            world: self.world.clone(),
            host: self.host,
            port,
        })
    }

    /// Connects a stream from this host to `to` (IPv4 only). Finishes after one round trip
    /// when something listens there; fails with `ConnectionRefused` after one round trip when
    /// nothing does, and with `TimedOut` after 127 s of virtual time when the SYN is dropped on
    /// the way (`to` is behind a NAT, no host has the address) or a partition outlasts that.
    pub async fn connect_stream(&self, to: SocketAddr) -> io::Result<SimStream> {
        let SocketAddr::V4(to) = to else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated internet is IPv4 only",
            ));
        };
        let opened = self
            .world
            .with_streams(|streams, network, wire| streams.connect(network, self.host, to, wire))?;
        // Held from here on, so that dropping this future abandons the connection.
        let stream = SimStream::new(self.world.clone(), opened, Side::Client);
        poll_fn(|cx| {
            stream
                .world
                .with_streams(|streams, _, _| streams.poll_connect(stream.id, cx))
        })
        .await?;
        Ok(stream)
    }
}

/// A listening stream port on a simulated host. Dropping it resets the connections it has not
/// accepted yet.
pub struct SimStreamListener {
    world: World,
    host: usize,
    port: u16,
}

impl fmt::Debug for SimStreamListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStreamListener")
            .field("host", &self.host)
            .field("addr", &self.local_addr())
            .finish()
    }
}

impl SimStreamListener {
    /// The address it listens on (the host's current address).
    pub fn local_addr(&self) -> SocketAddr {
        let ip = self
            .world
            .host_ip(self.host)
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        SocketAddr::from((ip, self.port))
    }

    /// The next connection whose handshake has finished, with its peer's address as this host
    /// sees it (the outermost NAT's address and port, for a peer behind NATs).
    pub async fn accept(&self) -> io::Result<(SimStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// [`accept`](Self::accept) as a poll.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(SimStream, SocketAddr)>> {
        let polled = self
            .world
            .with_streams(|streams, _, _| streams.poll_accept(self.host, self.port, cx));
        polled.map_ok(|opened| {
            let peer = SocketAddr::V4(opened.peer);
            (
                SimStream::new(self.world.clone(), opened, Side::Server),
                peer,
            )
        })
    }
}

impl Drop for SimStreamListener {
    fn drop(&mut self) {
        let (host, port) = (self.host, self.port);
        self.world
            .with_streams(|streams, _, wire| streams.close_listener(host, port, wire));
    }
}

/// One end of a simulated TCP connection. Dropping it closes the connection: the other end
/// reads EOF after the bytes already written.
pub struct SimStream {
    world: World,
    id: u64,
    side: Side,
    local: SocketAddr,
    peer: SocketAddr,
}

impl fmt::Debug for SimStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl SimStream {
    fn new(world: World, opened: Opened, side: Side) -> Self {
        Self {
            world,
            id: opened.id,
            side,
            local: SocketAddr::V4(opened.local),
            peer: SocketAddr::V4(opened.peer),
        }
    }

    /// This end's address (for a host behind NATs, its address on its own network).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The other end's address as this end sees it.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (id, side) = (self.id, self.side);
        self.world
            .with_streams(|streams, _, wire| streams.poll_read(id, side, cx, buf, wire))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (id, side) = (self.id, self.side);
        self.world
            .with_streams(|streams, _, wire| streams.poll_write(id, side, cx, data, wire))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already on their way (or waiting for the route): nothing to push.
        let id = self.id;
        Poll::Ready(self.world.with_streams(|streams, _, _| streams.check(id)))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (id, side) = (self.id, self.side);
        Poll::Ready(
            self.world
                .with_streams(|streams, _, wire| streams.shutdown(id, side, wire)),
        )
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        let (id, side) = (self.id, self.side);
        self.world
            .with_streams(|streams, _, wire| streams.drop_end(id, side, wire));
    }
}

/// The simulated host's streams are how its mesh nodes reach a coordinator or relay over TCP
/// (`mesh_node::path::dial`), exactly as real nodes use real TCP.
impl mesh_node::path::dial::StreamConnector for HostBinder {
    fn connect(
        &self,
        addr: SocketAddr,
    ) -> mesh_node::path::dial::BoxFuture<'_, io::Result<mesh_node::path::stream::ByteStream>> {
        Box::pin(async move {
            let stream = self.connect_stream(addr).await?;
            Ok(Box::new(stream) as mesh_node::path::stream::ByteStream)
        })
    }
}

/// A simulated coordinator accepts streams here, as a real one accepts TCP connections.
impl mesh_node::path::dial::StreamAcceptor for SimStreamListener {
    fn accept(
        &self,
    ) -> mesh_node::path::dial::BoxFuture<
        '_,
        io::Result<(mesh_node::path::stream::ByteStream, SocketAddr)>,
    > {
        Box::pin(async move {
            let (stream, peer) = Self::accept(self).await?;
            Ok((
                Box::new(stream) as mesh_node::path::stream::ByteStream,
                peer,
            ))
        })
    }
}
