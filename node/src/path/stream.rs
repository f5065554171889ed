//! Datagrams over byte streams, for sites that allow only outbound TCP (DESIGN.md,
//! "Connections": the coordinator and relay are reachable over TCP with TLS).
//!
//! A quinn endpoint needs a [`DatagramSocket`]; here its datagrams travel as frames on a
//! reliable byte stream (TLS over TCP in production, see [`super::tls_stream`]; an in-memory
//! pipe in tests and the simulator). A frame is a 2-byte big-endian length, 1 to
//! [`MAX_STREAM_DATAGRAM`], then the datagram. Everything above the socket — QUIC, the control
//! protocol, the relay — is the same as over UDP.
//!
//! The sockets behave like UDP where it matters to QUIC: a datagram that cannot be queued is
//! dropped (QUIC's loss recovery and congestion control see a loss and slow down), and a
//! stream that ends is a peer that went silent, not an error quinn has to handle.
//!
//! - [`StreamClientSocket`]: one stream to one server.
//! - [`StreamServerSocket`]: many clients' streams behind one socket, each client shown to quinn
//!   as its own made-up address (the same trick as [`super::mapped`], from another prefix).
//!
//! Each stream is served by one task that reads and writes concurrently; nothing blocks, and
//! only tokio's clock is used, so the sockets run in the simulator's paused, current-thread
//! runtime.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, pending};
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mesh_proto::socket::DatagramSocket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::error::Error;

/// A reliable, ordered byte stream in either direction: a TCP connection, TLS over one, or an
/// in-memory pipe.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// A boxed [`AsyncStream`], so that TCP, TLS and test pipes are one type.
pub type ByteStream = Box<dyn AsyncStream>;

/// The largest datagram a frame carries. quinn never sends more than 1472 bytes (its default
/// `max_udp_payload_size`, which also bounds path MTU discovery), so this leaves room while
/// keeping what a peer can make us allocate per frame small.
pub const MAX_STREAM_DATAGRAM: usize = 2048;
/// Datagrams waiting to be written to one stream; beyond it they are dropped, as a full UDP
/// send buffer drops them.
pub const SEND_QUEUE: usize = 512;
/// Datagrams read from the stream(s) of one socket and not yet taken by quinn; beyond it new
/// ones are dropped.
pub const INBOX: usize = 1024;
/// Streams one [`StreamServerSocket`] serves at once; a stream added beyond it is closed.
pub const MAX_STREAMS: usize = 4096;

/// The length prefix of a frame.
const HEADER_LEN: usize = 2;
/// Bytes of frames gathered into one write: a burst of small datagrams costs one write, not
/// one each, and a long burst still reaches the stream in pieces. Small, since a server may
/// hold [`MAX_STREAMS`] of these buffers.
const WRITE_BATCH: usize = 16 * 1024;
/// A stream with nothing read for this long is closed (QUIC keep-alives come every 2 s).
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
/// Most live streams from one IP address (a whole office may sit behind one NAT; one source
/// must not take every slot).
pub const MAX_STREAMS_PER_SOURCE: usize = 256;
/// Read buffer of a stream, so that small frames do not cost a read each.
const READ_BUFFER: usize = 8 * 1024;
/// How long a stream that ends may take to tell its peer (a TLS close_notify, a TCP FIN);
/// a peer that does not read must not keep the task alive.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// The /48 of the addresses a [`StreamServerSocket`] shows its streams as:
/// `fd6d:6573:6801::/48`, next to [`super::mapped`]'s `fd6d:6573:6800::/48`.
const PREFIX: [u16; 3] = [0xfd6d, 0x6573, 0x6801];
/// The port of every such address (quinn needs one; it means nothing).
const PORT: u16 = 1;
/// The last synthetic address handed out in this process: shared by all server sockets, so
/// that no address is ever reused and a stale connection cannot reach a new client.
static LAST_SYNTHETIC: AtomicU64 = AtomicU64::new(0);

