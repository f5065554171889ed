//! One peer's paths and the choice between them: a plain state machine that takes `now`, so
//! every decision is unit-tested without sockets (DESIGN.md, "Conventions").
//!
//! A peer has candidate direct addresses (its LAN and reflexive addresses from the
//! coordinator, and addresses its probes arrived from) and possibly a relay. A direct address
//! is *confirmed* only by a pong to one of our pings sent there — a round trip on that very
//! path, authenticated by the peer's key — and stays confirmed for [`PATH_TRUST`] after the
//! last such pong. The chosen path is the confirmed direct address with the lowest round-trip
//! time, else the relay, else (no relay known) the best unconfirmed guess, so a packet is never
//! held back waiting for a probe: the first byte goes out at once.
//!
//! Switching between two confirmed direct addresses needs a clear gain ([`SWITCH_GAIN`]), so
//! two paths of similar speed do not flap.
//!
//! A confirmed path that goes silent is noticed from the traffic itself: when QUIC packets
//! have gone out on it and nothing at all has come back from it for [`LIVENESS_AFTER`], it is
//! pinged at once; if still nothing comes back by [`SILENCE_LIMIT`], it has failed — the
//! peer moves to the relay at once (no waiting out [`PATH_TRUST`]) and the path is pinged
//! again with backoff. A path that failed is taken back only after two fresh round trips on it
//! within [`FLAP_HOLD`], so a path that works one moment in two does not flip the session back
//! and forth. An unconfirmed candidate's pings back off (500 ms, then doubling up to
//! [`MAX_PING_BACKOFF`]), so a candidate that never answers costs almost nothing.
//!
//! A direct path is a [`Route`]: the peer's address and which of our sockets it leaves from —
//! the primary one, or an extra socket hole punching opened toward a peer behind a NAT that
//! maps per destination (see [`super::punch`]). Pings sprayed at guessed ports are tracked
//! apart from candidates (there may be a thousand of them); a pong to one makes its address a
//! confirmed candidate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How often an unconfirmed candidate is pinged.
pub const PING_UNCONFIRMED: Duration = Duration::from_millis(500);
/// How often a confirmed path is pinged to keep it confirmed (and NAT mappings alive).
pub const PING_CONFIRMED: Duration = Duration::from_secs(5);
/// A direct path stays confirmed this long after its last pong: two heartbeats and change.
pub const PATH_TRUST: Duration = Duration::from_millis(12_500);
/// A candidate that has not answered for this long is dropped (unless the coordinator still
/// lists it), so the candidate list cannot grow without end.
pub const CANDIDATE_EXPIRY: Duration = Duration::from_secs(60);
/// Most candidates kept per peer.
pub const MAX_CANDIDATES: usize = 16;
/// Unanswered pings to a peer-reflexive candidate before it is left alone.
pub const REFLEXIVE_TRIES: u64 = 3;
/// Quick pings to an unconfirmed candidate before its pings back off.
pub const QUICK_TRIES: u64 = 6;
/// The longest wait between pings to an unconfirmed candidate (after the quick ones, the wait
/// doubles from [`PING_UNCONFIRMED`] up to this).
pub const MAX_PING_BACKOFF: Duration = Duration::from_secs(30);
/// A confirmed path on which QUIC went out with nothing heard back for this long is pinged
/// with the next packet sent (the peer may simply have nothing to say, or answer on another
/// path: the ping tells).
pub const LIVENESS_AFTER: Duration = Duration::from_secs(1);
/// ...and if nothing is heard back for this long, and that ping has had [`LIVENESS_WAIT`] to
/// be answered, the path has failed: the relay takes over.
pub const SILENCE_LIMIT: Duration = Duration::from_millis(2500);
/// How long a liveness ping is given before its silence counts.
pub const LIVENESS_WAIT: Duration = Duration::from_secs(1);
/// A path that failed this recently needs [`RECOVERY_PONGS`] round trips before it is used
/// again.
pub const FLAP_HOLD: Duration = Duration::from_secs(60);
/// Round trips a recently failed path needs before it is used again.
pub const RECOVERY_PONGS: u32 = 2;
/// Pings awaiting a pong, per candidate; older ones are forgotten.
const MAX_OUTSTANDING: usize = 8;
/// A ping from an unconfirmed candidate is answered with a ping of our own at once (the
/// peer's NAT has just opened toward us), unless we pinged it this recently.
pub const PING_BACK_AFTER: Duration = Duration::from_millis(100);
/// Sprayed pings remembered per peer: a punch sends at most 2 × 1,024 random ports and 4 × 64
/// predicted ones (beyond this, a spray is not sent at all).
pub const MAX_SPRAYS: usize = 4608;
/// Another confirmed direct path replaces the current one only if its round trip is shorter
/// by at least this share of the current one...
pub const SWITCH_GAIN: f64 = 0.2;
/// ...and by at least this much.
pub const SWITCH_MIN: Duration = Duration::from_millis(5);

