//! What wakes a parked connection: its client's input (inside IDLE, only
//! `DONE`, or `DONE` and a new IDLE answered in place), a change of what
//! it watches, Dovecot's notify fd, shutdown. Waking takes it out of the
//! watches and queues it for the return path.

use std::borrow::Cow;
use std::hash::Hash;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use log::debug;

use super::action::Action;
use super::conn::{conn_id, split_id, ConnId, Extra, Phase, Waking};
use super::idle_input::{self, IdleInput, MAX_IDLE_INPUT};
use super::timers::Millis;
use super::watch_refs::Watcher;
use super::{parked_in, Core};
use crate::proto::native::{GoneReason, WakeReason, MAX_INPUT};

/// Give-up deadlines, as Dovecot's imap-hibernate: a client that typed is
/// waiting for an answer; one with only a mailbox change can wait longer.
const GIVE_UP_WITH_INPUT_MS: Millis = 10_000;
const GIVE_UP_WITHOUT_INPUT_MS: Millis = 5 * 60_000;
/// At shutdown, how long the return path gets to take everyone back.
const GIVE_UP_AT_SHUTDOWN_MS: Millis = 30_000;

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// How many bytes the client of `id` may send us in one read, if it
    /// is parked: enough for `DONE\r\n<tag> IDLE\r\n` inside IDLE.
    pub fn read_budget(&self, id: ConnId) -> Option<usize> {
        let c = self.get(id).filter(|c| c.phase == Phase::Parked)?;
        Some(if c.in_idle {
            MAX_IDLE_INPUT.saturating_sub(c.partial_len())
        } else {
            MAX_INPUT
        })
    }

    /// The client of a parked connection sent `bytes` (one read, at most
    /// [`Core::read_budget`]).
    pub fn input(&mut self, id: ConnId, bytes: &[u8], now: Instant) {
        let (key, _) = split_id(id);
        let Some(conn) = self.get_mut(id).filter(|c| c.phase == Phase::Parked) else {
            return;
        };
        if !conn.in_idle {
            // Anything at all wakes it; forward what we read.
            return self.wake_with(key, WakeReason::Input, bytes.to_vec(), false, now);
        }
        let mut data = conn.take_partial();
        data.extend_from_slice(bytes);
        match idle_input::parse(&data) {
            IdleInput::Partial => conn.extra = Some(Box::new(Extra::Partial(data.into()))),
            IdleInput::Bad => self.wake_with(key, WakeReason::BadDone, data, false, now),
            IdleInput::Done { rest } => {
                let rest = rest.to_vec();
                self.wake_with(key, WakeReason::Done, rest, false, now)
            }
            IdleInput::Restart { tag } => {
                // Tags are printable ASCII (checked by the parser).
                let mut answer = Vec::with_capacity(conn.tag().len() + 32);
                answer.extend_from_slice(conn.tag().as_bytes());
                answer.extend_from_slice(b" OK Idle completed.\r\n+ idling\r\n");
                conn.set_tag(tag);
                let bytes = conn.framed(Cow::Owned(answer));
                self.stats.idle_restarted += 1;
                debug!("{}: IDLE restarted in place", self.who(id));
                self.out.push_back(Action::Write {
                    id,
                    bytes,
                    what: "IDLE restart",
                });
            }
        }
    }

    /// The client of `id` closed its connection, or reading it failed.
    pub fn hung_up(&mut self, id: ConnId, detail: &str) {
        self.drop_conn(id, GoneReason::HungUp, detail);
    }

    /// A [`Action::Write`] could not be carried out.
    pub fn write_failed(&mut self, id: ConnId, full: bool, what: &str, error: &str) {
        if full {
            let detail = format!("client output buffer is full ({what})");
            self.drop_conn(id, GoneReason::OutputFull, &detail);
        } else {
            let detail = format!("{what} failed: {error}");
            self.drop_conn(id, GoneReason::HungUp, &detail);
        }
    }

    /// The file behind kernel watch `wd` changed; `gone`: the kernel
    /// dropped the watch (deleted, unmounted).
    pub fn watch_fired(&mut self, wd: &W, gone: bool, now: Instant) {
        let mut woken = std::mem::take(&mut self.woken);
        self.watches.fired(wd, gone, &mut woken);
        self.wake_watchers(&mut woken, now);
        self.woken = woken;
    }

    /// The kernel's event queue overflowed: every watcher may have missed
    /// a change.
    pub fn overflowed(&mut self, now: Instant) {
        let mut woken = std::mem::take(&mut self.woken);
        self.watches.overflowed(&mut woken);
        self.wake_watchers(&mut woken, now);
        self.woken = woken;
    }

    fn wake_watchers(&mut self, woken: &mut Vec<Watcher>, now: Instant) {
        for &(key, serial) in woken.iter() {
            if parked_in(&self.conns, (key, serial)) {
                self.wake(key, WakeReason::Changed, now);
            }
        }
        woken.clear();
    }

    /// Dovecot's inotify instance for the client of `id` became readable.
    pub fn notify_ready(&mut self, id: ConnId, now: Instant) {
        if self.get(id).is_some_and(|c| c.phase == Phase::Parked) {
            self.wake(split_id(id).0, WakeReason::Changed, now);
        }
    }

    /// Wake a parked connection for `reason` (a mailbox change, shutdown):
    /// any partial input already read travels with it.
    pub(super) fn wake(&mut self, key: u32, reason: WakeReason, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let input = conn.take_partial();
        let idle_running = conn.in_idle;
        self.wake_with(key, reason, input, idle_running, now);
    }

    /// Stop watching, and queue the connection for the return path.
    fn wake_with(
        &mut self,
        key: u32,
        reason: WakeReason,
        input: Vec<u8>,
        idle_running: bool,
        now: Instant,
    ) {
        let ms = self.millis(now);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase != Phase::Parked {
            return;
        }
        let watch_idx = conn.take_watches();
        // The notify fd has done its job, but it stays open until the
        // connection leaves us: closing an inotify instance waits for the
        // kernel to retire its marks (milliseconds), which would delay the
        // return. Dovecot's imap-hibernate closes it at the same point.
        self.out.push_back(Action::Unpoll {
            fd: conn.fd.as_raw_fd(),
            notify: conn.notify.as_ref().map(|n| n.as_raw_fd()),
        });
        let give_up_after = match reason {
            WakeReason::Shutdown => GIVE_UP_AT_SHUTDOWN_MS,
            _ if !input.is_empty() => GIVE_UP_WITH_INPUT_MS,
            WakeReason::Changed => GIVE_UP_WITHOUT_INPUT_MS,
            _ => GIVE_UP_WITH_INPUT_MS,
        };
        let gen = self.timers.new_gen();
        self.wakes += 1;
        let watch = watch_idx
            .iter()
            .filter_map(|&i| self.watches.path(i).map(Path::to_path_buf))
            .collect();
        conn.phase = Phase::Queued;
        conn.extra = Some(Box::new(Extra::Waking(Waking {
            reason,
            input,
            idle_running,
            give_up_at: ms + give_up_after,
            attempts: 0,
            watch,
            woken_at: Some(now),
            seq: self.wakes,
        })));
        conn.timer_gen = gen;
        let serial = conn.serial;
        self.timers.schedule(ms + give_up_after, key, gen);
        self.leave_watches(&watch_idx);
        match reason {
            WakeReason::Done => self.stats.wake_done += 1,
            WakeReason::BadDone => self.stats.wake_bad_done += 1,
            WakeReason::Input => self.stats.wake_input += 1,
            WakeReason::Changed => self.stats.wake_changed += 1,
            WakeReason::Shutdown => self.stats.wake_shutdown += 1,
        }
        debug!("{}: woken ({reason:?})", self.who(conn_id(key, serial)));
        self.queue.push_back((key, serial));
    }

    pub(super) fn leave_watches(&mut self, idx: &[u32]) {
        for &i in idx {
            let conns = &self.conns;
            if let Some(wd) = self.watches.leave(i, |w| parked_in(conns, w)) {
                self.out.push_back(Action::Unwatch(wd));
            }
        }
    }

    /// Connections woken before shutdown may have minutes left before they
    /// are given up; a stopping daemon gives them the shutdown deadline,
    /// so it exits (with a BYE for whoever is left) before a service
    /// manager loses patience and kills it without one.
    pub(super) fn shorten_deadlines(&mut self, now: Instant) {
        let by = self.millis(now) + GIVE_UP_AT_SHUTDOWN_MS;
        for (key, c) in self.conns.iter_mut() {
            let Some(w) = c.waking_mut().filter(|w| w.give_up_at > by) else {
                continue;
            };
            w.give_up_at = by;
            // A waiting one's retry timer already fires by then; the others
            // wait on their deadline, which moved.
            if matches!(c.phase, Phase::Queued | Phase::InFlight) {
                c.timer_gen = self.timers.new_gen();
                self.timers.schedule(by, key as u32, c.timer_gen);
            }
        }
    }
}
