//! Connections leaving for a successor daemon, and arriving from a
//! predecessor. Both ends of a hand-over meet the core here: a parked
//! connection leaves whole (descriptors and everything the successor
//! needs to carry on: keepalive phase, partial `DONE`, how long it has
//! been parked), without a `Gone` to the tracker and without a wake; it
//! arrives through [`Core::adopt`] like any park, with [`Carried`] set.

use std::hash::Hash;
use std::os::fd::AsRawFd;
use std::time::Instant;

use log::debug;

use super::conn::{ConnId, Extra, Phase};
use super::timers::{next_keepalive, Millis};
use super::Core;
use crate::proto::native::{Handed, Park};

/// What a connection brings from a predecessor past a plain park.
/// `Default` is a fresh park.
#[derive(Default, Clone, Copy)]
pub struct Carried<'a> {
    /// It comes from a predecessor daemon (a hand-over, not a park).
    pub predecessor: bool,
    /// When its next keepalive is due, in ms from adoption (0: none).
    pub keepalive_in_ms: Millis,
    /// Bytes of a `DONE` typed so far.
    pub partial: &'a [u8],
    /// Seconds it has been parked already.
    pub parked_secs: u32,
}

/// A connection taken out of the core for a successor: its descriptors
/// (closed only once the successor confirmed it) and what travels.
pub struct Leaving<F> {
    pub fd: F,
    pub notify: Option<F>,
    pub handed: Handed,
}

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// Every connection that is parked (woken ones finish their return here).
    pub fn parked_ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::Parked)
            .map(|(k, c)| c.id(k as u32))
            .collect()
    }

    /// What `id` would carry to a successor, without taking it out (to
    /// size a batch before committing to it).
    pub fn describe_for_successor(&self, id: ConnId, now: Instant) -> Option<Handed> {
        let c = self.get(id).filter(|c| c.phase == Phase::Parked)?;
        let ms = self.millis(now);
        let keepalive_in_ms = if c.keepalive_secs > 0 {
            let at = next_keepalive(ms, c.keepalive_secs as u64 * 1000, self.users.hash(c.user));
            at.saturating_sub(ms).min(u32::MAX as u64) as u32
        } else {
            0
        };
        let partial = match c.extra.as_deref() {
            Some(Extra::Partial(p)) => p.to_vec(),
            _ => Vec::new(),
        };
        Some(Handed {
            id,
            park: Park {
                user: self.users.name(c.user).to_owned(),
                cookie: c.cookie,
                tag: c.tag().to_owned(),
                in_idle: c.in_idle,
                keepalive_secs: c.keepalive_secs,
                watch: c
                    .watches()
                    .iter()
                    .filter_map(|&i| self.watches.path(i).map(|p| p.to_path_buf()))
                    .collect(),
                state: c.state().to_vec(),
            },
            notify: c.notify.is_some(),
            keepalive_in_ms,
            partial,
            parked_secs: ((ms / 1000) as u32).saturating_sub(c.parked_at),
        })
    }

    /// Take a parked connection out for a successor. The one place where
    /// a connection leaves us for a successor: whatever must hear of that
    /// (anvil, under Dovecot) hooks in here.
    pub fn leave_for_successor(&mut self, id: ConnId, now: Instant) -> Option<Leaving<F>> {
        let handed = self.describe_for_successor(id, now)?;
        let who = self.who(id);
        let conn = self.remove_conn(id, true)?;
        self.stats.handed_over += 1;
        debug!("{who}: leaving for the successor");
        Some(Leaving {
            fd: conn.fd,
            notify: conn.notify,
            handed,
        })
    }

    /// A successor confirmed it holds the connection: our copies close
    /// (no BYE, no shutdown: the socket lives on over there).
    pub fn left(&mut self, l: Leaving<F>) {
        self.out.push_back(super::Action::Close(l.fd));
        if let Some(n) = l.notify {
            self.out.push_back(super::Action::Close(n));
        }
    }

    /// Apply what an adopted connection carried: its keepalive phase and
    /// any partial `DONE`. The one place where a connection adopted from a
    /// predecessor is handled as such: whatever must hear of that hooks in
    /// here.
    pub(super) fn carried_in(&mut self, key: u32, carried: &Carried<'_>, ms: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !carried.partial.is_empty() {
            conn.extra = Some(Box::new(Extra::Partial(carried.partial.into())));
        }
        conn.parked_at = conn.parked_at.saturating_sub(carried.parked_secs);
        if carried.keepalive_in_ms > 0 && conn.keepalive_secs > 0 {
            conn.timer_gen = self.timers.new_gen();
            let at = ms + carried.keepalive_in_ms;
            self.timers.schedule(at, key, conn.timer_gen);
        }
        self.stats.taken_over += 1;
    }
}

impl<F, W> super::Arrival<'_, F, W> {
    pub fn from_predecessor(&self) -> bool {
        self.carried.predecessor
    }
}

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// An adopted connection the predecessor was never told about: it
    /// keeps the client, so ours closes quietly.
    pub fn not_taken_over(&mut self, id: ConnId) {
        if let Some(conn) = self.remove_conn(id, true) {
            self.stats.taken_over = self.stats.taken_over.saturating_sub(1);
            self.out.push_back(super::Action::Close(conn.fd));
            if let Some(n) = conn.notify {
                self.out.push_back(super::Action::Close(n));
            }
        }
    }

    /// The descriptors of a parked connection, to send to a successor.
    pub fn fds_of(&self, id: ConnId) -> Option<(&F, Option<&F>)> {
        let c = self.get(id).filter(|c| c.phase == Phase::Parked)?;
        Some((&c.fd, c.notify.as_ref()))
    }
}
