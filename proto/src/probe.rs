//! Path probes: the small authenticated packets two peers send each other on a candidate path
//! (a direct address, or through the relay) to learn whether it works and how fast, sharing the
//! path socket with QUIC (DESIGN.md, "Connections").
//!
//! A probe is `magic (6) | body (postcard) | ed25519 signature (64)`. The magic's first byte is
//! 0x00: every QUIC packet has the fixed bit (0x40) of its first byte set (RFC 9000, 17.2 and
//! 17.3; mesh never negotiates greasing it), so the path socket tells the two apart by one byte
//! and hands QUIC nothing else.
//!
//! The signature, by the sender's node key, covers a context string, the magic and the body,
//! so a probe cannot be forged without the key, nor taken for another kind of signed object.
//! The body names the receiver, so a probe for one peer means nothing to another, and carries
//! the sender's time and a random nonce: [`ReplayGuard`] refuses a probe outside the time
//! window or one whose nonce it has already seen, so a recorded probe sent again changes
//! nothing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{NodeId, SecretKey};
use crate::time::UnixTime;

/// The first bytes of every probe.
pub const PROBE_MAGIC: [u8; 6] = [0x00, b'm', b'e', b's', b'h', 0x01];
/// What the signature covers before the magic and body: no other signed object of mesh starts
/// its signed message like this.
const CONTEXT: &[u8] = b"mesh path probe v1\0";
/// An ed25519 signature.
const SIGNATURE_LEN: usize = 64;
/// Largest probe accepted; anything longer is not ours (a real one is under 200 bytes).
pub const MAX_PROBE_LEN: usize = 256;
/// How far a probe's time may be from the receiver's (both corrected to the coordinator's
/// clock): wide enough for clock error and a slow path, narrow enough that the nonces of that
/// window fit in memory.
pub const PROBE_WINDOW: Duration = Duration::from_secs(60);

/// Whether a datagram on the path socket is a probe (and not QUIC).
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.first() == Some(&PROBE_MAGIC[0])
}

/// Ping or pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeKind {
    /// Is this path alive? Answer with a pong.
    Ping,
    /// The answer to the ping whose nonce is `echo`.
    Pong {
        /// The ping's nonce.
        echo: [u8; 16],
    },
}

/// A probe's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Ping or pong.
    pub kind: ProbeKind,
    /// Who sent it (and signed it).
    pub sender: NodeId,
    /// Which of the sender's processes: its path socket's random instance (one key may run in
    /// several processes at once).
    pub sender_instance: u64,
    /// Who it is for.
    pub receiver: NodeId,
    /// Random, never reused.
    pub nonce: [u8; 16],
    /// The sender's (corrected) time when it sent it.
    pub sent_at: UnixTime,
    /// For a pong: the address the ping came from, as the receiver saw it (how the sender
    /// learns its reflexive address on that path).
    pub observed: Option<SocketAddr>,
}

/// Why a datagram was not accepted as a probe. Each is counted, none answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProbeRejection {
    /// Not a probe, too short, too long, or not decodable.
    #[error("malformed probe")]
    Malformed,
    /// For another node.
    #[error("probe for another node")]
    NotForUs,
    /// The signature is not the named sender's.
    #[error("forged probe")]
    Forged,
    /// Too old or too far in the future.
    #[error("stale probe")]
    Stale,
    /// Its nonce was seen before.
    #[error("replayed probe")]
    Replayed,
}

impl Probe {
    /// Signs and encodes the probe with `key`, which must be the sender's.
    pub fn seal(&self, key: &SecretKey) -> Vec<u8> {
        let mut out = PROBE_MAGIC.to_vec();
        // A probe has fixed-size fields only; encoding into a Vec cannot fail.
        let body = postcard::to_allocvec(self).unwrap_or_default();
        out.extend_from_slice(&body);
        let signature = key.sign(&signed_message(&out));
        out.extend_from_slice(&signature);
        out
    }