/// Which of our sockets a direct path leaves from: [`PRIMARY`], or an extra socket opened for
/// hole punching.
pub type Via = u16;
/// The primary socket.
pub const PRIMARY: Via = 0;

/// A direct path: the peer's address, and the socket of ours packets leave from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Our socket.
    pub via: Via,
    /// The peer's address.
    pub addr: SocketAddr,
}

impl Route {
    /// `addr` from the primary socket.
    pub fn primary(addr: SocketAddr) -> Self {
        Self { via: PRIMARY, addr }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.via == PRIMARY {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} (punch socket {})", self.addr, self.via)
        }
    }
}

/// One candidate as `mesh path` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateState {
    /// The address, and our socket.
    pub route: Route,
    /// Where it came from.
    pub source: Source,
    /// Whether a round trip on it is recent enough to trust it.
    pub confirmed: bool,
    /// Its last measured round trip, if any pong came back.
    pub rtt: Option<Duration>,
    /// Pings sent to it so far.
    pub pings: u64,
}

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The coordinator listed it (the peer's own or its observed address).
    Listed,
    /// A probe from the peer arrived from it.
    PeerReflexive,
    /// A pong answered a ping sprayed at a guessed or predicted port (hole punching).
    Punched,
}

/// The path packets for a peer take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Straight on this route, confirmed by a round trip.
    Direct(Route),
    /// Through the relay.
    Relay,
    /// Straight on this route, not confirmed (no relay is known to fall back to).
    Guess(Route),
    /// Nowhere to send.
    None,
}

#[derive(Debug)]
struct Candidate {
    source: Source,
    added: Instant,
    last_ping: Option<Instant>,
    /// When a ping was last sent here in answer to the peer's.
    last_ping_back: Option<Instant>,
    /// Pings sent here and not answered yet: nonce → when.
    outstanding: Vec<([u8; 16], Instant)>,
    last_pong: Option<Instant>,
    rtt: Option<Duration>,
    pings: u64,
    /// When anything (QUIC or a probe) last came from it.
    last_heard: Option<Instant>,
    /// The first QUIC packet sent on it since it was last heard from.
    unanswered_since: Option<Instant>,
    /// When it last failed (went silent while confirmed), and the pongs since.
    failed_at: Option<Instant>,
    pongs_since_fail: u32,
}

impl Candidate {
    fn new(source: Source, now: Instant) -> Self {
        Self {
            source,
            added: now,
            last_ping: None,
            last_ping_back: None,
            outstanding: Vec::new(),
            last_pong: None,
            rtt: None,
            pings: 0,
            last_heard: None,
            unanswered_since: None,
            failed_at: None,
            pongs_since_fail: 0,
        }
    }

    /// Confirmed: a recent enough round trip, not gone silent under traffic, and — if it
    /// failed recently — enough round trips since.
    fn confirmed(&self, now: Instant) -> bool {
        let recent_pong = self
            .last_pong
            .is_some_and(|pong| now.saturating_duration_since(pong) < PATH_TRUST);
        let recovered = self.failed_at.is_none_or(|failed| {
            now.saturating_duration_since(failed) >= FLAP_HOLD
                || self.pongs_since_fail >= RECOVERY_PONGS
        });
        recent_pong && recovered && !self.silent(now)
    }

    /// When it is next due for a scheduled ping.
    fn next_ping(&self, now: Instant) -> Option<Instant> {
        self.ping_every(now)
            .map(|every| self.last_ping.map_or(now, |last| last + every))
    }

