//! Session limits, decided before anything starts: how many sessions may run on the host and
//! per user, and when a running session must end (idle too long, or run too long).
//!
//! Plain bookkeeping and plain functions of `now`, so they are tested without processes or
//! sockets; the host holds a [`SessionSlot`] for each running session and asks
//! [`session_deadline`] when to end it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::UserId;
use tokio::time::Instant;

/// The host's limits (`[limits]` in `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions that may run at once on this host.
    pub max_sessions: usize,
    /// Sessions one mesh user may run at once on this host.
    pub max_sessions_per_user: usize,
    /// A session with no bytes either way for this long is ended; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// The longest any session may run (a grant may set a shorter one).
    pub max_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            max_sessions_per_user: 8,
            // OpenSSH's default: an idle shell stays; admins who want otherwise set it.
            idle_timeout: None,
            max_duration: mesh_proto::grant::DEFAULT_MAX_SESSION,
        }
    }
}

/// A limit that refused a new session; its text names the `config.toml` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitReached {
    /// The host runs `max` sessions already.
    Total {
        /// The limit.
        max: usize,
    },
    /// This user runs `max` sessions here already.
    PerUser {
        /// The user's name.
        user: String,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for LimitReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Total { max } => write!(
                f,
                "session limit reached: this host already runs {max} sessions \
                 (max_sessions in the host's config.toml)"
            ),
            Self::PerUser { user, max } => write!(
                f,
                "session limit reached: {user} already runs {max} sessions on this host \
                 (max_sessions_per_user in the host's config.toml)"
            ),
        }
    }
}

/// Counts running sessions against [`Limits`].
#[derive(Debug)]
pub struct SessionCounter {
    limits: Limits,
    running: Mutex<BTreeMap<UserId, usize>>,
}

impl SessionCounter {
    /// A counter with nothing running.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            running: Mutex::new(BTreeMap::new()),
        })
    }

    /// The limits counted against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes a slot for one more session of `user`, or says which limit is full. The slot is
    /// given back when dropped.
    pub fn try_admit(
        self: &Arc<Self>,
        user: UserId,
        user_name: &str,
    ) -> Result<SessionSlot, LimitReached> {
        let mut running = self.lock();
        let total: usize = running.values().sum();
        if total >= self.limits.max_sessions {
            return Err(LimitReached::Total {
                max: self.limits.max_sessions,
            });
        }
        let mine = running.entry(user).or_insert(0);
        if *mine >= self.limits.max_sessions_per_user {
            return Err(LimitReached::PerUser {
                user: user_name.to_owned(),
                max: self.limits.max_sessions_per_user,
            });
        }
        *mine += 1;
        Ok(SessionSlot {
            counter: self.clone(),
            user,
        })
    }

    /// Sessions running now.
    pub fn running(&self) -> usize {
        self.lock().values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<UserId, usize>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One running session's place in the count.
#[derive(Debug)]
pub struct SessionSlot {
    counter: Arc<SessionCounter>,
    user: UserId,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut running = self.counter.lock();
        if let Some(count) = running.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.user);
            }
        }
    }
}

/// Why the host ends a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// No bytes either way for the idle timeout.
    Idle(Duration),
    /// The session ran for its longest allowed duration.
    MaxDuration(Duration),
    /// The temporary grant it runs under expired (temporary sessions end with their grant).
    GrantExpired,
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle(d) => write!(
                f,
                "the host ended the session: idle for {} (idle_timeout)",
                humantime::format_duration(*d)
            ),
            Self::MaxDuration(d) => write!(
                f,
                "the host ended the session: it reached its maximum duration of {} \
                 (max_duration, or the grant's session limit)",
                humantime::format_duration(*d)
            ),
            Self::GrantExpired => write!(
                f,
                "the host ended the session: its temporary grant expired, and the temporary \
                 account goes with it"
            ),
        }
    }
}

