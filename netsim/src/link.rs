//! A link as a pure packet model: a datagram goes in at `now`, and out comes its arrival time at
//! the other end or the reason it is dropped.
//!
//! [`Link`] applies, in this order: the link being down, the MTU (the don't-fragment bit is set,
//! so an oversized datagram is dropped rather than fragmented), random loss (at enqueue, as
//! `netem` does, so a lost packet takes no bandwidth), the bandwidth (one packet serialized after
//! another, behind a drop-tail queue of [`QUEUE_LIMIT`]), then latency and jitter. It does no I/O
//! and reads no clock, so the simulator can run many links in virtual time and a failure replays
//! from its seed.
//!
//! Reproducibility: the RNG is drawn from only when a setting needs it — one draw for loss when
//! `loss > 0`, then one for jitter when `jitter > 0` and the packet is delivered — so a run is
//! the same for the same seed, and adding a lossless, jitter-free link to a world does not shift
//! the draws of the others.

use std::fmt;
use std::time::Duration;

use rand::{Rng, RngCore};

use crate::topology::{IP_UDP_HEADERS, LinkConfig};

/// The longest a packet may wait in a link's queue, counting its own serialization; a packet that
/// would wait longer is dropped (drop-tail). 200 ms is a generous home-router buffer: long enough
/// to absorb bursts, short enough that a flooded link shows loss instead of unbounded delay.
pub const QUEUE_LIMIT: Duration = Duration::from_millis(200);

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Why a link dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkDrop {
    /// Larger than the link's MTU on the wire (payload plus [`IP_UDP_HEADERS`]).
    TooBig,
    /// Lost at random, per the link's loss rate.
    Lost,
    /// The queue in front of the link was full ([`QUEUE_LIMIT`]).
    QueueFull,
    /// The link is down.
    Down,
}

impl LinkDrop {
    /// A short name for reports and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooBig => "too-big",
            Self::Lost => "lost",
            Self::QueueFull => "queue-full",
            Self::Down => "down",
        }
    }
}

impl fmt::Display for LinkDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One direction of a link (see the module docs).
#[derive(Clone, Debug)]
pub struct Link {
    config: LinkConfig,
    up: bool,
    /// When the last accepted packet has finished serializing: the next one starts no earlier.
    busy_until: Duration,
}

impl Link {
    /// An idle link that is up.
    pub fn new(config: LinkConfig) -> Self {
        Self {
            config,
            up: true,
            busy_until: Duration::ZERO,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes its settings from now on; packets already accepted keep their arrival times.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Brings it up or takes it down; a link that is down drops everything.
    pub fn set_up(&mut self, up: bool) {
        self.up = up;
    }

    /// Whether it is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// A datagram with `payload` UDP bytes entering the link at `now`: its arrival time at the
    /// other end, or why it is dropped.
    ///
    /// The departure time is when the packet has finished serializing behind the packets ahead
    /// of it (`now` when the bandwidth is unlimited); the arrival is the departure plus the
    /// latency plus a uniform draw from `[0, jitter]`. Jitter is drawn per packet, so a later
    /// packet may arrive before an earlier one: the link reorders, as a real path with jitter
    /// can.
    pub fn transmit(
        &mut self,
        now: Duration,
        payload: usize,
        rng: &mut dyn RngCore,
    ) -> Result<Duration, LinkDrop> {
        if !self.up {
            return Err(LinkDrop::Down);
        }
        // usize always fits in u64 on the platforms we build for; saturate rather than wrap.
        let wire_bytes = u64::try_from(payload)
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(IP_UDP_HEADERS));
        if wire_bytes > u64::from(self.config.mtu) {
            return Err(LinkDrop::TooBig);
        }
        if self.config.loss > 0.0 && rng.random::<f64>() < self.config.loss {
            return Err(LinkDrop::Lost);
        }
        let departure = match self.config.bandwidth_bps {
            None => now,
            Some(bps) => {
                let start = now.max(self.busy_until);
                let departure = start.saturating_add(serialization_time(wire_bytes, bps));
                // An idle link always takes the packet, however slow: the limit is on queueing
                // behind others, and a lone packet whose serialization alone exceeds it would
                // otherwise never get through.
                let link_busy = self.busy_until > now;
                if link_busy && departure - now > QUEUE_LIMIT {
                    return Err(LinkDrop::QueueFull);
                }
                self.busy_until = departure;
                departure
            }
        };
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            let max_nanos = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rng.random_range(0..=max_nanos))
        };
        Ok(departure
            .saturating_add(self.config.latency)
            .saturating_add(jitter))
    }
}