    /// Whether QUIC has gone out on it for [`SILENCE_LIMIT`] with nothing heard back, not
    /// even the answer to a ping sent [`LIVENESS_WAIT`] or more ago.
    fn silent(&self, now: Instant) -> bool {
        self.unanswered_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= SILENCE_LIMIT
                && self.last_ping.is_some_and(|ping| {
                    ping > since && now.saturating_duration_since(ping) >= LIVENESS_WAIT
                })
        })
    }

    /// Whether QUIC has gone out on it for [`LIVENESS_AFTER`] with nothing heard back and no
    /// ping since: time to ask (with the packet going out now, so an idle node is not woken
    /// for it).
    fn wants_liveness_ping(&self, now: Instant) -> bool {
        self.unanswered_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= LIVENESS_AFTER
                && self.last_ping.is_none_or(|ping| ping <= since)
        })
    }

    /// Whether QUIC has gone out on it for [`LIVENESS_AFTER`] with nothing heard back.
    fn in_doubt(&self, now: Instant) -> bool {
        self.unanswered_since
            .is_some_and(|since| now.saturating_duration_since(since) >= LIVENESS_AFTER)
    }

    /// Marks it failed at `now`: unconfirmed, pinged quickly again (then with backoff).
    fn fail(&mut self, now: Instant) {
        self.failed_at = Some(now);
        self.pongs_since_fail = 0;
        self.last_pong = None;
        self.unanswered_since = None;
        self.outstanding.clear();
        self.pings = 0;
        self.last_ping = None;
    }

    /// How often to ping it at `now`, `None` for never again: a confirmed path gets
    /// heartbeats; an unconfirmed one a few quick pings, then a slow retry (a listed address
    /// may open later) — except a peer-reflexive one, which only its peer's ping vouched for
    /// (its source may be spoofed) and gets no more than [`REFLEXIVE_TRIES`] unanswered pings.
    fn ping_every(&self, now: Instant) -> Option<Duration> {
        if self.confirmed(now) {
            return Some(PING_CONFIRMED);
        }
        let unanswered = self.last_pong.is_none();
        match self.source {
            Source::PeerReflexive
                if unanswered && self.failed_at.is_none() && self.pings >= REFLEXIVE_TRIES =>
            {
                None
            }
            _ if self.pings >= QUICK_TRIES => {
                let doublings = u32::try_from(self.pings - QUICK_TRIES + 1).unwrap_or(u32::MAX);
                let wait = PING_UNCONFIRMED.saturating_mul(2u32.saturating_pow(doublings.min(16)));
                Some(wait.min(MAX_PING_BACKOFF))
            }
            _ => Some(PING_UNCONFIRMED),
        }
    }
}

/// One peer's paths.
#[derive(Debug)]
pub struct PeerPaths {
    candidates: HashMap<Route, Candidate>,
    /// Pings sprayed at guessed addresses: nonce → where and when.
    sprays: HashMap<[u8; 16], (Route, Instant)>,
    relay: bool,
    current: Path,
    /// Since when the current path has been direct.
    direct_since: Option<Instant>,
    /// How often the chosen path changed (relay ↔ direct, or one direct path for another).
    changes: u64,
    /// How often a confirmed direct path failed (went silent under traffic).
    failures: u64,
}

impl Default for PeerPaths {
    fn default() -> Self {
        Self {
            candidates: HashMap::new(),
            sprays: HashMap::new(),
            relay: false,
            current: Path::None,
            direct_since: None,
            changes: 0,
            failures: 0,
        }
    }
}

impl PeerPaths {
    /// Adds (or refreshes) a candidate direct address.
    pub fn add_candidate(&mut self, addr: Route, source: Source, now: Instant) {
        if let Some(candidate) = self.candidates.get_mut(&addr) {
            if source == Source::Listed {
                candidate.source = Source::Listed;
            }
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            self.expire(now);
            if self.candidates.len() >= MAX_CANDIDATES {
                return;
            }
        }
        self.candidates.insert(addr, Candidate::new(source, now));
    }

    /// Whether the peer can be reached through the relay.
    pub fn set_relay(&mut self, available: bool) {
        self.relay = available;
    }

    /// Records a ping sent to `addr` with `nonce`.
    pub fn ping_sent(&mut self, addr: Route, nonce: [u8; 16], now: Instant) {
        if let Some(candidate) = self.candidates.get_mut(&addr) {
            candidate.last_ping = Some(now);
            candidate.pings += 1;
            candidate.outstanding.push((nonce, now));
            if candidate.outstanding.len() > MAX_OUTSTANDING {
                candidate.outstanding.remove(0);
            }
        }
    }

    /// Records a ping sprayed at `addr` (not a candidate yet: a pong makes it one).
    /// Returns whether it was recorded (a ping whose pong could not confirm anything is
    /// not worth sending).
    pub fn spray_sent(&mut self, addr: Route, nonce: [u8; 16], now: Instant) -> bool {
        if self.sprays.len() >= MAX_SPRAYS {
            return false;
        }
        self.sprays.insert(nonce, (addr, now));
        true
    }

    /// Forgets the sprayed pings (a punch is over: late pongs to them mean nothing).
    pub fn clear_sprays(&mut self) {
        self.sprays = HashMap::new();
    }

