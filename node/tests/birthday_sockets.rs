//! Birthday probing's extra sockets on real UDP (loopback): the hard side opens
//! `BIRTHDAY_SOCKETS` sockets toward the easy side's address, each pings it, the easy side's
//! pongs confirm paths through them, and when the punch ends only sockets that carry a
//! confirmed path stay open — at most the candidate bound of them — while the rest are closed.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_node::endpoint::Endpoint;
use mesh_node::path::punch::{BIRTHDAY_AFTER, BIRTHDAY_SOCKETS, PUNCH_WINDOW};
use mesh_node::path::socket::{PathSocket, PunchTarget};
use mesh_node::path::state::MAX_CANDIDATES;
use mesh_node::udp::{UdpBinder, UdpSocket};
use mesh_proto::nat::NatMapping;
use mesh_proto::socket::{DatagramSocket, SocketBinder};
use mesh_proto::{SecretKey, SystemClock};
use tokio::time::Instant;

/// Binds like [`UdpBinder`] and remembers every port it handed out.
#[derive(Debug, Default)]
struct CountingBinder {
    ports: Mutex<HashSet<u16>>,
}

impl SocketBinder for CountingBinder {
    fn bind(&self, _addr: SocketAddr) -> std::io::Result<Arc<dyn DatagramSocket>> {
        // Loopback only: the test must not listen on other interfaces.
        let socket = UdpBinder.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        self.ports
            .lock()
            .unwrap()
            .insert(socket.local_addr()?.port());
        Ok(socket)
    }
}

/// The hard side's primary socket as its NAT would have it against a port-restricted peer it
/// has no mapping toward yet: nothing from `blocked` comes in.
#[derive(Debug)]
struct Filtered {
    inner: Arc<UdpSocket>,
    blocked: SocketAddr,
}