/// How long `wire_bytes` take to serialize at `bps` bits per second, rounded up to the
/// nanosecond so that no packet is free.
pub(crate) fn serialization_time(wire_bytes: u64, bps: u64) -> Duration {
    let bits = u128::from(wire_bytes) * 8;
    let bps = u128::from(bps.max(1));
    let nanos = (bits * NANOS_PER_SECOND).div_ceil(bps);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn link(config: LinkConfig) -> Link {
        Link::new(config)
    }

    #[test]
    fn a_datagram_over_the_mtu_is_too_big() {
        let mut link = link(LinkConfig::default());
        let mtu = usize::try_from(link.config().mtu).unwrap();
        let headers = usize::try_from(IP_UDP_HEADERS).unwrap();
        let fits = link.transmit(ms(0), mtu - headers, &mut rng(1));
        assert_eq!(fits, Ok(ms(1)));
        let too_big = link.transmit(ms(0), mtu - headers + 1, &mut rng(1));
        assert_eq!(too_big, Err(LinkDrop::TooBig));
    }

    #[test]
    fn no_loss_never_drops_and_full_loss_always_drops() {
        let mut lossless = link(LinkConfig::default());
        let mut dead = link(LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        });
        let mut rng = rng(2);
        for i in 0..1000 {
            assert!(lossless.transmit(ms(i), 100, &mut rng).is_ok());
            assert_eq!(dead.transmit(ms(i), 100, &mut rng), Err(LinkDrop::Lost));
        }
    }

    #[test]
    fn loss_drops_about_its_share() {
        let mut lossy = link(LinkConfig {
            loss: 0.3,
            ..LinkConfig::default()
        });
        let mut rng = rng(3);
        let lost = (0..10_000)
            .filter(|&i| lossy.transmit(ms(i), 100, &mut rng) == Err(LinkDrop::Lost))
            .count();
        // The standard deviation is sqrt(10000 * 0.3 * 0.7) ≈ 46; allow more than 4 of them.
        assert!((2800..=3200).contains(&lost), "{lost} lost");
    }

    #[test]
    fn bandwidth_spaces_back_to_back_packets_by_their_serialization_time() {
        let mut slow = link(LinkConfig {
            latency: ms(10),
            bandwidth_bps: Some(1_000_000),
            ..LinkConfig::default()
        });
        let arrivals: Vec<Duration> = (0..5)
            .map(|_| slow.transmit(ms(0), 1000, &mut rng(4)).unwrap())
            .collect();
        // (1000 + 28) bytes * 8 = 8224 bits at 1 Mbit/s.
        let spacing = Duration::from_micros(8224);
        assert_eq!(arrivals[0], ms(10) + spacing);
        for pair in arrivals.windows(2) {
            assert_eq!(pair[1] - pair[0], spacing);
        }
        // Once the queue has drained, a packet goes out right away.
        assert_eq!(
            slow.transmit(ms(100), 1000, &mut rng(4)),
            Ok(ms(110) + spacing)
        );
    }

    #[test]
    fn a_queue_longer_than_the_limit_drops() {
        let mut slow = link(LinkConfig {
            bandwidth_bps: Some(1_000_000),
            ..LinkConfig::default()
        });
        let spacing = Duration::from_micros(8224);
        let fit = u32::try_from(QUEUE_LIMIT.as_nanos() / spacing.as_nanos()).unwrap();
        for i in 0..fit {
            assert!(
                slow.transmit(ms(0), 1000, &mut rng(5)).is_ok(),
                "packet {i}"
            );
        }
        assert_eq!(
            slow.transmit(ms(0), 1000, &mut rng(5)),
            Err(LinkDrop::QueueFull)
        );
        // The dropped packet took no time: the next one fits once one has left.
        let later = slow.transmit(spacing, 1000, &mut rng(5));
        assert_eq!(later, Ok(spacing * (fit + 1) + ms(1)));
    }

    #[test]
    fn an_idle_link_takes_one_packet_however_slow() {
        let mut crawl = link(LinkConfig {
            bandwidth_bps: Some(1000),
            ..LinkConfig::default()
        });
        assert!(crawl.transmit(ms(0), 1000, &mut rng(6)).is_ok());
        assert_eq!(
            crawl.transmit(ms(0), 1000, &mut rng(6)),
            Err(LinkDrop::QueueFull)
        );
    }

    #[test]
    fn jitter_stays_within_latency_and_latency_plus_jitter() {
        let mut jittery = link(LinkConfig {
            latency: ms(20),
            jitter: ms(10),
            ..LinkConfig::default()
        });
        let mut rng = rng(7);
        let delays: Vec<Duration> = (0..1000)
            .map(|i| jittery.transmit(ms(i), 100, &mut rng).unwrap() - ms(i))
            .collect();
        assert!(delays.iter().all(|d| (ms(20)..=ms(30)).contains(d)));
        // Drawn, not constant: both halves of the range are used.
        assert!(delays.iter().any(|d| *d < ms(22)));
        assert!(delays.iter().any(|d| *d > ms(28)));
    }

    #[test]
    fn a_link_that_is_down_drops_everything() {
        let mut link = link(LinkConfig::default());
        link.set_up(false);
        assert!(!link.is_up());
        assert_eq!(link.transmit(ms(0), 100, &mut rng(8)), Err(LinkDrop::Down));
        link.set_up(true);
        assert!(link.transmit(ms(0), 100, &mut rng(8)).is_ok());
    }

    fn outcomes(seed: u64) -> Vec<Result<Duration, LinkDrop>> {
        let mut noisy = link(LinkConfig {
            latency: ms(5),
            jitter: ms(5),
            loss: 0.2,
            bandwidth_bps: Some(10_000_000),
            mtu: 1500,
        });
        let mut rng = rng(seed);
        (0..500)
            .map(|i| noisy.transmit(Duration::from_micros(i * 300), 1200, &mut rng))
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        assert_eq!(outcomes(9), outcomes(9));
        assert_ne!(outcomes(9), outcomes(10));
    }

    #[test]
    fn a_clean_link_draws_no_random_numbers() {
        let mut clean = link(LinkConfig::default());
        let mut used = rng(11);
        let untouched = rng(11);
        for i in 0..100 {
            assert!(clean.transmit(ms(i), 100, &mut used).is_ok());
        }
        assert_eq!(used, untouched);
    }
}