    /// Decodes and checks a datagram addressed to `me`: its shape, its receiver, the
    /// sender's signature. Time and replay are [`ReplayGuard`]'s job.
    pub fn open(datagram: &[u8], me: NodeId) -> Result<Self, ProbeRejection> {
        if datagram.len() > MAX_PROBE_LEN
            || datagram.len() < PROBE_MAGIC.len() + SIGNATURE_LEN
            || !datagram.starts_with(&PROBE_MAGIC)
        {
            return Err(ProbeRejection::Malformed);
        }
        let (signed, signature) = datagram.split_at(datagram.len() - SIGNATURE_LEN);
        let probe: Self = postcard::from_bytes(&signed[PROBE_MAGIC.len()..])
            .map_err(|_| ProbeRejection::Malformed)?;
        // Canonical only: trailing bytes or another encoding of the same probe would make one
        // probe look like many to the replay guard.
        if postcard::to_allocvec(&probe).ok().as_deref() != Some(&signed[PROBE_MAGIC.len()..]) {
            return Err(ProbeRejection::Malformed);
        }
        if probe.receiver != me || probe.sender == me {
            return Err(ProbeRejection::NotForUs);
        }
        let key = probe.sender.verifying_key().ok_or(ProbeRejection::Forged)?;
        let signature =
            ed25519_dalek::Signature::from_slice(signature).map_err(|_| ProbeRejection::Forged)?;
        key.verify_strict(&signed_message(signed), &signature)
            .map_err(|_| ProbeRejection::Forged)?;
        Ok(probe)
    }
}

fn signed_message(magic_and_body: &[u8]) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(magic_and_body);
    message
}

/// Most nonces remembered per sender; a sender probing faster than this over
/// [`PROBE_WINDOW`] loses probes, not memory.
const NONCES_PER_SENDER: usize = 4096;
/// Most senders remembered at once.
const MAX_SENDERS: usize = 65_536;
/// Most nonces remembered in all (about 6 MiB): many senders at once cannot add up to more.
const MAX_NONCES: usize = 262_144;

/// Refuses probes outside the time window and probes seen before.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<NodeId, VecDeque<(UnixTime, [u8; 16])>>,
    /// Nonces held, over every sender.
    total: usize,
}

impl ReplayGuard {
    /// Accepts `probe` at `now` (both clocks corrected to the coordinator's), or says why not.
    /// Accepted nonces are remembered for the window.
    pub fn check(&mut self, probe: &Probe, now: UnixTime) -> Result<(), ProbeRejection> {
        let window = u64::try_from(PROBE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let (at, now_ms) = (probe.sent_at.as_millis(), now.as_millis());
        if at.abs_diff(now_ms) > window {
            return Err(ProbeRejection::Stale);
        }
        let full = (!self.seen.contains_key(&probe.sender) && self.seen.len() >= MAX_SENDERS)
            || self.total >= MAX_NONCES;
        if full {
            self.forget_before(now);
            if self.seen.len() >= MAX_SENDERS || self.total >= MAX_NONCES {
                // Full of live nonces: refusing is safe (a probe only ever adds knowledge).
                return Err(ProbeRejection::Replayed);
            }
        }
        let nonces = self.seen.entry(probe.sender).or_default();
        // Anything older than the window can no longer be replayed: its time check fails.
        while nonces
            .front()
            .is_some_and(|(t, _)| t.as_millis().saturating_add(window) < now_ms)
        {
            nonces.pop_front();
            self.total -= 1;
        }
        if nonces.iter().any(|(_, n)| *n == probe.nonce) {
            return Err(ProbeRejection::Replayed);
        }
        if nonces.len() >= NONCES_PER_SENDER {
            return Err(ProbeRejection::Replayed);
        }
        nonces.push_back((probe.sent_at.max(now), probe.nonce));
        self.total += 1;
        Ok(())
    }

    /// Drops every sender whose nonces have all left the window.
    fn forget_before(&mut self, now: UnixTime) {
        let window = u64::try_from(PROBE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let live = |t: &UnixTime| t.as_millis().saturating_add(window) >= now.as_millis();
        for nonces in self.seen.values_mut() {
            while nonces.front().is_some_and(|(t, _)| !live(t)) {
                nonces.pop_front();
            }
        }
        self.seen.retain(|_, nonces| !nonces.is_empty());
        self.total = self.seen.values().map(VecDeque::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32])
    }

    fn ping(from: &SecretKey, to: NodeId, nonce: u8, at: u64) -> Probe {
        Probe {
            kind: ProbeKind::Ping,
            sender: from.node_id(),
            sender_instance: 1,
            receiver: to,
            nonce: [nonce; 16],
            sent_at: UnixTime::from_millis(at),
            observed: None,
        }
    }

    const NOW: u64 = 1_767_225_600_000;

    #[test]
    fn a_sealed_probe_opens_for_its_receiver_and_is_never_taken_for_quic() {
        let (a, b) = (key(1), key(2));
        let probe = Probe {
            kind: ProbeKind::Pong { echo: [9; 16] },
            observed: Some("203.0.113.7:4242".parse().unwrap()),
            ..ping(&a, b.node_id(), 1, NOW)
        };
        let bytes = probe.seal(&a);
        assert!(is_probe(&bytes));
        assert!(bytes.len() <= MAX_PROBE_LEN, "{}", bytes.len());
        assert_eq!(Probe::open(&bytes, b.node_id()), Ok(probe));
        // QUIC long and short headers both set the fixed bit.
        assert!(!is_probe(&[0xc3, 0, 0, 0, 1]));
        assert!(!is_probe(&[0x43, 1, 2, 3]));
        assert!(!is_probe(&[]));
    }

    #[test]
    fn forged_tampered_misaddressed_and_malformed_probes_are_refused() {
        let (a, b, mallory) = (key(1), key(2), key(3));
        let probe = ping(&a, b.node_id(), 1, NOW);
        // Signed by someone else in a's name.
        assert_eq!(
            Probe::open(&probe.seal(&mallory), b.node_id()),
            Err(ProbeRejection::Forged)
        );
        // Any flipped bit after the magic.
        let bytes = probe.seal(&a);
        for i in PROBE_MAGIC.len()..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            assert!(Probe::open(&flipped, b.node_id()).is_err(), "bit at {i}");
        }
        assert_eq!(
            Probe::open(&bytes, mallory.node_id()),
            Err(ProbeRejection::NotForUs)
        );
        assert_eq!(
            Probe::open(&ping(&a, a.node_id(), 1, NOW).seal(&a), a.node_id()),
            Err(ProbeRejection::NotForUs)
        );
        for bad in [&bytes[..10], &[0u8; 300][..], &[][..]] {
            assert_eq!(
                Probe::open(bad, b.node_id()),
                Err(ProbeRejection::Malformed)
            );
        }
    }