/// Appends `datagram` to `out` as one frame. A datagram that no frame can carry (empty, or
/// longer than [`MAX_STREAM_DATAGRAM`]) is refused and nothing is appended.
pub fn encode_frame(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let len = frame_len(datagram.len()).ok_or_else(|| {
        Error::Protocol(mesh_proto::Error::Encode {
            what: "stream datagram",
            reason: format!(
                "{} bytes; a frame carries 1 to {MAX_STREAM_DATAGRAM}",
                datagram.len()
            ),
        })
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// The length prefix for a datagram of `len` bytes, if a frame can carry it.
fn frame_len(len: usize) -> Option<u16> {
    if len == 0 || len > MAX_STREAM_DATAGRAM {
        return None;
    }
    u16::try_from(len).ok()
}

/// Reads the next frame's datagram, or `None` if the stream ended cleanly between frames.
///
/// The announced length is checked before anything is allocated or read for it: a length of
/// 0 or above [`MAX_STREAM_DATAGRAM`] is an error at once. A stream that ends inside a frame
/// is a truncation error. Not cancel-safe (a frame half-read when the future is dropped is
/// lost); the socket reads each stream in one long-lived task.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Vec<u8>>, Error> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader
            .read(&mut header[filled..])
            .await
            .map_err(|e| Error::Stream(e.to_string()))?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(truncated(HEADER_LEN, filled));
        }
        filled += n;
    }
    let len = usize::from(u16::from_be_bytes(header));
    if len == 0 {
        return Err(Error::Protocol(mesh_proto::Error::Malformed {
            what: "stream datagram",
            reason: "a frame announced 0 bytes".into(),
        }));
    }
    if len > MAX_STREAM_DATAGRAM {
        return Err(Error::Protocol(mesh_proto::Error::FrameTooLarge {
            protocol: "stream datagram",
            len: len as u64,
            limit: MAX_STREAM_DATAGRAM as u32,
        }));
    }
    let mut datagram = vec![0u8; len];
    reader.read_exact(&mut datagram).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            truncated(len, 0)
        } else {
            Error::Stream(e.to_string())
        }
    })?;
    Ok(Some(datagram))
}

fn truncated(needed: usize, available: usize) -> Error {
    Error::Protocol(mesh_proto::Error::Truncated {
        what: "stream datagram frame",
        needed,
        available,
    })
}

/// Writes the datagrams of `outgoing` to `writer` as frames until `outgoing` closes (the
/// socket is gone) or a write fails. Whatever is queued when a write begins goes in that one
/// write, and the stream is flushed only once the queue is empty.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outgoing: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), Error> {
    // Grown on first use: an idle stream costs no batch buffer.
    let mut batch = Vec::new();
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let mut drained = false;
        while let Some(datagram) = next.take() {
            // The sockets only queue datagrams a frame can carry; a refusal here would only
            // drop that one datagram.
            let _ = encode_frame(&datagram, &mut batch);
            if batch.len() >= WRITE_BATCH {
                break;
            }
            match outgoing.try_recv() {
                Ok(datagram) => next = Some(datagram),
                Err(_) => drained = true,
            }
        }
        writer
            .write_all(&batch)
            .await
            .map_err(|e| Error::Stream(e.to_string()))?;
        batch.clear();
        if drained {
            writer
                .flush()
                .await
                .map_err(|e| Error::Stream(e.to_string()))?;
        }
    }
    Ok(())
}

