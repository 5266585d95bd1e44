//! The connection core: every connection imap-idle holds, and every change
//! of its phase, with no I/O. It owns the slab of connections, interned
//! users, the watch table, the timer heap and the return queue. Events go
//! in (adopted, input, changed, accepted, rejected, expired, shutdown);
//! [`Action`]s come out for the event loop to carry out. The client
//! descriptor type `F` and the kernel watch type `W` are parameters, so
//! tests drive the core with stand-ins and count every close.
//!
//! A connection is parked, then woken (queued for the return path), then
//! in flight, and leaves exactly once: returned, gone (hung up, output
//! full) or given up with a BYE. `wake` holds what wakes it, `returns` the
//! way back, `leave` the ways out, `report` what the core tells about itself.

mod action;
mod conn;
mod handover;
pub mod idle_input;
mod leave;
mod notify_path;
mod report;
mod returns;
mod serials;
mod timers;
mod tuning;
mod users;
mod wake;
mod watch_refs;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::Hash;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, info};
use slab::Slab;

pub use action::{Action, Presence};
pub use conn::MAX_KEPT_TAG;
pub use conn::{conn_id, split_id, Carried, ConnId, Leaving, Phase, Returning, Waking};
use conn::{Conn, Fields};
pub use notify_path::NotifyPath;
use serials::Serials;
use timers::Timers;
pub use timers::{next_keepalive, Millis};
pub use tuning::Tuning;
use users::Users;
use watch_refs::{WatchRefs, Watcher};

use crate::proto::native::{Cookie, RefuseKind, Stats};

const STILL_HERE: &[u8] = b"* OK Still here\r\n";
/// What a client we give up on, or cannot park after all, is told.
pub const BYE: &[u8] = b"* BYE [UNAVAILABLE] Server is busy, please reconnect.\r\n";

/// A client arriving to be parked, however it came, with its watched
/// paths already resolved to kernel watches by the inotify adapter.
pub struct Arrival<'a, F, W> {
    pub fd: F,
    pub user: &'a str,
    pub cookie: Cookie,
    pub tag: &'a str,
    pub in_idle: bool,
    /// Dovecot 2.4's `multiplex_ostream`: frame what we write to it.
    pub multiplex: bool,
    pub keepalive_secs: u32,
    pub watches: Vec<(W, &'a Path)>,
    pub state: &'a [u8],
    pub from_pid: i32,
    /// Set when it comes from a predecessor daemon.
    pub carried: Carried<'a>,
}

/// A refused arrival: its descriptors go back to the caller.
pub struct Refused<F> {
    pub fd: F,
    pub kind: RefuseKind,
    pub reason: String,
}