    #[test]
    fn replays_and_stale_probes_are_refused_and_memory_stays_bounded() {
        let (a, b) = (key(1), key(2));
        let mut guard = ReplayGuard::default();
        let now = UnixTime::from_millis(NOW);
        let probe = ping(&a, b.node_id(), 1, NOW);
        assert_eq!(guard.check(&probe, now), Ok(()));
        assert_eq!(guard.check(&probe, now), Err(ProbeRejection::Replayed));
        // Recorded and sent again later: still refused while in the window, stale after.
        let later = UnixTime::from_millis(NOW + 30_000);
        assert_eq!(guard.check(&probe, later), Err(ProbeRejection::Replayed));
        let much_later = UnixTime::from_millis(NOW + 61_000);
        assert_eq!(guard.check(&probe, much_later), Err(ProbeRejection::Stale));
        let future = ping(&a, b.node_id(), 2, NOW + 61_000);
        assert_eq!(guard.check(&future, now), Err(ProbeRejection::Stale));
        assert_eq!(guard.check(&ping(&a, b.node_id(), 3, NOW), now), Ok(()));
        // A flood from one sender is capped.
        let mut flood = ReplayGuard::default();
        let mut accepted = 0;
        for i in 0..(NONCES_PER_SENDER + 10) {
            let mut p = ping(&a, b.node_id(), 0, NOW);
            p.nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            if flood.check(&p, now).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, NONCES_PER_SENDER);
    }

    #[test]
    fn the_guard_holds_a_bounded_number_of_nonces_over_every_sender() {
        let me = key(1).node_id();
        let mut guard = ReplayGuard::default();
        let per_sender = 64;
        let senders = MAX_NONCES / per_sender;
        for s in 0..senders {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(s as u64).to_le_bytes());
            let sender = SecretKey::from_seed(&seed).node_id();
            for n in 0..per_sender {
                let mut probe = ping(&key(2), me, 0, NOW);
                probe.sender = sender;
                probe.nonce[..8].copy_from_slice(&(n as u64).to_le_bytes());
                assert_eq!(guard.check(&probe, UnixTime::from_millis(NOW)), Ok(()));
            }
        }
        assert_eq!(guard.total, MAX_NONCES);
        // Full of live nonces: a new one is refused, not remembered.
        let fresh = ping(&key(3), me, 7, NOW);
        assert_eq!(
            guard.check(&fresh, UnixTime::from_millis(NOW)),
            Err(ProbeRejection::Replayed)
        );
        // A window later they have all expired, and there is room again.
        let later = UnixTime::from_millis(NOW + 61_000);
        let fresh = ping(&key(3), me, 7, NOW + 61_000);
        assert_eq!(guard.check(&fresh, later), Ok(()));
        assert_eq!(guard.total, 1);
    }
}