/// Serves one stream until it ends, fails or breaks the framing, until `outgoing` closes, or
/// until `stop` completes: datagrams read are handed to `deliver`, datagrams from `outgoing`
/// are written. `Ok` means an orderly end.
async fn run_stream(
    stream: ByteStream,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    mut deliver: impl FnMut(Vec<u8>) + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (read_half, mut write_half) = tokio::io::split(stream);
    let result = {
        let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
        let reading = async {
            // QUIC over the stream sends keep-alives every 2 s: a stream silent for much
            // longer has a peer that is gone without a word (or never meant to speak), and
            // holds a slot for nothing.
            loop {
                let frame = tokio::time::timeout(STREAM_IDLE, read_frame(&mut reader))
                    .await
                    .map_err(|_| Error::Stream("the stream was silent too long".into()))??;
                match frame {
                    Some(datagram) => deliver(datagram),
                    None => return Ok(()),
                }
            }
        };
        tokio::select! {
            biased;
            () = stop => Ok(()),
            result = reading => result,
            result = write_frames(&mut write_half, &mut outgoing) => result,
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_LIMIT, write_half.shutdown()).await;
    result
}

/// Datagrams read from streams, waiting for quinn, with the waker of quinn's last poll.
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    datagrams: VecDeque<(Vec<u8>, SocketAddr)>,
    waker: Option<Waker>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a datagram from `from` and wakes quinn; a full inbox drops it.
    fn push(&self, datagram: Vec<u8>, from: SocketAddr) {
        let waker = {
            let mut state = self.lock();
            if state.datagrams.len() >= INBOX {
                tracing::trace!(%from, "stream inbox full; datagram dropped");
                return;
            }
            state.datagrams.push_back((datagram, from));
            state.waker.take()
        };
        // Woken outside the lock: the woken task may poll at once on another thread.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut state = self.lock();
        match state.datagrams.pop_front() {
            Some((datagram, from)) => {
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                Poll::Ready(Ok((len, from)))
            }
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Refuses a datagram that no frame can carry, as a UDP socket refuses an oversized one.
fn check_sendable(datagram: &[u8]) -> io::Result<()> {
    match frame_len(datagram.len()) {
        Some(_) => Ok(()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a stream datagram carries 1 to {MAX_STREAM_DATAGRAM} bytes, not {}",
                datagram.len()
            ),
        )),
    }
}

/// What a client socket shares with its stream's task.
#[derive(Debug)]
struct ClientShared {
    inbox: Inbox,
    /// Whether the stream has ended (or [`StreamClientSocket::close`] was called).
    closed: watch::Sender<bool>,
}

/// A [`DatagramSocket`] whose datagrams travel on one byte stream to one peer (a client's
/// connection to a coordinator or relay over TCP).
///
/// Once the stream ends or fails, datagrams sent are dropped and nothing more is received —
/// a UDP socket whose peer vanished — and [`closed`](Self::closed) completes; the owner
/// connects again.
#[derive(Debug)]
pub struct StreamClientSocket {
    peer: SocketAddr,
    local: SocketAddr,
    outgoing: mpsc::Sender<Vec<u8>>,
    shared: Arc<ClientShared>,
}

impl StreamClientSocket {
    /// A socket that sends to and receives from `peer` over `stream`, reporting `local` as its
    /// own address. Give `local` the same address family as `peer`: quinn connects to `peer`
    /// in the family of the local address. Must be called inside a tokio runtime; the stream
    /// is served by a task until it ends or the socket is dropped.
    pub fn new(stream: ByteStream, peer: SocketAddr, local: SocketAddr) -> Arc<Self> {
        let (outgoing, queued) = mpsc::channel(SEND_QUEUE);
        let shared = Arc::new(ClientShared {
            inbox: Inbox::default(),
            closed: watch::Sender::new(false),
        });
        let task_shared = shared.clone();
        tokio::spawn(async move {
            let shared = task_shared;
            let mut stop = shared.closed.subscribe();
            let stop = async move {
                let _ = stop.wait_for(|closed| *closed).await;
            };
            let result = run_stream(
                stream,
                queued,
                |datagram| shared.inbox.push(datagram, peer),
                stop,
            )
            .await;
            match result {
                Ok(()) => tracing::debug!(%peer, "stream to the server ended"),
                Err(e) => tracing::debug!(%peer, "stream to the server failed: {e}"),
            }
            shared.closed.send_replace(true);
        });
        Arc::new(Self {
            peer,
            local,
            outgoing,
            shared,
        })
    }

    /// The peer this socket's stream leads to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Completes once the stream has ended (at once if it has).
    pub async fn closed(&self) {
        let mut closed = self.shared.closed.subscribe();
        // The sender lives in `shared`, which `self` holds, so waiting cannot fail.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Ends the stream (telling the peer, within a second) and drops what is still queued.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }
}

impl DatagramSocket for StreamClientSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        if to != self.peer {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("this stream leads to {}, not {to}", self.peer),
            ));
        }
        check_sendable(datagram)?;
        if self.is_closed() {
            return Ok(());
        }
        // A full queue (the stream is slower than QUIC sends) or a finished task drops the
        // datagram, as a full UDP buffer would; QUIC's loss recovery copes.
        let _ = self.outgoing.try_send(datagram.to_vec());
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sending never waits: a full queue drops.
        Poll::Ready(Ok(()))
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        self.shared.inbox.poll_recv(cx, buf)
    }
}

