//! Hole punching: what each side sends when the coordinator brings two peers together
//! (DESIGN.md, "Connections"), decided by [`plan`] — a plain function of both sides' NAT
//! mappings, so every case is unit-tested — and carried out by the path socket
//! ([`super::socket::PathSocket::punch`]) from a common start time.
//!
//! Every punch pings the peer's candidates (its LAN addresses and the address the coordinator
//! saw) in a few quick rounds; a ping that arrives from the peer is answered with a pong and a
//! ping of our own, so whichever side's NAT opens first, the other's next packet completes a
//! round trip. Against a NAT that maps per destination, that is not enough:
//!
//! - a *sequential* allocator's next mapping is predicted from the newest one the coordinator
//!   saw: the easy side pings the next [`PREDICTED_PORTS`] ports of the hard side's address;
//! - a *random* allocator's is found by birthday probing: the hard side opens
//!   [`BIRTHDAY_SOCKETS`] extra sockets, each pinging the easy side's address (each makes a
//!   mapping the easy side's packets may enter by), while the easy side pings
//!   [`BIRTHDAY_PROBES`] random ports of the hard side's address: with 256 of about 64,500
//!   ports open, 1,024 guesses find one about 98 % of the time (Tailscale's figures). The
//!   socket that gets through is kept for that peer; the rest close when the punch ends.
//!
//! A NAT checked as sequential may be a random one whose two mappings happened to land close
//! (about one check in a thousand): against it, the random spray and the extra sockets follow
//! the prediction as a fallback, [`BIRTHDAY_AFTER`] into the punch, unless the prediction has
//! worked by then.
//!
//! Two NATs that both map per destination get no direct path: each side would have to predict
//! the other's next mapping exactly, which any third mapping breaks. They stay on the relay.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mesh_proto::nat::NatMapping;
use rand::Rng;

/// Extra sockets the hard side opens for birthday probing.
pub const BIRTHDAY_SOCKETS: usize = 256;
/// Random ports the easy side pings for birthday probing, per pass.
pub const BIRTHDAY_PROBES: usize = 1024;
/// Spray passes against a random NAT: the second (other random ports) goes out only if the
/// first found nothing by [`SECOND_PASS`], taking the miss rate from about 2 % to about
/// 0.05 %. (The first pass reaches the hard NAT before the hard side's extra sockets have
/// made their mappings, so it only opens our filter for the extra sockets' pings to find;
/// the second finds the mappings themselves: two independent draws.)
pub const SPRAY_PASSES: usize = 2;
/// When the second spray pass starts, after the start: once the hard side's extra sockets
/// ([`BIRTHDAY_AFTER`]) have made their mappings.
pub const SECOND_PASS: Duration = Duration::from_millis(400);
/// Sprayed pings sent at once; the next batch follows [`SPRAY_EVERY`] later (so a spray is
/// about 1,024 × 170 bytes over 160 ms: a short burst, not a flood).
pub const SPRAY_BATCH: usize = 64;
/// The gap between sprayed batches.
pub const SPRAY_EVERY: Duration = Duration::from_millis(10);
/// Ports after a sequential NAT's newest mapping that the easy side pings.
pub const PREDICTED_PORTS: u16 = 64;
/// When unconfirmed candidates are pinged again after the start, while no direct path is
/// confirmed (then the regular schedule of `path::state` goes on).
pub const ROUNDS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(150),
    Duration::from_millis(400),
    Duration::from_millis(900),
];
/// When the hard side opens its extra sockets, after the start: by then a peer whose filter
/// lets any port of our address in (no NAT, full cone, address-restricted) has answered our
/// primary socket's ping, and no extra socket is needed — a path through one the peer chose
/// would die when the punch closes it. Against a port-restricted peer, whose filter opened
/// for the ports it sprayed at the start, the extra sockets' pings find one of those ports as
/// well as its spray would find them.
pub const BIRTHDAY_AFTER: Duration = Duration::from_millis(200);
/// When the extra sockets of a birthday attempt ping the easy side again (after the first at
/// the start): the easy side's spray may have reached the hard NAT before their mappings did,
/// and then opened the easy side's filter for the next ping.
pub const BIRTHDAY_REPING: Duration = Duration::from_millis(600);
/// How long a punch's extra sockets live: those carrying a confirmed path are kept (the peer
/// may have chosen one), the rest are closed.
pub const PUNCH_WINDOW: Duration = Duration::from_secs(3);
/// The latest a punch starts: a start time further away than this (a clock gone wrong) is
/// taken as now.
pub const MAX_START_DELAY: Duration = Duration::from_secs(2);
/// The lowest port a NAT hands out (Linux `masquerade` keeps below 1,024 for itself).
const LOWEST_NAT_PORT: u16 = 1024;

/// What one side does beyond pinging the peer's candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ping these addresses once per round from the primary socket (a sequential NAT's
    /// predicted next mappings).
    Predict(Vec<SocketAddr>),
    /// Ping [`BIRTHDAY_PROBES`] random ports of `ip` from the primary socket (in
    /// [`SPRAY_PASSES`] passes), starting `after` the start.
    SprayRandom {
        /// The hard side's address.
        ip: IpAddr,
        /// When the first pass starts, after the punch's start.
        after: Duration,
    },
    /// Open [`BIRTHDAY_SOCKETS`] extra sockets, each pinging this address.
    OpenSockets(SocketAddr),
}