/// When a session that started at `started`, last saw traffic at `last_activity` and may run
/// at most `grant_max` under its grant must end, and why: whichever of the idle timeout and
/// the maximum duration comes first.
pub fn session_deadline(
    limits: &Limits,
    grant_max: Duration,
    started: Instant,
    last_activity: Instant,
) -> (Instant, SessionEnd) {
    let longest = limits.max_duration.min(grant_max);
    let by_duration = (started + longest, SessionEnd::MaxDuration(longest));
    match limits.idle_timeout {
        Some(idle) if last_activity + idle < by_duration.0 => {
            (last_activity + idle, SessionEnd::Idle(idle))
        }
        _ => by_duration,
    }
}

/// `deadline` moved earlier to `expires` when that comes first: a temporary session ends when
/// its grant does, whatever its limits allow.
pub fn until_expiry(
    deadline: (Instant, SessionEnd),
    expires: Option<Instant>,
) -> (Instant, SessionEnd) {
    match expires {
        Some(at) if at <= deadline.0 => (at, SessionEnd::GrantExpired),
        _ => deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_user: usize) -> Limits {
        Limits {
            max_sessions: total,
            max_sessions_per_user: per_user,
            ..Limits::default()
        }
    }

    #[test]
    fn the_total_limit_refuses_the_next_session_and_a_freed_slot_admits_again() {
        let counter = SessionCounter::new(limits(2, 2));
        let a = counter.try_admit(UserId(1), "ann").unwrap();
        let _b = counter.try_admit(UserId(2), "bob").unwrap();
        let refused = counter.try_admit(UserId(3), "cy").unwrap_err();
        assert_eq!(refused, LimitReached::Total { max: 2 });
        assert!(refused.to_string().contains("max_sessions"), "{refused}");
        drop(a);
        assert_eq!(counter.running(), 1);
        counter.try_admit(UserId(3), "cy").unwrap();
    }

    #[test]
    fn the_per_user_limit_counts_each_user_apart() {
        let counter = SessionCounter::new(limits(10, 1));
        let _a = counter.try_admit(UserId(1), "ann").unwrap();
        let refused = counter.try_admit(UserId(1), "ann").unwrap_err();
        assert!(
            refused.to_string().contains("ann already runs 1")
                && refused.to_string().contains("max_sessions_per_user"),
            "{refused}"
        );
        counter.try_admit(UserId(2), "bob").unwrap();
    }

    #[test]
    fn the_deadline_is_the_earlier_of_idle_and_duration() {
        let t0 = Instant::now();
        let mut l = limits(1, 1);
        l.max_duration = Duration::from_secs(3600);
        let hour = Duration::from_secs(3600);
        // No idle timeout: the duration, capped by the grant.
        assert_eq!(
            session_deadline(&l, Duration::from_secs(60), t0, t0),
            (
                t0 + Duration::from_secs(60),
                SessionEnd::MaxDuration(Duration::from_secs(60))
            )
        );
        l.idle_timeout = Some(Duration::from_secs(300));
        let later = t0 + Duration::from_secs(1000);
        assert_eq!(
            session_deadline(&l, hour, t0, later),
            (
                later + Duration::from_secs(300),
                SessionEnd::Idle(Duration::from_secs(300))
            )
        );
        // Activity near the end does not extend past the maximum duration.
        let late = t0 + Duration::from_secs(3500);
        assert_eq!(
            session_deadline(&l, hour, t0, late),
            (t0 + hour, SessionEnd::MaxDuration(hour))
        );
    }

    #[test]
    fn a_temporary_grant_ends_its_session_at_expiry_only_when_that_comes_first() {
        let now = Instant::now();
        let by_limits = (
            now + Duration::from_secs(60),
            SessionEnd::Idle(Duration::from_secs(60)),
        );
        let early = now + Duration::from_secs(5);
        assert_eq!(
            until_expiry(by_limits, Some(early)),
            (early, SessionEnd::GrantExpired)
        );
        let late = now + Duration::from_secs(600);
        assert_eq!(until_expiry(by_limits, Some(late)), by_limits);
        assert_eq!(until_expiry(by_limits, None), by_limits);
    }
}