impl DatagramSocket for Filtered {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> std::io::Result<()> {
        self.inner.try_send_to(datagram, to)
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_send_ready(cx)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<(usize, SocketAddr)>> {
        loop {
            match self.inner.poll_recv_from(cx, buf) {
                Poll::Ready(Ok((_, from))) if from == self.blocked => {}
                other => return other,
            }
        }
    }
}

/// A hard side (random NAT, extra sockets from a counting binder) and an easy side (no NAT)
/// on loopback, with endpoints reading their primary sockets; with `filtered`, nothing from
/// the easy side reaches the hard side's primary socket. The hard side starts punching.
struct Pair {
    hard: Arc<PathSocket>,
    easy: Arc<PathSocket>,
    easy_key: SecretKey,
    easy_addr: SocketAddr,
    binder: Arc<CountingBinder>,
    started: Instant,
    _endpoints: [Endpoint; 2],
}

fn punching_pair(seed: u8, filtered: bool) -> Pair {
    let hard_key = SecretKey::from_seed(&[seed; 32]);
    let easy_key = SecretKey::from_seed(&[seed + 1; 32]);
    let hard_udp = Arc::new(UdpSocket::bind(([127, 0, 0, 1], 0).into()).unwrap());
    let easy_udp = Arc::new(UdpSocket::bind(([127, 0, 0, 1], 0).into()).unwrap());
    let easy_addr = easy_udp.local_addr().unwrap();
    let hard_primary: Arc<dyn DatagramSocket> = if filtered {
        Arc::new(Filtered {
            inner: hard_udp,
            blocked: easy_addr,
        })
    } else {
        hard_udp
    };
    let hard = PathSocket::new(hard_key.clone(), hard_primary, Arc::new(SystemClock));
    let easy = PathSocket::new(easy_key.clone(), easy_udp, Arc::new(SystemClock));
    let binder = Arc::new(CountingBinder::default());
    hard.set_binder(binder.clone());
    tokio::spawn(hard.clone().drive());
    tokio::spawn(easy.clone().drive());
    // The endpoints read the primary sockets (probes are answered as they are read).
    let endpoints = [
        Endpoint::new(hard_key, hard.clone(), &[b"birthday/1"]).unwrap(),
        Endpoint::new(easy_key.clone(), easy.clone(), &[b"birthday/1"]).unwrap(),
    ];
    // The hard side maps per destination at random. The easy side is told it has no NAT, so
    // it sprays nothing (on loopback a spray would hit other programs' ports).
    hard.assume_nat(NatMapping::Random {
        ip: [127, 0, 0, 1].into(),
    });
    easy.assume_nat(NatMapping::Open);
    let started = Instant::now();
    hard.punch(PunchTarget {
        peer: easy_key.node_id(),
        instance: Some(easy.instance()),
        addrs: vec![easy_addr],
        nat: NatMapping::EndpointIndependent,
        start: started,
    });
    Pair {
        hard,
        easy,
        easy_key,
        easy_addr,
        binder,
        started,
        _endpoints: endpoints,
    }
}

#[tokio::test]
async fn extra_sockets_open_ping_the_peer_and_only_those_with_a_confirmed_path_stay() {
    // The easy side's answers to the primary socket are filtered out: only extra sockets
    // can make a path.
    let Pair {
        hard,
        easy,
        easy_key,
        binder,
        started,
        _endpoints,
        ..
    } = punching_pair(1, true);
    // Until the extra sockets open, none is.
    tokio::time::sleep(BIRTHDAY_AFTER / 2).await;
    assert_eq!(hard.extra_sockets_open(), 0);
    // Once they are open and the easy side answered through them.
    tokio::time::sleep(BIRTHDAY_AFTER + Duration::from_millis(500)).await;
    let counters = hard.counters();
    assert_eq!(counters.extra_sockets_opened, BIRTHDAY_SOCKETS as u64);
    assert_eq!(binder.ports.lock().unwrap().len(), BIRTHDAY_SOCKETS);
    assert_eq!(hard.extra_sockets_open(), BIRTHDAY_SOCKETS);
    // The easy side heard a ping from (nearly) every one of them: signed, accepted.
    assert!(
        easy.counters().probes_accepted >= BIRTHDAY_SOCKETS as u64,
        "{:?}",
        easy.counters()
    );
    let info = hard.path_info(easy_key.node_id()).unwrap();
    let through_extras = info
        .candidates
        .iter()
        .filter(|c| c.confirmed && c.route.via != 0)
        .count();
    assert!(through_extras >= 1, "{info:?}");

    // The punch ends: the sockets with a confirmed path stay (bounded by the candidate
    // table), every other one is closed.
    tokio::time::sleep_until(started + PUNCH_WINDOW + Duration::from_millis(300)).await;
    let kept = hard.extra_sockets_open();
    assert!((1..=MAX_CANDIDATES).contains(&kept), "{kept} kept");
    assert_eq!(hard.counters().extra_sockets_kept, kept as u64);
    let info = hard.path_info(easy_key.node_id()).unwrap();
    let vias: HashSet<u16> = info
        .candidates
        .iter()
        .filter(|c| c.route.via != 0)
        .map(|c| c.route.via)
        .collect();
    assert_eq!(
        vias.len(),
        kept,
        "every route through an extra socket is through a kept one: {info:?}"
    );
}

#[tokio::test]
async fn a_peer_that_answers_the_primary_socket_gets_no_extra_sockets() {
    let Pair {
        hard,
        easy_key,
        easy_addr,
        binder,
        _endpoints,
        ..
    } = punching_pair(3, false);
    // The first round's ping is answered long before the extra sockets' time comes.
    tokio::time::sleep(BIRTHDAY_AFTER * 2).await;
    assert_eq!(hard.counters().extra_sockets_opened, 0);
    assert!(binder.ports.lock().unwrap().is_empty());
    let info = hard.path_info(easy_key.node_id()).unwrap();
    assert_eq!(
        info.path,
        mesh_node::path::state::Path::Direct(mesh_node::path::state::Route::primary(easy_addr))
    );
}