    /// A pong for `echo` arrived from `addr`: if it answers a ping we sent there, the path is
    /// confirmed with the measured round trip. Returns whether it did.
    pub fn pong_received(&mut self, addr: Route, echo: [u8; 16], now: Instant) -> bool {
        if !self.candidates.contains_key(&addr) {
            // The answer to a sprayed ping: that guess was right.
            let Some((sprayed, sent)) = self.sprays.get(&echo).copied() else {
                return false;
            };
            if sprayed != addr {
                return false;
            }
            self.sprays.remove(&echo);
            self.add_candidate(addr, Source::Punched, now);
            let Some(candidate) = self.candidates.get_mut(&addr) else {
                return false;
            };
            candidate.last_pong = Some(now);
            candidate.rtt = Some(now.saturating_duration_since(sent));
            candidate.last_heard = Some(now);
            return true;
        }
        let Some(candidate) = self.candidates.get_mut(&addr) else {
            return false;
        };
        let Some(index) = candidate.outstanding.iter().position(|(n, _)| *n == echo) else {
            return false;
        };
        let (_, sent) = candidate.outstanding.remove(index);
        candidate.last_pong = Some(now);
        candidate.rtt = Some(now.saturating_duration_since(sent));
        candidate.last_heard = Some(now);
        candidate.unanswered_since = None;
        if candidate.failed_at.is_some() {
            candidate.pongs_since_fail = candidate.pongs_since_fail.saturating_add(1);
        }
        true
    }

    /// Something authenticated arrived on `addr` (a QUIC packet from an address known to be
    /// the peer's, or a probe): the path is alive from that side.
    pub fn heard(&mut self, addr: Route, now: Instant) {
        if let Some(candidate) = self.candidates.get_mut(&addr) {
            candidate.last_heard = Some(now);
            candidate.unanswered_since = None;
        }
    }

    /// Whether the confirmed path `addr` is in doubt: QUIC has gone out on it for
    /// [`LIVENESS_AFTER`] with nothing heard back (packets then also go through the relay).
    pub fn in_doubt(&self, addr: Route, now: Instant) -> bool {
        self.candidates.get(&addr).is_some_and(|c| c.in_doubt(now))
    }

    /// A QUIC packet went out on `addr`: if nothing comes back, the path is failing. Returns
    /// whether a liveness ping should go out with it (see [`LIVENESS_AFTER`]).
    pub fn quic_sent(&mut self, addr: Route, now: Instant) -> bool {
        let Some(candidate) = self.candidates.get_mut(&addr) else {
            return false;
        };
        candidate.unanswered_since.get_or_insert(now);
        candidate.last_pong.is_some() && candidate.wants_liveness_ping(now)
    }

    /// A ping from the peer arrived from `addr`: a peer-reflexive candidate (the answer goes
    /// back there; our own ping confirms it).
    pub fn ping_received(&mut self, addr: Route, now: Instant) {
        self.add_candidate(addr, Source::PeerReflexive, now);
    }

    /// Whether to answer a ping from `addr` with a ping of our own now, recording it if so: it
    /// is not confirmed yet, may still be pinged, and was not pinged back in the last
    /// [`PING_BACK_AFTER`]. (The peer's NAT has just let a packet out toward us; our ping back
    /// is the round trip that confirms the path, without waiting for the next scheduled ping.
    /// Only pings back count toward the limit: a scheduled ping sent a moment before the
    /// peer's NAT opened was lost, and must not hold the answer back.)
    pub fn take_ping_back(&mut self, addr: Route, now: Instant) -> bool {
        let Some(c) = self.candidates.get_mut(&addr) else {
            return false;
        };
        let wanted = !c.confirmed(now)
            && c.ping_every(now).is_some()
            && c.last_ping_back
                .is_none_or(|last| now.saturating_duration_since(last) >= PING_BACK_AFTER);
        if wanted {
            c.last_ping_back = Some(now);
        }
        wanted
    }

