//! Wall-clock time, for judging grants and tokens, behind a [`Clock`] seam.
//!
//! Grant lifetimes are wall-clock facts ("valid until 14:05 UTC"), so they need the wall clock;
//! but edge hosts often boot with a wrong one, and the simulator needs time it controls. Code
//! therefore never reads `SystemTime` itself: it asks a [`Clock`]. Durations of live things
//! (sessions, keep-alives) use tokio's monotonic clock instead, which the simulator pauses.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How far apart two honest clocks may be before a grant is judged by the difference.
///
/// A host accepts a grant from `not_before - CLOCK_SKEW_TOLERANCE` until
/// `not_after + CLOCK_SKEW_TOLERANCE` on its (coordinator-corrected) clock. Thirty seconds
/// covers NTP-less devices whose clock the coordinator has corrected to within a round trip,
/// while adding at most 10 % to the shortest (5-minute) online grant.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(30);

/// A point in wall-clock time: milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UnixTime(u64);

impl UnixTime {
    /// The Unix epoch itself.
    pub const EPOCH: Self = Self(0);

    /// `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This time plus `d`, saturating at the far future instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// This time minus `d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(d)))
    }

    /// How long after `earlier` this is, or `None` if it is before it.
    pub fn duration_since(self, earlier: Self) -> Option<Duration> {
        self.0.checked_sub(earlier.0).map(Duration::from_millis)
    }

    /// This time as a `SystemTime`, for formatting and for the operating system.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// A `SystemTime` as a `UnixTime`; times before the epoch become the epoch.
    pub fn from_system_time(t: SystemTime) -> Self {
        Self(t.duration_since(UNIX_EPOCH).map_or(0, duration_millis))
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Display for UnixTime {
    /// RFC 3339 in UTC with seconds, e.g. `2026-11-22T14:05:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime formats only up to year 9999; beyond that, show the raw number.
        if self.0 < 253_402_300_800_000 {
            write!(
                f,
                "{}",
                humantime::format_rfc3339_seconds(self.to_system_time())
            )
        } else {
            write!(f, "@{}ms", self.0)
        }
    }
}

impl fmt::Debug for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnixTime({self})")
    }
}

/// The wall clock, as a seam: the system clock in production, a controlled one in tests and
/// the simulator, a coordinator-corrected one on hosts.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> UnixTime;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_system_time(SystemTime::now())
    }
}

/// A clock that only moves when told to: for tests and the simulator.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock that reads `start` until it is moved.
    pub fn new(start: UnixTime) -> Self {
        Self(AtomicU64::new(start.as_millis()))
    }

    /// Sets the time.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.as_millis(), Ordering::SeqCst);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let millis = duration_millis(d);
        // fetch_update with a saturating add never fails: the closure always returns Some.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(millis))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_millis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_rfc3339_utc() {
        assert_eq!(
            UnixTime::from_secs(1_795_356_300).to_string(),
            "2026-11-22T14:05:00Z"
        );
        assert_eq!(
            UnixTime::from_millis(u64::MAX).to_string(),
            "@18446744073709551615ms"
        );
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let far = UnixTime::from_millis(u64::MAX - 1);
        assert_eq!(
            far.saturating_add(Duration::from_secs(10)).as_millis(),
            u64::MAX
        );
        assert_eq!(
            UnixTime::from_secs(1).saturating_sub(Duration::from_secs(10)),
            UnixTime::EPOCH
        );
        assert_eq!(UnixTime::EPOCH.duration_since(UnixTime::from_secs(1)), None);
        assert_eq!(
            UnixTime::from_secs(5).duration_since(UnixTime::from_secs(2)),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(UnixTime::from_secs(100));
        assert_eq!(clock.now(), UnixTime::from_secs(100));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), UnixTime::from_millis(101_500));
        clock.set(UnixTime::from_secs(7));
        assert_eq!(clock.now(), UnixTime::from_secs(7));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > UnixTime::from_secs(1_577_836_800));
    }
}