pub struct Core<F, W> {
    conns: Slab<Conn<F>>,
    users: Users,
    watches: WatchRefs<W>,
    timers: Timers,
    /// Woken connections waiting for their turn to go back, in order
    /// (key, serial); entries that went stale are skipped.
    queue: VecDeque<(u32, u32)>,
    in_flight: usize,
    /// Connections woken so far, to number them in wake order.
    wakes: u64,
    serials: Serials,
    max_parked: usize,
    tuning: Tuning,
    draining: bool,
    /// Keeping what we hold but taking nobody new: exit once empty.
    retiring: bool,
    /// Native mode: the tracker hears of every parked client that leaves
    /// other than by a return (Dovecot's imap-master counts nothing).
    tell_gone: bool,
    /// Dovecot mode under its master: anvil hears of every connection
    /// that joins and leaves.
    announce: bool,
    stats: Stats,
    /// Latest wake latencies (change noticed -> descriptor sent back), µs.
    wake_us: VecDeque<u32>,
    epoch: Instant,
    out: VecDeque<Action<F, W>>,
    woken: Vec<Watcher>,
}

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// `key` (for connection serials) should come from the OS: it makes ids unguessable.
    pub fn new(max: usize, tell_gone: bool, epoch: Instant, key: u64, tuning: Tuning) -> Self {
        Core {
            conns: Slab::new(),
            users: Users::default(),
            watches: WatchRefs::new(),
            timers: Timers::default(),
            queue: VecDeque::new(),
            in_flight: 0,
            wakes: 0,
            serials: Serials::new(key),
            max_parked: max,
            tuning,
            draining: false,
            retiring: false,
            tell_gone,
            announce: false,
            stats: Stats::default(),
            wake_us: VecDeque::new(),
            epoch,
            out: VecDeque::new(),
            woken: Vec::new(),
        }
    }

    /// Ask for [`Action::Joined`] and [`Action::Left`] for every
    /// connection from now on.
    pub fn announce_presence(&mut self) {
        self.announce = true;
    }

    pub fn millis(&self, now: Instant) -> Millis {
        now.saturating_duration_since(self.epoch).as_millis() as Millis
    }

    /// The next action for the loop to carry out, in order.
    pub fn next_action(&mut self) -> Option<Action<F, W>> {
        self.out.pop_front()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn max_parked(&self) -> usize {
        self.max_parked
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Shutting down or retired, and holding nothing: the loop may exit.
    pub fn done(&self) -> bool {
        (self.draining || self.retiring) && self.conns.is_empty()
    }

    pub fn holds(&self, id: ConnId) -> bool {
        self.get(id).is_some()
    }

    fn get(&self, id: ConnId) -> Option<&Conn<F>> {
        let (key, serial) = split_id(id);
        self.conns.get(key as usize).filter(|c| c.serial == serial)
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn<F>> {
        let (key, serial) = split_id(id);
        self.conns
            .get_mut(key as usize)
            .filter(|c| c.serial == serial)
    }

    /// The client socket of `id`, while it is ours.
    pub fn fd(&self, id: ConnId) -> Option<&F> {
        self.get(id).map(|c| &c.fd)
    }

    /// The slab key the next adopted connection gets (its poll token).
    pub fn next_key(&self) -> u32 {
        self.conns.vacant_key() as u32
    }

    /// The parked connection whose descriptors are polled under `key`.
    pub fn parked_at_key(&self, key: u32) -> Option<ConnId> {
        let c = self.conns.get(key as usize)?;
        (c.phase == Phase::Parked).then(|| c.id(key))
    }

    /// `user=… conn=…` for log lines.
    pub fn who(&self, id: ConnId) -> String {
        match self.get(id) {
            Some(c) => format!("user={} conn={}", self.users.name(c.user), c.serial),
            None => format!("conn {id:#x}"),
        }
    }

    /// Whether one more connection may come in, with `pending` hand-offs
    /// already promised room.
    pub fn admit(&self, pending: usize) -> Result<(), (RefuseKind, String)> {
        if self.draining {
            return Err((
                RefuseKind::ShuttingDown,
                "imap-idle is shutting down".into(),
            ));
        }
        let used = self.conns.len() + pending;
        if used >= self.max_parked {
            let why = format!("imap-idle is full ({used} connections parked)");
            return Err((RefuseKind::Full, why));
        }
        Ok(())
    }

    /// Count and log a refusal made before the core saw the descriptors.
    pub fn refuse(&mut self, user: &str, from_pid: i32, reason: &str) {
        self.stats.refused += 1;
        info!("user={user}: park refused from pid {from_pid}: {reason}");
    }

    /// Kernel watches that were added for an arrival that never came in:
    /// any that no parked connection shares are removed again.
    pub fn discard_watches(&mut self, wds: Vec<W>) {
        for wd in wds {
            if !self.watches.knows(&wd) {
                self.out.push_back(Action::Unwatch(wd));
            }
        }
    }

    /// Make a client ours: it watches its paths and gets its keepalive.
    pub fn adopt(&mut self, a: Arrival<'_, F, W>, now: Instant) -> Result<ConnId, Refused<F>> {
        // Their lengths are kept in a byte each; never cut them.
        let too_long =
            (a.tag.len() > MAX_KEPT_TAG || a.watches.len() > u8::MAX as usize).then(|| {
                (
                    RefuseKind::Invalid,
                    "tag or watch list too long to keep".to_owned(),
                )
            });
        if let Some((kind, reason)) = too_long.or_else(|| self.admit(0).err()) {
            self.refuse(a.user, a.from_pid, &reason);
            self.discard_watches(a.watches.into_iter().map(|(wd, _)| wd).collect());
            return Err(Refused {
                fd: a.fd,
                kind,
                reason,
            });
        }
        let key = self.conns.vacant_key() as u32;
        let serial = self.serials.next();
        // A watch whose last watcher left earlier in this same event may be
        // waiting to be removed; the kernel gave it to us again, so keep it.
        self.out.retain(|act| match act {
            Action::Unwatch(w) => !a.watches.iter().any(|(wd, _)| wd == w),
            _ => true,
        });
        let watches: Vec<u32> = a
            .watches
            .iter()
            .map(|(wd, path)| self.watches.add(wd.clone(), path, (key, serial)))
            .collect();
        let ms = self.millis(now);
        let carried = a.carried;
        let user = self.users.intern(a.user);
        let conn = Conn::new(
            a.fd,
            Fields {
                serial,
                user,
                keepalive_secs: a.keepalive_secs,
                parked_at: (ms / 1000) as u32,
                in_idle: a.in_idle,
                multiplex: a.multiplex,
                cookie: a.cookie,
                watches: &watches,
                tag: a.tag,
                state: a.state,
            },
        );
        let inserted = self.conns.insert(conn) as u32;
        debug_assert_eq!(inserted, key);
        self.schedule_keepalive(key, ms);
        self.arrived(key, &carried, ms);
        self.capacity_changed();
        let id = conn_id(key, serial);
        if self.announce {
            self.out.push_back(Action::Joined(Presence {
                id,
                user: a.user.to_owned(),
                cookie: a.cookie,
            }));
        }
        debug!(
            "{}: parked from pid {} ({} watches, keepalive {}s)",
            self.who(id),
            a.from_pid,
            watches.len(),
            a.keepalive_secs
        );
        Ok(id)
    }

    /// One report per run of changes: a batch of parks would otherwise
    /// queue one each, and every adoption scans the queue.
    fn capacity_changed(&mut self) {
        if !matches!(self.out.back(), Some(Action::Capacity)) {
            self.out.push_back(Action::Capacity);
        }
    }

    fn schedule_keepalive(&mut self, key: u32, ms: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.timer_gen = self.timers.new_gen();
        // Clamped here, so the session's own interval goes back unchanged.
        let secs = self.tuning.keepalive_secs(conn.keepalive_secs);
        if secs > 0 {
            let hash = self.users.hash(conn.user);
            let at = next_keepalive(ms, secs as u64 * 1000, hash);
            self.timers.schedule(at, key, conn.timer_gen);
        }
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let at = self.timers.next_deadline()?;
        Some(self.epoch + Duration::from_millis(at))
    }

    /// Keepalives, return retries and give-up deadlines due at `now`.
    pub fn expire(&mut self, now: Instant) {
        let ms = self.millis(now);
        while let Some((key, gen)) = self.timers.pop_due(ms) {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            if conn.timer_gen != gen {
                continue;
            }
            let id = conn.id(key);
            match conn.phase {
                Phase::Parked => {
                    self.stats.keepalives += 1;
                    let bytes = conn.framed(Cow::Borrowed(STILL_HERE));
                    self.out.push_back(Action::Write {
                        id,
                        bytes,
                        what: "keepalive",
                    });
                    self.schedule_keepalive(key, ms);
                }
                Phase::Waiting => self.retry_due(id, ms),
                Phase::Queued | Phase::InFlight => {
                    self.give_up(id, "the session could not be resumed in time")
                }
            }
        }
        let conns = &self.conns;
        self.timers.compact(conns.len(), |key, gen| {
            conns.get(key as usize).is_some_and(|c| c.timer_gen == gen)
        });
    }
}

/// Whether the watcher `(key, serial)` is still a parked connection (slab
/// keys are reused, serials are not).
fn parked_in<F>(conns: &Slab<Conn<F>>, (key, serial): Watcher) -> bool {
    conns
        .get(key as usize)
        .is_some_and(|c| c.serial == serial && c.phase == Phase::Parked)
}

#[cfg(test)]
mod tests;