    /// Candidates due for a scheduled ping at `now`.
    pub fn due_pings(&self, now: Instant) -> Vec<Route> {
        let mut due: Vec<Route> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.next_ping(now).is_some_and(|at| at <= now))
            .map(|(addr, _)| *addr)
            .collect();
        // The map's order is random; the order pings go out in must not be.
        due.sort_unstable();
        due
    }

    /// When the next ping falls due (to sleep until then).
    pub fn next_ping(&self, now: Instant) -> Option<Instant> {
        self.candidates
            .values()
            .filter_map(|c| c.next_ping(now))
            .min()
    }

    /// Forgets candidates that have not answered for [`CANDIDATE_EXPIRY`] and were not listed.
    pub fn expire(&mut self, now: Instant) {
        self.candidates.retain(|_, c| {
            let heard = c.last_heard.or(c.last_pong).unwrap_or(c.added);
            c.source == Source::Listed || now.saturating_duration_since(heard) < CANDIDATE_EXPIRY
        });
        self.sprays
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < CANDIDATE_EXPIRY);
    }

    /// The path to use now, updating the current choice (see the module docs).
    pub fn choose(&mut self, now: Instant) -> Path {
        // The path in use gone silent under traffic has failed: the relay takes over now. A
        // path no longer in use (a client's old address after it moved) is not a failure:
        // what it went without is forgotten, and its heartbeats tell whether it lives.
        let current = match self.current {
            Path::Direct(route) | Path::Guess(route) => Some(route),
            _ => None,
        };
        for (route, candidate) in &mut self.candidates {
            if candidate.last_pong.is_some() && candidate.silent(now) {
                if Some(*route) == current {
                    candidate.fail(now);
                    self.failures += 1;
                } else {
                    candidate.unanswered_since = None;
                }
            }
        }
        // A path in doubt (unanswered under traffic) is passed over while one that answers is
        // confirmed: a client that moved confirms its new address while its old one is still
        // within the silence limit.
        let answering = |c: &Candidate| c.confirmed(now) && !c.in_doubt(now);
        let any_answering = self.candidates.values().any(answering);
        let best = self
            .candidates
            .iter()
            .filter(|(_, c)| {
                if any_answering {
                    answering(c)
                } else {
                    c.confirmed(now)
                }
            })
            .filter_map(|(addr, c)| Some((*addr, c.rtt?)))
            .min_by_key(|(addr, rtt)| (*rtt, *addr));
        let chosen = match (best, self.current) {
            (Some((addr, rtt)), Path::Direct(current)) if current != addr => {
                match self
                    .candidates
                    .get(&current)
                    .filter(|c| c.confirmed(now) && !c.in_doubt(now))
                    .and_then(|c| c.rtt)
                {
                    // The current direct path is still good: keep it unless the other is
                    // clearly faster.
                    Some(current_rtt) if !clearly_faster(rtt, current_rtt) => Path::Direct(current),
                    _ => Path::Direct(addr),
                }
            }
            (Some((addr, _)), _) => Path::Direct(addr),
            (None, _) if self.relay => Path::Relay,
            (None, _) => self.guess(),
        };
        match (chosen, self.current) {
            (Path::Direct(_), Path::Direct(_)) => {}
            (Path::Direct(_), _) => self.direct_since = Some(now),
            _ => self.direct_since = None,
        }
        if chosen != self.current && self.current != Path::None {
            self.changes += 1;
        }
        self.current = chosen;
        chosen
    }

    /// How often the chosen path changed, and how often a confirmed direct path failed.
    pub fn changes(&self) -> (u64, u64) {
        (self.changes, self.failures)
    }

    /// Since when the path has been direct, as of the last [`choose`](Self::choose).
    pub fn direct_since(&self) -> Option<Instant> {
        self.direct_since
    }

    /// The unconfirmed candidate most likely to work: a listed one first, then by address.
    fn guess(&self) -> Path {
        self.candidates
            .iter()
            .min_by_key(|(addr, c)| (c.source != Source::Listed, **addr))
            .map_or(Path::None, |(addr, _)| Path::Guess(*addr))
    }

    /// Every candidate and how it stands at `now`, by address.
    pub fn candidates(&self, now: Instant) -> Vec<CandidateState> {
        let mut all: Vec<CandidateState> = self
            .candidates
            .iter()
            .map(|(addr, c)| CandidateState {
                route: *addr,
                source: c.source,
                confirmed: c.confirmed(now),
                rtt: c.rtt,
                pings: c.pings,
            })
            .collect();
        all.sort_unstable_by_key(|c| c.route);
        all
    }

    /// Whether some direct path is confirmed now.
    pub fn has_confirmed(&self, now: Instant) -> bool {
        self.candidates.values().any(|c| c.confirmed(now))
    }

    /// The candidates not confirmed that may still be pinged (a punch round pings them all at
    /// once), in order.
    pub fn unconfirmed(&self, now: Instant) -> Vec<Route> {
        let mut all: Vec<Route> = self
            .candidates
            .iter()
            .filter(|(_, c)| !c.confirmed(now) && c.ping_every(now).is_some())
            .map(|(route, _)| *route)
            .collect();
        all.sort_unstable();
        all
    }

    /// Whether any candidate leaves from the socket `via`.
    pub fn uses_via(&self, via: Via) -> bool {
        self.candidates.keys().any(|route| route.via == via)
    }

    /// Forgets every candidate and spray on the socket `via` (it was closed).
    pub fn forget_via(&mut self, via: Via) {
        self.candidates.retain(|route, _| route.via != via);
        self.sprays.retain(|_, (route, _)| route.via != via);
        if matches!(self.current, Path::Direct(route) | Path::Guess(route) if route.via == via) {
            self.current = Path::None;
        }
    }

    /// Whether `addr` is a candidate.
    pub fn has_candidate(&self, addr: Route) -> bool {
        self.candidates.contains_key(&addr)
    }

    /// The round trip measured on `addr`, if it is confirmed.
    pub fn rtt(&self, addr: Route, now: Instant) -> Option<Duration> {
        self.candidates
            .get(&addr)
            .filter(|c| c.confirmed(now))
            .and_then(|c| c.rtt)
    }
}