/// Whether `addr` is one of the made-up addresses a [`StreamServerSocket`] shows its streams
/// as (and not a real one).
pub fn is_stream_addr(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => v6.ip().segments()[..3] == PREFIX,
        SocketAddr::V4(_) => false,
    }
}

/// A fresh made-up address, never handed out before in this process.
fn next_synthetic() -> SocketAddr {
    let n = LAST_SYNTHETIC.fetch_add(1, Ordering::Relaxed) + 1;
    // The 80 bits after the prefix hold the counter; 2^64 streams per process is plenty.
    let ip = Ipv6Addr::new(
        PREFIX[0],
        PREFIX[1],
        PREFIX[2],
        0,
        (n >> 48) as u16,
        (n >> 32) as u16,
        (n >> 16) as u16,
        n as u16,
    );
    SocketAddr::V6(SocketAddrV6::new(ip, PORT, 0, 0))
}

/// One live stream of a server socket.
#[derive(Debug)]
struct Link {
    outgoing: mpsc::Sender<Vec<u8>>,
    real_peer: SocketAddr,
}

type Links = Mutex<HashMap<SocketAddr, Link>>;

fn lock_links(links: &Links) -> MutexGuard<'_, HashMap<SocketAddr, Link>> {
    links.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`DatagramSocket`] for a server's quinn endpoint that serves many byte streams, one per
/// client: each stream appears to quinn as its own made-up address
/// ([`is_stream_addr`]), so one endpoint keeps the clients' connections apart.
///
/// Datagrams to an address whose stream has ended are dropped, as UDP to a vanished peer is.
/// The streams' tasks end when their streams do or when the socket is dropped.
#[derive(Debug)]
pub struct StreamServerSocket {
    local: SocketAddr,
    inbox: Arc<Inbox>,
    /// Held only here (tasks keep a weak reference to forget their own entry), so that
    /// dropping the socket drops every stream's queue and so ends its task.
    links: Arc<Links>,
}

impl StreamServerSocket {
    /// A socket without streams yet, reporting `local` as its address (the listener's, say).
    pub fn new(local: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            local,
            inbox: Arc::default(),
            links: Arc::default(),
        })
    }

    /// Serves `stream` (from `real_peer`) and returns the made-up address quinn will see its
    /// datagrams from, or `None` — the stream closed at once — if [`MAX_STREAMS`] are live.
    /// Must be called inside a tokio runtime.
    pub fn add(&self, stream: ByteStream, real_peer: SocketAddr) -> Option<SocketAddr> {
        let (outgoing, queued) = mpsc::channel(SEND_QUEUE);
        let synthetic = {
            let mut links = lock_links(&self.links);
            if links.len() >= MAX_STREAMS {
                tracing::debug!(%real_peer, "{MAX_STREAMS} streams live; stream closed");
                return None;
            }
            let from_there = links
                .values()
                .filter(|l| l.real_peer.ip() == real_peer.ip())
                .count();
            if from_there >= MAX_STREAMS_PER_SOURCE {
                tracing::debug!(%real_peer, "too many streams from this address; closed");
                return None;
            }
            let synthetic = next_synthetic();
            links.insert(
                synthetic,
                Link {
                    outgoing,
                    real_peer,
                },
            );
            synthetic
        };
        let inbox = self.inbox.clone();
        let links = Arc::downgrade(&self.links);
        tokio::spawn(serve_link(
            stream, queued, inbox, links, synthetic, real_peer,
        ));
        Some(synthetic)
    }

    /// The real address of the client behind a made-up address, while its stream is live.
    pub fn real_peer(&self, synthetic: SocketAddr) -> Option<SocketAddr> {
        lock_links(&self.links)
            .get(&synthetic)
            .map(|link| link.real_peer)
    }

    /// How many streams are live.
    pub fn live_streams(&self) -> usize {
        lock_links(&self.links).len()
    }
}

