//! The way back: woken connections wait in order for the return path (the
//! tracker link, or imap-master in Dovecot mode), go in flight, and end
//! when it answers. The core keeps its copy of the descriptor until then,
//! so a return path that fails loses nothing.

use std::hash::Hash;
use std::os::fd::AsRawFd;
use std::time::Instant;

use log::{debug, warn};

use super::conn::{split_id, ConnId, Phase, Returning};
use super::timers::Millis;
use super::Core;

/// Wake latencies kept for the stats.
const KEEP_WAKE_SAMPLES: usize = 4096;

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// Returns under way (sent, not answered).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next connection waiting for its turn, skipping queue entries
    /// that went stale (the connection left, or its slab key was reused).
    pub fn pop_return(&mut self) -> Option<ConnId> {
        while let Some((key, serial)) = self.queue.pop_front() {
            if self
                .conns
                .get(key as usize)
                .is_some_and(|c| c.serial == serial && c.phase == Phase::Queued)
            {
                return Some(super::conn_id(key, serial));
            }
        }
        None
    }

    /// Whether a connection waits for its turn (maybe stale).
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn returning(&self, id: ConnId) -> Option<Returning<'_, F>> {
        let c = self.get(id)?;
        Some(Returning {
            fd: &c.fd,
            user: self.users.name(c.user),
            cookie: c.cookie,
            tag: c.tag(),
            in_idle: c.in_idle,
            keepalive_secs: c.keepalive_secs,
            state: c.state(),
            waking: c.waking()?,
            parked_at: c.parked_at,
        })
    }

    /// A popped connection could not be sent now: it goes first next time.
    pub fn not_sent(&mut self, id: ConnId) {
        if self.get(id).is_some_and(|c| c.phase == Phase::Queued) {
            self.queue.push_front(split_id(id));
        }
    }

    /// The return path has taken the connection on; its answer is awaited.
    pub fn sending(&mut self, id: ConnId) {
        let Some(c) = self.get_mut(id).filter(|c| c.phase == Phase::Queued) else {
            return;
        };
        c.phase = Phase::InFlight;
        self.in_flight += 1;
    }

    /// The descriptor of `id` was just sent back: note how long after the
    /// change that woke it (once per connection).
    pub fn sent(&mut self, id: ConnId, now: Instant) {
        let Some(w) = self.get_mut(id).and_then(|c| c.waking_mut()) else {
            return;
        };
        if w.reason != crate::proto::native::WakeReason::Changed {
            return;
        }
        if let Some(at) = w.woken_at.take() {
            if self.wake_us.len() == KEEP_WAKE_SAMPLES {
                self.wake_us.pop_front();
            }
            let us = now.saturating_duration_since(at).as_micros();
            self.wake_us.push_back(us.min(u32::MAX as u128) as u32);
            self.stats.wake_samples += 1;
        }
    }

    fn in_flight_conn(&self, id: ConnId) -> bool {
        self.get(id).is_some_and(|c| c.phase == Phase::InFlight)
    }

    /// The return path took `id`. False when `id` is not in flight here.
    pub fn accepted(&mut self, id: ConnId, to: &str) -> bool {
        if !self.in_flight_conn(id) {
            return false;
        }
        self.finish_return(id, to);
        true
    }

    /// The tracker refused `id` for now: retry with backoff until its
    /// deadline. False when `id` is not in flight here.
    pub fn rejected(&mut self, id: ConnId, reason: &str, now: Instant) -> bool {
        if !self.in_flight_conn(id) {
            return false;
        }
        let Some(w) = self.get_mut(id).and_then(|c| c.waking_mut()) else {
            return true;
        };
        w.attempts += 1;
        let attempts = w.attempts;
        // Refused returns are retried with backoff between the tuning's bounds.
        let (min, max) = (self.tuning.backoff_min_ms, self.tuning.backoff_max_ms);
        let delay = min.saturating_mul(1 << attempts.min(5)).min(max);
        self.retry_later(id, delay, now);
        if attempts == 1 {
            warn!(
                "{}: tracker refused the return ({reason}); retrying",
                self.who(id)
            );
        } else {
            debug!(
                "{}: tracker refused the return again ({reason})",
                self.who(id)
            );
        }
        true
    }

    /// Try the return again after `delay_ms`, or at the give-up deadline if
    /// that comes first (the timer then gives up).
    pub fn retry_later(&mut self, id: ConnId, delay_ms: Millis, now: Instant) {
        let ms = self.millis(now);
        let gen = self.timers.new_gen();
        let (key, _) = split_id(id);
        if self.in_flight_conn(id) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        let give_up_at = conn.waking().map_or(ms, |w| w.give_up_at);
        conn.phase = Phase::Waiting;
        conn.timer_gen = gen;
        self.timers
            .schedule((ms + delay_ms).min(give_up_at), key, gen);
    }

    /// A refused return's retry time came.
    pub(super) fn retry_due(&mut self, id: ConnId, ms: Millis) {
        let gen = self.timers.new_gen();
        let (key, serial) = split_id(id);
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        let Some(give_up_at) = conn.waking().map(|w| w.give_up_at) else {
            return;
        };
        if ms >= give_up_at {
            return self.give_up(id, "the tracker did not take the connection back in time");
        }
        conn.phase = Phase::Queued;
        conn.timer_gen = gen;
        self.timers.schedule(give_up_at, key, gen);
        self.queue.push_back((key, serial));
    }

    /// The return link failed: everything in flight goes back to the front
    /// of the queue, in its original order, to be sent on the next link.
    pub fn link_lost(&mut self) {
        let mut back: Vec<(u64, u32, u32)> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.phase == Phase::InFlight)
            .map(|(k, c)| {
                c.phase = Phase::Queued;
                let seq = c.waking().map_or(0, |w| w.seq);
                (seq, k as u32, c.serial)
            })
            .collect();
        back.sort_unstable();
        for (_, key, serial) in back.into_iter().rev() {
            self.queue.push_front((key, serial));
        }
        self.in_flight = 0;
    }

    /// Connections waiting for the return path, for log lines.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}
