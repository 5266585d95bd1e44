//! When a mail process tries its tracker link again after losing it (the
//! tracker restarted): at once, then backing off to [`MAX_DELAY`], never
//! giving up, so that an outage costs a few attempts a second at first
//! and one every few seconds after. The outage is logged once by the
//! caller, when [`Redial::lost`] says it began.

use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Redial {
    /// Down: the next attempt is due then.
    next: Option<Instant>,
    /// Down since then.
    since: Option<Instant>,
    delay: Duration,
}

impl Redial {
    /// The link is down; true when this begins an outage (log it then).
    pub fn lost(&mut self, now: Instant) -> bool {
        let began = self.next.is_none();
        if began {
            self.delay = FIRST_DELAY;
            self.next = Some(now);
            self.since = Some(now);
        }
        began
    }

    /// Is the link down and an attempt due?
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|at| at <= now)
    }

    /// When the next attempt is due, if the link is down.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next
    }

    /// An attempt failed: the next one waits longer.
    pub fn failed(&mut self, now: Instant) {
        self.next = Some(now + self.delay);
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    /// How long the link has been down (zero when it is up).
    pub fn away_for(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// The link is back.
    pub fn joined(&mut self) {
        self.next = None;
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_back_off_and_an_outage_begins_once() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        assert!(!r.due(t0));
        assert!(r.lost(t0));
        assert!(!r.lost(t0), "still the same outage");
        assert!(r.due(t0));
        let mut at = t0;
        for _ in 0..10 {
            r.failed(at);
            assert!(!r.due(at));
            at = r.next_attempt().unwrap();
        }
        assert_eq!(r.delay, MAX_DELAY);
        assert_eq!(r.away_for(at), at - t0);
        r.joined();
        assert_eq!(r.away_for(at), Duration::ZERO);
        assert!(!r.due(at + MAX_DELAY));
        assert!(r.lost(at), "a new outage");
    }
}