fn clearly_faster(candidate: Duration, current: Duration) -> bool {
    let gain = current.saturating_sub(candidate);
    gain >= SWITCH_MIN && gain.as_secs_f64() >= current.as_secs_f64() * SWITCH_GAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Route {
        Route::primary(SocketAddr::from(([203, 0, 113, n], 7422)))
    }

    fn confirm(paths: &mut PeerPaths, a: Route, nonce: u8, at: Instant, rtt: Duration) {
        paths.ping_sent(a, [nonce; 16], at);
        assert!(paths.pong_received(a, [nonce; 16], at + rtt));
    }

    #[test]
    fn the_first_packet_goes_out_at_once_on_the_relay_then_moves_to_a_confirmed_direct_path() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        assert_eq!(paths.choose(t0), Path::None);
        paths.add_candidate(addr(1), Source::Listed, t0);
        assert_eq!(
            paths.choose(t0),
            Path::Guess(addr(1)),
            "no relay: try the listed address"
        );
        paths.set_relay(true);
        assert_eq!(
            paths.choose(t0),
            Path::Relay,
            "unconfirmed direct loses to the relay"
        );
        confirm(&mut paths, addr(1), 1, t0, Duration::from_millis(30));
        let t1 = t0 + Duration::from_millis(30);
        assert_eq!(paths.choose(t1), Path::Direct(addr(1)));
        assert_eq!(paths.rtt(addr(1), t1), Some(Duration::from_millis(30)));
    }

    #[test]
    fn a_pong_confirms_only_a_ping_we_sent_to_that_address() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        paths.add_candidate(addr(1), Source::Listed, t0);
        paths.add_candidate(addr(2), Source::Listed, t0);
        paths.ping_sent(addr(1), [1; 16], t0);
        // The right nonce from another address, an unknown nonce, a repeat: nothing.
        assert!(!paths.pong_received(addr(2), [1; 16], t0));
        assert!(!paths.pong_received(addr(1), [9; 16], t0));
        assert!(!paths.pong_received(addr(3), [1; 16], t0));
        assert_eq!(paths.choose(t0), Path::Relay);
        assert!(paths.pong_received(addr(1), [1; 16], t0));
        assert!(
            !paths.pong_received(addr(1), [1; 16], t0),
            "a pong counts once"
        );
    }

    #[test]
    fn a_silent_direct_path_falls_back_to_the_relay_after_the_trust_period() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        paths.add_candidate(addr(1), Source::Listed, t0);
        confirm(&mut paths, addr(1), 1, t0, Duration::from_millis(20));
        assert_eq!(paths.choose(t0 + PATH_TRUST), Path::Direct(addr(1)));
        assert_eq!(
            paths.choose(t0 + PATH_TRUST + Duration::from_millis(21)),
            Path::Relay
        );
    }

    #[test]
    fn a_similar_path_does_not_take_over_but_a_clearly_faster_one_does() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        for n in 1..=3 {
            paths.add_candidate(addr(n), Source::Listed, t0);
        }
        confirm(&mut paths, addr(2), 1, t0, Duration::from_millis(50));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(paths.choose(t1), Path::Direct(addr(2)));
        // 45 ms against 50 ms: 10 % better, not enough.
        confirm(&mut paths, addr(1), 2, t1, Duration::from_millis(45));
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(paths.choose(t2), Path::Direct(addr(2)));
        // 20 ms: clearly faster.
        confirm(&mut paths, addr(3), 3, t2, Duration::from_millis(20));
        assert_eq!(
            paths.choose(t2 + Duration::from_millis(50)),
            Path::Direct(addr(3))
        );
    }

    #[test]
    fn a_pong_to_a_sprayed_ping_makes_a_confirmed_candidate_only_from_where_it_was_sprayed() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        let guess = addr(9);
        paths.spray_sent(guess, [5; 16], t0);
        // Another address answering that nonce, or an unknown nonce: nothing.
        assert!(!paths.pong_received(addr(8), [5; 16], t0));
        assert!(!paths.pong_received(guess, [6; 16], t0));
        assert_eq!(paths.choose(t0), Path::Relay);
        let later = t0 + Duration::from_millis(40);
        assert!(paths.pong_received(guess, [5; 16], later));
        assert_eq!(paths.choose(later), Path::Direct(guess));
        assert_eq!(paths.rtt(guess, later), Some(Duration::from_millis(40)));
        assert_eq!(paths.candidates(later)[0].source, Source::Punched);
        // A spray's nonce counts once; cleared sprays count never.
        assert!(!paths.pong_received(addr(7), [5; 16], later));
        paths.spray_sent(addr(7), [7; 16], later);
        paths.clear_sprays();
        assert!(!paths.pong_received(addr(7), [7; 16], later));
    }

    #[test]
    fn a_ping_from_an_unconfirmed_candidate_is_pinged_back_once_in_a_while() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        let from = addr(3);
        // A scheduled ping went out a moment before (and was lost at the peer's NAT): it does
        // not hold the answer back.
        paths.ping_received(from, t0);
        paths.ping_sent(from, [9; 16], t0);
        assert!(paths.take_ping_back(from, t0 + Duration::from_millis(20)));
        paths.ping_sent(from, [1; 16], t0 + Duration::from_millis(20));
        assert!(!paths.take_ping_back(from, t0 + PING_BACK_AFTER / 2));
        let later = t0 + Duration::from_millis(20) + PING_BACK_AFTER;
        assert!(paths.take_ping_back(from, later));
        assert!(paths.pong_received(from, [1; 16], later));
        assert!(
            !paths.take_ping_back(from, later + PING_BACK_AFTER * 3),
            "a confirmed path needs no ping back"
        );
        assert!(!paths.take_ping_back(addr(4), t0), "not a candidate");
    }

    #[test]
    fn a_path_gone_silent_under_traffic_is_pinged_then_failed_and_the_relay_takes_over() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        let a = addr(1);
        paths.add_candidate(a, Source::Listed, t0);
        confirm(&mut paths, a, 1, t0, Duration::from_millis(20));
        assert_eq!(paths.choose(t0), Path::Direct(a));
        // Packets go out; nothing comes back.
        assert!(!paths.quic_sent(a, t0), "no doubt yet");
        assert!(!paths.in_doubt(a, t0 + LIVENESS_AFTER / 2));
        let doubt = t0 + LIVENESS_AFTER;
        assert!(paths.in_doubt(a, doubt));
        assert!(
            paths.quic_sent(a, doubt),
            "a liveness ping goes with this packet"
        );
        paths.ping_sent(a, [2; 16], doubt);
        assert!(!paths.quic_sent(a, doubt), "one ping per doubt");
        // Not yet failed: the ping has not had its second, and the silence is short.
        assert_eq!(paths.choose(doubt + LIVENESS_WAIT / 2), Path::Direct(a));
        let dead = t0 + SILENCE_LIMIT;
        assert_eq!(
            paths.choose(dead),
            Path::Relay,
            "the relay takes over at once"
        );
        assert_eq!(
            paths.changes(),
            (1, 1),
            "direct → relay: one change, one failure"
        );
        // The failed path is pinged again at once.
        assert_eq!(paths.due_pings(dead), vec![a]);
    }

    #[test]
    fn a_new_address_that_answers_takes_over_from_one_in_doubt_at_once() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        let (old, new) = (addr(1), addr(2));
        paths.add_candidate(old, Source::PeerReflexive, t0);
        confirm(&mut paths, old, 1, t0, Duration::from_millis(20));
        assert_eq!(paths.choose(t0), Path::Direct(old));
        // The peer moved: nothing comes back on the old address; its ping from the new one
        // is answered and confirmed, a little slower than the old path was.
        paths.quic_sent(old, t0);
        let moved = t0 + LIVENESS_AFTER;
        paths.ping_received(new, moved);
        confirm(&mut paths, new, 2, moved, Duration::from_millis(22));
        let later = moved + Duration::from_millis(22);
        assert_eq!(
            paths.choose(later),
            Path::Direct(new),
            "no waiting out the silence limit"
        );
        assert_eq!(paths.changes(), (1, 0));
    }

    #[test]
    fn an_old_address_left_behind_is_not_counted_as_a_failure() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        let (old, new) = (addr(1), addr(2));
        paths.add_candidate(old, Source::PeerReflexive, t0);
        confirm(&mut paths, old, 1, t0, Duration::from_millis(20));
        paths.choose(t0);
        paths.quic_sent(old, t0);
        paths.quic_sent(old, t0 + LIVENESS_AFTER);
        paths.ping_sent(old, [5; 16], t0 + LIVENESS_AFTER);
        let moved = t0 + LIVENESS_AFTER;
        paths.ping_received(new, moved);
        confirm(&mut paths, new, 2, moved, Duration::from_millis(20));
        assert_eq!(paths.choose(moved), Path::Direct(new));
        // Long after, the old address's silence is no failure of the path in use.
        assert_eq!(paths.choose(t0 + Duration::from_secs(5)), Path::Direct(new));
        assert_eq!(paths.changes(), (1, 0));
    }

    #[test]
    fn a_path_that_answers_is_never_failed_however_quiet_the_peer() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        let a = addr(1);
        paths.add_candidate(a, Source::Listed, t0);
        confirm(&mut paths, a, 1, t0, Duration::from_millis(20));
        // The peer sends nothing back on QUIC (it answers on another path, or has nothing to
        // say), but the liveness ping's pong comes back.
        paths.quic_sent(a, t0);
        let doubt = t0 + LIVENESS_AFTER;
        assert!(paths.quic_sent(a, doubt));
        paths.ping_sent(a, [2; 16], doubt);
        assert!(paths.pong_received(a, [2; 16], doubt + Duration::from_millis(20)));
        assert!(!paths.in_doubt(a, doubt + Duration::from_millis(20)));
        assert_eq!(paths.choose(t0 + Duration::from_secs(10)), Path::Direct(a));
        assert_eq!(paths.changes().1, 0);
    }

    #[test]
    fn a_failed_path_comes_back_only_after_two_round_trips_within_the_hold() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.set_relay(true);
        let a = addr(1);
        paths.add_candidate(a, Source::Listed, t0);
        confirm(&mut paths, a, 1, t0, Duration::from_millis(20));
        paths.choose(t0);
        paths.quic_sent(a, t0);
        paths.quic_sent(a, t0 + LIVENESS_AFTER);
        paths.ping_sent(a, [2; 16], t0 + LIVENESS_AFTER);
        let failed = t0 + Duration::from_secs(5);
        assert_eq!(paths.choose(failed), Path::Relay);
        // One round trip is not enough while the hold lasts; two are.
        confirm(&mut paths, a, 3, failed, Duration::from_millis(20));
        assert_eq!(
            paths.choose(failed + Duration::from_millis(20)),
            Path::Relay
        );
        confirm(
            &mut paths,
            a,
            4,
            failed + Duration::from_secs(1),
            Duration::from_millis(20),
        );
        assert_eq!(
            paths.choose(failed + Duration::from_millis(1020)),
            Path::Direct(a)
        );
    }

    #[test]
    fn an_unanswered_candidate_is_pinged_ever_more_rarely() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        let a = addr(1);
        paths.add_candidate(a, Source::Listed, t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for n in 0..16u8 {
            let next = paths.next_ping(now).unwrap();
            gaps.push(next.saturating_duration_since(now));
            now = next;
            paths.ping_sent(a, [n; 16], now);
        }
        assert_eq!(gaps[1], PING_UNCONFIRMED, "quick at first");
        assert!(
            gaps.windows(2).all(|w| w[1] >= w[0]),
            "never more often: {gaps:?}"
        );
        assert_eq!(*gaps.last().unwrap(), MAX_PING_BACKOFF, "{gaps:?}");
    }

    #[test]
    fn a_closed_socket_takes_its_routes_with_it() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        let through_extra = Route {
            via: 7,
            addr: SocketAddr::from(([198, 51, 100, 2], 4000)),
        };
        paths.add_candidate(through_extra, Source::PeerReflexive, t0);
        confirm(&mut paths, through_extra, 1, t0, Duration::from_millis(10));
        assert_eq!(paths.choose(t0), Path::Direct(through_extra));
        paths.forget_via(7);
        assert!(!paths.has_candidate(through_extra));
        assert_eq!(paths.choose(t0), Path::None);
    }

    #[test]
    fn pings_are_frequent_until_confirmed_then_heartbeats_and_candidates_are_bounded() {
        let t0 = Instant::now();
        let mut paths = PeerPaths::default();
        paths.add_candidate(addr(1), Source::Listed, t0);
        assert_eq!(paths.due_pings(t0), vec![addr(1)]);
        paths.ping_sent(addr(1), [1; 16], t0);
        assert!(paths.due_pings(t0 + Duration::from_millis(499)).is_empty());
        assert_eq!(paths.due_pings(t0 + PING_UNCONFIRMED), vec![addr(1)]);
        assert!(paths.pong_received(addr(1), [1; 16], t0 + Duration::from_millis(10)));
        assert!(paths.due_pings(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            paths.next_ping(t0 + Duration::from_secs(1)),
            Some(t0 + PING_CONFIRMED)
        );
        // Peer-reflexive candidates from a flood of pings stay bounded and expire.
        for port in 0..100u16 {
            paths.ping_received(
                Route::primary(SocketAddr::from(([198, 51, 100, 1], 1000 + port))),
                t0,
            );
        }
        assert_eq!(paths.candidates.len(), MAX_CANDIDATES);
        paths.expire(t0 + CANDIDATE_EXPIRY);
        assert_eq!(
            paths.candidates.len(),
            1,
            "only the listed, confirmed address stays"
        );
    }
}