/// What this side does, given how its NAT (`mine`) and the peer's (`theirs`) map, and the
/// peer's candidates (`their_addrs`, the coordinator's observation first).
pub fn plan(mine: NatMapping, theirs: NatMapping, their_addrs: &[SocketAddr]) -> Vec<Step> {
    // Both map per destination: nothing predicts both sides at once (see the module docs).
    if mine.per_destination() && theirs.per_destination() {
        return Vec::new();
    }
    match theirs {
        // Our NAT filters what it has not sent to (unless it is no NAT at all): ping where
        // the peer's next mapping toward us will be.
        NatMapping::Sequential { latest, step } if mine == NatMapping::EndpointIndependent => {
            vec![
                Step::Predict(predicted(latest, step, PREDICTED_PORTS)),
                Step::SprayRandom {
                    ip: latest.ip(),
                    after: BIRTHDAY_AFTER,
                },
            ]
        }
        NatMapping::Random { ip } if mine == NatMapping::EndpointIndependent => {
            vec![Step::SprayRandom {
                ip,
                after: Duration::ZERO,
            }]
        }
        // The peer's one mapping lets only what it sent to in, and ours changes per
        // destination: open many of ours toward it, for its spray to find (as a fallback
        // when ours is thought sequential: the peer predicts first).
        NatMapping::EndpointIndependent if mine.per_destination() => their_addrs
            .first()
            .map(|addr| vec![Step::OpenSockets(*addr)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The `count` ports after `latest` a sequential allocator hands out next, `step` apart.
pub fn predicted(latest: SocketAddr, step: i8, count: u16) -> Vec<SocketAddr> {
    let mut port = i32::from(latest.port());
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        port += i32::from(step);
        // Allocators wrap around to the bottom of their range.
        if port > i32::from(u16::MAX) {
            port = i32::from(LOWEST_NAT_PORT);
        } else if port < i32::from(LOWEST_NAT_PORT) {
            port = i32::from(u16::MAX);
        }
        let p = u16::try_from(port).unwrap_or(LOWEST_NAT_PORT);
        out.push(SocketAddr::new(latest.ip(), p));
    }
    out
}

/// `count` distinct random ports of `ip` a NAT may hand out.
pub fn random_ports(ip: IpAddr, count: usize, rng: &mut impl Rng) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    let span = usize::from(u16::MAX - LOWEST_NAT_PORT) + 1;
    while out.len() < count.min(span) {
        let port = rng.random_range(LOWEST_NAT_PORT..=u16::MAX);
        if seen.insert(port) {
            out.push(SocketAddr::new(ip, port));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const EASY: NatMapping = NatMapping::EndpointIndependent;

    fn random() -> NatMapping {
        NatMapping::Random {
            ip: IpAddr::from([198, 51, 100, 9]),
        }
    }

    #[test]
    fn the_plan_follows_both_mappings() {
        let theirs = [a("198.51.100.9:4000"), a("10.0.0.2:7422")];
        // Easy against easy, or against no NAT: candidates only.
        assert!(plan(EASY, EASY, &theirs).is_empty());
        assert!(plan(NatMapping::Open, random(), &theirs).is_empty());
        assert!(plan(random(), NatMapping::Open, &theirs).is_empty());
        // Easy against random: spray; random against easy: open sockets toward its address.
        assert_eq!(
            plan(EASY, random(), &theirs),
            vec![Step::SprayRandom {
                ip: IpAddr::from([198, 51, 100, 9]),
                after: Duration::ZERO
            }]
        );
        assert_eq!(
            plan(random(), EASY, &theirs),
            vec![Step::OpenSockets(a("198.51.100.9:4000"))]
        );
        // Easy against sequential: predicted ports, then (should it be a random NAT checked
        // as sequential by chance) a random spray; sequential against easy: extra sockets as
        // the same fallback.
        let sequential = NatMapping::Sequential {
            latest: a("198.51.100.9:2000"),
            step: 1,
        };
        match plan(EASY, sequential, &theirs).as_slice() {
            [Step::Predict(ports), Step::SprayRandom { ip, after }] => {
                assert_eq!(ports.len(), usize::from(PREDICTED_PORTS));
                assert_eq!(ports[0], a("198.51.100.9:2001"));
                assert_eq!(*ip, IpAddr::from([198, 51, 100, 9]));
                assert_eq!(*after, BIRTHDAY_AFTER);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan(sequential, EASY, &theirs),
            vec![Step::OpenSockets(a("198.51.100.9:4000"))]
        );
        // Hard against hard: the relay.
        assert!(plan(random(), sequential, &theirs).is_empty());
        assert!(plan(random(), random(), &theirs).is_empty());
        // Unknown (no check answered): candidates only.
        assert!(plan(NatMapping::Unknown, random(), &theirs).is_empty());
    }

    #[test]
    fn predictions_wrap_and_random_ports_are_distinct_and_in_range() {
        let near_top = predicted(a("192.0.2.1:65534"), 1, 3);
        assert_eq!(
            near_top.iter().map(SocketAddr::port).collect::<Vec<_>>(),
            vec![65535, 1024, 1025]
        );
        let down = predicted(a("192.0.2.1:1025"), -1, 2);
        assert_eq!(
            down.iter().map(SocketAddr::port).collect::<Vec<_>>(),
            vec![1024, 65535]
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let ports = random_ports(IpAddr::from([192, 0, 2, 1]), BIRTHDAY_PROBES, &mut rng);
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), BIRTHDAY_PROBES);
        assert!(ports.iter().all(|p| p.port() >= LOWEST_NAT_PORT));
    }
}
