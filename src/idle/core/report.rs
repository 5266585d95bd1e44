//! What the core tells about itself: statistics (with how Dovecot's notify
//! fds were taken in), the one-line summary, and the connections it holds
//! for `who` and for a new tracker link.

use std::hash::Hash;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::conn::Phase;
use super::notify_path::NotifyPath;
use super::Core;
use crate::proto::native::{Activity, ConnInfo, Held, Stats};

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// Every connection held (of `user`, or all), for the tracker's `who`.
    pub fn describe(&self, user: Option<&str>, now: Instant) -> Vec<ConnInfo> {
        let now_secs = (self.millis(now) / 1000) as u32;
        self.conns
            .iter()
            .filter(|(_, c)| user.is_none_or(|u| self.users.name(c.user) == u))
            .map(|(key, c)| ConnInfo {
                id: c.id(key as u32),
                user: self.users.name(c.user).to_owned(),
                // The state is opaque to us: the tracker knows the mailbox.
                mailbox: String::new(),
                activity: if c.phase == Phase::Parked {
                    Activity::Parked
                } else {
                    Activity::Returning
                },
                secs: now_secs.saturating_sub(c.parked_at),
            })
            .collect()
    }

    /// Count how a Dovecot notify fd was taken in (shared, reopened, kept).
    pub fn count_notify(&mut self, how: NotifyPath) {
        match how {
            NotifyPath::Shared => self.stats.notify_shared += 1,
            NotifyPath::Reopened => self.stats.notify_reopened += 1,
            NotifyPath::Kept => self.stats.notify_kept += 1,
        }
    }

    /// Every connection held, parked or returning, as a new tracker link
    /// re-reports them.
    pub fn held(&self) -> Vec<Held> {
        self.conns
            .iter()
            .map(|(key, c)| Held {
                id: c.id(key as u32),
                user: self.users.name(c.user).to_owned(),
                cookie: c.cookie,
            })
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let returning = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::Parked)
            .count() as u64;
        Stats {
            parked: self.conns.len() as u64 - returning,
            returning,
            watches: self.watches.count() as u64,
            wake_us: self.wake_us.iter().copied().collect(),
            ..self.stats.clone()
        }
    }

    /// The service manager's one-line status (systemd's `STATUS=`).
    pub fn status_line(&self) -> String {
        let returning = self.conns.iter().filter(|(_, c)| c.phase != Phase::Parked);
        let returning = returning.count();
        format!(
            "{} parked, {returning} returning, {} watches, {} users{}",
            self.conns.len() - returning,
            self.watches.count(),
            self.users.len(),
            if self.draining { "; stopping" } else { "" }
        )
    }

    pub fn summary(&self) -> String {
        let s = self.stats();
        format!(
            "parked={} returning={} watches={} users={} parks={} refused={} \
             wakes: done={} bad-done={} input={} changed={} shutdown={}; \
             idle-restarted={} returned={} hung-up={} gave-up={} keepalives={}; \
             notify fds: shared={} reopened={} kept={}",
            s.parked,
            s.returning,
            s.watches,
            self.users.len(),
            s.parks,
            s.refused,
            s.wake_done,
            s.wake_bad_done,
            s.wake_input,
            s.wake_changed,
            s.wake_shutdown,
            s.idle_restarted,
            s.returned,
            s.hung_up,
            s.gave_up,
            s.keepalives,
            s.notify_shared,
            s.notify_reopened,
            s.notify_kept
        )
    }
}