/// The task of one server stream: serves it, then forgets it.
async fn serve_link(
    stream: ByteStream,
    queued: mpsc::Receiver<Vec<u8>>,
    inbox: Arc<Inbox>,
    links: Weak<Links>,
    synthetic: SocketAddr,
    real_peer: SocketAddr,
) {
    let result = run_stream(
        stream,
        queued,
        |datagram| inbox.push(datagram, synthetic),
        pending(),
    )
    .await;
    if let Some(links) = links.upgrade() {
        lock_links(&links).remove(&synthetic);
    }
    match result {
        Ok(()) => tracing::debug!(%real_peer, %synthetic, "stream client left"),
        Err(e) => tracing::debug!(%real_peer, %synthetic, "stream client failed: {e}"),
    }
}

impl DatagramSocket for StreamServerSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        check_sendable(datagram)?;
        // An unknown or ended stream, or a full queue, drops the datagram as UDP would.
        if let Some(link) = lock_links(&self.links).get(&to) {
            let _ = link.outgoing.try_send(datagram.to_vec());
        }
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sending never waits: a full queue drops.
        Poll::Ready(Ok(()))
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        self.inbox.poll_recv(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::Pin;
    use tokio::io::{DuplexStream, duplex};
    use tokio::time::timeout;

    use crate::path::mapped::{MappedAddrs, PeerId, is_mapped};

    /// Longer than anything here should take; a hang fails the test instead of stalling it.
    const WAIT: Duration = Duration::from_secs(5);

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn frames(datagrams: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for datagram in datagrams {
            encode_frame(datagram, &mut out).unwrap();
        }
        out
    }

    async fn recv(socket: &dyn DatagramSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; MAX_STREAM_DATAGRAM];
        let (len, from) = timeout(WAIT, poll_fn(|cx| socket.poll_recv_from(cx, &mut buf)))
            .await
            .expect("a datagram within the wait")
            .unwrap();
        buf.truncate(len);
        (buf, from)
    }

    fn recv_now(socket: &dyn DatagramSocket) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut buf = [0u8; 16];
        socket.poll_recv_from(&mut Context::from_waker(Waker::noop()), &mut buf)
    }

    /// Records that it was woken.
    #[derive(Default)]
    struct WakeFlag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for WakeFlag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Waits for the far end of a stream to see it end.
    async fn assert_ends(far: &mut DuplexStream) {
        let mut rest = Vec::new();
        timeout(WAIT, far.read_to_end(&mut rest))
            .await
            .expect("the stream ends within the wait")
            .unwrap();
    }

    #[tokio::test]
    async fn many_small_and_max_size_datagrams_cross_a_narrow_pipe_whole_and_in_order() {
        // A 100-byte pipe splits frames across reads and writes at every possible point.
        let (mut near, mut far) = duplex(100);
        let datagrams: Vec<Vec<u8>> = (0..2000usize)
            .map(|i| vec![i as u8; 1 + i % 37])
            .chain((0..5u8).map(|i| vec![i; MAX_STREAM_DATAGRAM]))
            .collect();
        let (queue, mut queued) = mpsc::channel(SEND_QUEUE);
        let writer = tokio::spawn(async move { write_frames(&mut near, &mut queued).await });
        let sending = datagrams.clone();
        tokio::spawn(async move {
            for datagram in sending {
                queue.send(datagram).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(datagram) = read_frame(&mut far).await.unwrap() {
            got.push(datagram);
        }
        assert_eq!(got, datagrams);
        writer.await.unwrap().unwrap();
    }

    /// Counts the writes that reach the stream.
    #[derive(Default)]
    struct CountingWriter {
        writes: usize,
        flushes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_burst_of_queued_datagrams_is_one_write_and_one_flush() {
        let datagrams: Vec<Vec<u8>> = (0..300u16).map(|i| i.to_be_bytes().repeat(5)).collect();
        let (queue, mut queued) = mpsc::channel(SEND_QUEUE);
        for datagram in &datagrams {
            queue.try_send(datagram.clone()).unwrap();
        }
        drop(queue);
        let mut writer = CountingWriter::default();
        write_frames(&mut writer, &mut queued).await.unwrap();
        assert_eq!((writer.writes, writer.flushes), (1, 1));
        assert_eq!(writer.bytes, frames(&datagrams));
    }

    #[tokio::test]
    async fn a_frame_announcing_too_much_is_refused_before_its_payload_is_read() {
        for announced in [MAX_STREAM_DATAGRAM as u16 + 1, u16::MAX] {
            let (mut near, mut far) = duplex(64);
            near.write_all(&announced.to_be_bytes()).await.unwrap();
            // `near` stays open: a reader that waited for the payload would hang here.
            let err = timeout(WAIT, read_frame(&mut far))
                .await
                .expect("refused without waiting for the payload")
                .unwrap_err();
            assert!(
                matches!(err, Error::Protocol(mesh_proto::Error::FrameTooLarge { len, .. })
                    if len == u64::from(announced)),
                "{err}"
            );
        }
        let err = read_frame(&mut &[0u8, 0][..]).await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol(mesh_proto::Error::Malformed { .. })),
            "{err}"
        );
    }

    #[tokio::test]
    async fn input_that_ends_between_frames_is_clean_and_inside_one_is_truncated() {
        assert!(read_frame(&mut &[][..]).await.unwrap().is_none());
        let mut two = frames(&[b"ab".to_vec(), b"c".to_vec()]);
        let mut reader = &two[..];
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"ab");
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"c");
        assert!(read_frame(&mut reader).await.unwrap().is_none());
        for cut in [1, 3, 4] {
            two.truncate(cut);
            let err = read_frame(&mut &two[..]).await.unwrap_err();
            assert!(
                matches!(err, Error::Protocol(mesh_proto::Error::Truncated { .. })),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn only_datagrams_a_frame_can_carry_are_encoded() {
        let mut out = Vec::new();
        assert!(encode_frame(&[], &mut out).is_err());
        assert!(encode_frame(&[0; MAX_STREAM_DATAGRAM + 1], &mut out).is_err());
        assert!(out.is_empty(), "a refused datagram leaves nothing behind");
        encode_frame(&[7; MAX_STREAM_DATAGRAM], &mut out).unwrap();
        assert_eq!(out[..2], [0x08, 0x00]);
        assert_eq!(out.len(), 2 + MAX_STREAM_DATAGRAM);
    }

    #[tokio::test]
    async fn a_client_socket_exchanges_datagrams_with_its_peer_only() {
        let peer = addr("192.0.2.1:443");
        let (near, mut far) = duplex(4096);
        let socket = StreamClientSocket::new(Box::new(near), peer, addr("198.51.100.2:9"));
        assert_eq!(socket.local_addr().unwrap(), addr("198.51.100.2:9"));

        // A receive polled before anything arrives is woken by the arrival.
        let woken = Arc::new(WakeFlag::default());
        let waker = Waker::from(woken.clone());
        let mut buf = [0u8; 64];
        assert!(
            socket
                .poll_recv_from(&mut Context::from_waker(&waker), &mut buf)
                .is_pending()
        );
        far.write_all(&frames(&[b"from the server".to_vec()]))
            .await
            .unwrap();
        timeout(WAIT, async {
            while !woken.0.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("woken");
        assert_eq!(
            recv(socket.as_ref()).await,
            (b"from the server".to_vec(), peer)
        );

        socket.try_send_to(b"to the server", peer).unwrap();
        let sent = timeout(WAIT, read_frame(&mut far)).await.unwrap().unwrap();
        assert_eq!(sent.as_deref(), Some(&b"to the server"[..]));

        let elsewhere = socket.try_send_to(b"x", addr("192.0.2.2:443")).unwrap_err();
        assert_eq!(elsewhere.kind(), io::ErrorKind::AddrNotAvailable);
        for unframeable in [&[][..], &[0; MAX_STREAM_DATAGRAM + 1][..]] {
            let err = socket.try_send_to(unframeable, peer).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(!socket.is_closed());
    }

    #[tokio::test]
    async fn closing_the_stream_closes_the_client_socket() {
        let peer = addr("192.0.2.1:443");
        let (near, far) = duplex(4096);
        let socket = StreamClientSocket::new(Box::new(near), peer, addr("198.51.100.2:9"));
        drop(far);
        timeout(WAIT, socket.closed()).await.expect("closed");
        assert!(socket.is_closed());
        // Like UDP to a vanished peer: sends vanish, nothing arrives.
        socket.try_send_to(b"anyone?", peer).unwrap();
        assert!(recv_now(socket.as_ref()).is_pending());
    }

    #[tokio::test]
    async fn a_bad_frame_closes_the_client_socket_and_its_stream() {
        let (near, mut far) = duplex(4096);
        let socket = StreamClientSocket::new(Box::new(near), addr("192.0.2.1:443"), addr("[::]:0"));
        far.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
        timeout(WAIT, socket.closed()).await.expect("closed");
        assert_ends(&mut far).await;
        assert!(recv_now(socket.as_ref()).is_pending());
    }

    #[tokio::test]
    async fn closing_or_dropping_a_client_socket_ends_its_stream() {
        let (near, mut far) = duplex(4096);
        let socket = StreamClientSocket::new(Box::new(near), addr("192.0.2.1:443"), addr("[::]:0"));
        socket.close();
        assert!(socket.is_closed());
        assert_ends(&mut far).await;

        let (near, mut far) = duplex(4096);
        let socket = StreamClientSocket::new(Box::new(near), addr("192.0.2.1:443"), addr("[::]:0"));
        drop(socket);
        assert_ends(&mut far).await;
    }

    /// Waits until the socket has forgotten ended streams down to `live`.
    async fn wait_live(socket: &StreamServerSocket, live: usize) {
        timeout(WAIT, async {
            while socket.live_streams() != live {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("streams forgotten within the wait");
    }

    #[tokio::test]
    async fn a_server_socket_keeps_its_streams_apart_by_made_up_address() {
        let server = StreamServerSocket::new(addr("[::]:443"));
        let (near_a, mut far_a) = duplex(4096);
        let (near_b, mut far_b) = duplex(4096);
        let real_a = addr("198.51.100.1:1000");
        let real_b = addr("198.51.100.2:2000");
        let a = server.add(Box::new(near_a), real_a).unwrap();
        let b = server.add(Box::new(near_b), real_b).unwrap();
        assert_ne!(a, b);
        assert!(is_stream_addr(a) && is_stream_addr(b));
        assert_eq!(server.real_peer(a), Some(real_a));
        assert_eq!(server.real_peer(b), Some(real_b));
        assert_eq!(server.live_streams(), 2);

        far_b
            .write_all(&frames(&[b"from b".to_vec()]))
            .await
            .unwrap();
        assert_eq!(recv(server.as_ref()).await, (b"from b".to_vec(), b));
        far_a
            .write_all(&frames(&[b"from a".to_vec()]))
            .await
            .unwrap();
        assert_eq!(recv(server.as_ref()).await, (b"from a".to_vec(), a));

        server.try_send_to(b"to a", a).unwrap();
        server.try_send_to(b"to b", b).unwrap();
        server.try_send_to(b"to nobody", next_synthetic()).unwrap();
        let to_a = timeout(WAIT, read_frame(&mut far_a))
            .await
            .unwrap()
            .unwrap();
        let to_b = timeout(WAIT, read_frame(&mut far_b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(to_a.as_deref(), Some(&b"to a"[..]));
        assert_eq!(to_b.as_deref(), Some(&b"to b"[..]));

        // An ended stream is forgotten; sending to its address is dropped quietly.
        drop(far_a);
        wait_live(&server, 1).await;
        assert_eq!(server.real_peer(a), None);
        server.try_send_to(b"gone", a).unwrap();
        assert_eq!(server.real_peer(b), Some(real_b));
    }

    #[tokio::test]
    async fn a_stream_beyond_the_cap_is_closed_at_once() {
        let server = StreamServerSocket::new(addr("[::]:443"));
        // Each from its own address, so only the overall cap applies.
        let from = |i: usize| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1));
        let mut fars = Vec::new();
        for i in 0..MAX_STREAMS {
            let (near, far) = duplex(64);
            fars.push(far);
            assert!(server.add(Box::new(near), from(i)).is_some(), "{i}");
        }
        let (near, mut refused) = duplex(64);
        assert_eq!(server.add(Box::new(near), from(MAX_STREAMS)), None);
        assert_ends(&mut refused).await;
        assert_eq!(server.live_streams(), MAX_STREAMS);

        // Room again once a stream has ended.
        fars.pop();
        wait_live(&server, MAX_STREAMS - 1).await;
        let (near, _far) = duplex(64);
        assert!(server.add(Box::new(near), from(MAX_STREAMS + 1)).is_some());
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let server = StreamServerSocket::new(addr("[::]:443"));
        let mut fars = Vec::new();
        for i in 0..MAX_STREAMS_PER_SOURCE {
            let (near, far) = duplex(64);
            fars.push(far);
            assert!(
                server.add(Box::new(near), addr("198.51.100.1:1")).is_some(),
                "{i}"
            );
        }
        let (near, mut refused) = duplex(64);
        assert_eq!(server.add(Box::new(near), addr("198.51.100.1:2")), None);
        assert_ends(&mut refused).await;
        // Another address still gets in.
        let (near, _far) = duplex(64);
        assert!(server.add(Box::new(near), addr("198.51.100.2:1")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_closed() {
        let server = StreamServerSocket::new(addr("[::]:443"));
        let (near, mut far) = duplex(64);
        server.add(Box::new(near), addr("198.51.100.1:1")).unwrap();
        tokio::time::sleep(STREAM_IDLE + Duration::from_secs(1)).await;
        assert_ends(&mut far).await;
        wait_live(&server, 0).await;
    }

    #[tokio::test]
    async fn dropping_a_server_socket_ends_its_streams() {
        let server = StreamServerSocket::new(addr("[::]:443"));
        let (near, mut far) = duplex(64);
        server.add(Box::new(near), addr("198.51.100.1:1")).unwrap();
        drop(server);
        assert_ends(&mut far).await;
    }

    #[test]
    fn stream_addresses_are_fresh_and_never_mapped_or_real() {
        let (one, two) = (next_synthetic(), next_synthetic());
        assert_ne!(one, two);
        assert!(is_stream_addr(one) && !is_mapped(one));
        let peer = PeerId {
            key: mesh_proto::SecretKey::from_seed(&[1; 32]).node_id(),
            instance: None,
        };
        let mapped = MappedAddrs::default().addr_of(peer);
        assert!(!is_stream_addr(mapped));
        for real in ["203.0.113.5:7422", "[2001:db8::1]:7422", "[fd00::1]:1"] {
            assert!(!is_stream_addr(addr(real)), "{real}");
        }
    }
}
