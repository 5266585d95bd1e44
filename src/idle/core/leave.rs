//! The ways a connection leaves the core, and shutdown, which sends them
//! all one of those ways. Every one goes through
//! `remove_conn`, which undoes what the connection held (polling, watches,
//! its place on the return path, its user), so each leaves exactly once and
//! its descriptor is handed to the loop exactly once. Also the two ways the
//! whole daemon ends: shut down (everyone handed back) or retired
//! (everyone kept until they leave by themselves).

use std::borrow::Cow;
use std::hash::Hash;
use std::os::fd::AsRawFd;
use std::time::Instant;

use log::{debug, info, warn};

use super::action::{Action, Presence};
use super::conn::{split_id, Conn, ConnId, Phase};
use super::{Core, BYE};
use crate::proto::native::{Gone, GoneReason, WakeReason};

/// What Dovecot's own imap-hibernate says to a kicked client.
const KICKED: &[u8] = b"* BYE Server shutting down.\r\n";

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// Keep every connection where it is (none is woken by this), and
    /// exit once the last one has left in its own time.
    pub fn retire(&mut self, why: &str) {
        if !self.retiring {
            self.retiring = true;
            info!(
                "{why}: keeping {} parked connections, each goes back when it wakes; \
                 exiting when none is left",
                self.conns.len()
            );
        }
    }

    /// First call: hand every parked connection back. Second: give up on
    /// whatever was not taken back yet.
    pub fn shutdown(&mut self, why: &str, now: Instant) {
        if !self.draining {
            self.draining = true;
            let keys: Vec<u32> = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase == Phase::Parked)
                .map(|(k, _)| k as u32)
                .collect();
            info!(
                "{why}: returning {} parked connections, then exiting",
                keys.len()
            );
            self.shorten_deadlines(now);
            for key in keys {
                self.wake(key, WakeReason::Shutdown, now);
            }
        } else {
            let ids: Vec<ConnId> = self.conns.iter().map(|(k, c)| c.id(k as u32)).collect();
            log::warn!(
                "{why} again: giving up on {} connections not yet taken back",
                ids.len()
            );
            for id in ids {
                self.give_up(id, "the server is shutting down");
            }
        }
    }

    /// Take the connection out, undoing everything it held. `abandon`: a
    /// return under way is dropped (it did not end by that return).
    pub(super) fn remove_conn(&mut self, id: ConnId, abandon: bool) -> Option<Conn<F>> {
        self.get(id)?;
        let (key, _) = split_id(id);
        let conn = self.conns.remove(key as usize);
        match conn.phase {
            Phase::Parked => {
                self.out.push_back(Action::Unpoll(conn.fd.as_raw_fd()));
                self.leave_watches(&conn.watches());
            }
            Phase::InFlight => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if abandon {
                    self.out.push_back(Action::Abandon(id));
                }
            }
            Phase::Queued | Phase::Waiting => {}
        }
        if self.announce {
            self.out.push_back(Action::Left(Presence {
                id,
                user: self.users.name(conn.user).to_owned(),
                cookie: conn.cookie,
            }));
        }
        self.users.release(conn.user);
        self.capacity_changed();
        Some(conn)
    }

    /// The return path took the connection: our copy closes.
    pub(super) fn finish_return(&mut self, id: ConnId, to: &str) {
        let who = self.who(id);
        if let Some(conn) = self.remove_conn(id, false) {
            debug!(
                "{who}: returned to {to} ({:?})",
                conn.waking().map(|w| w.reason)
            );
            self.stats.returned += 1;
            self.close(conn);
        }
    }

    fn close(&mut self, conn: Conn<F>) {
        self.out.push_back(Action::Close(conn.fd));
    }

    /// The connection is over: close it, tell the tracker, log why once.
    pub(super) fn drop_conn(&mut self, id: ConnId, reason: GoneReason, detail: &str) {
        let who = self.who(id);
        let Some(user) = self.get(id).map(|c| self.users.name(c.user).to_owned()) else {
            return;
        };
        let Some(mut conn) = self.remove_conn(id, true) else {
            return;
        };
        match reason {
            GoneReason::HungUp => {
                self.stats.hung_up += 1;
                info!("{who}: {detail}");
            }
            GoneReason::OutputFull => {
                self.stats.hung_up += 1;
                warn!("{who}: disconnected: {detail}");
            }
            GoneReason::GaveUp => {
                self.stats.gave_up += 1;
                warn!("{who}: disconnected with BYE: {detail}");
            }
        }
        if self.tell_gone {
            self.out.push_back(Action::Gone(Gone {
                id,
                user,
                cookie: conn.cookie,
                reason,
                detail: detail.to_owned(),
            }));
        }
        if reason == GoneReason::GaveUp {
            let bye = conn.framed(Cow::Borrowed(BYE));
            self.out.push_back(Action::Bye { fd: conn.fd, bye });
        } else {
            self.close(conn);
        }
    }

    /// Nobody took the connection back in time: say goodbye and close it.
    pub fn give_up(&mut self, id: ConnId, why: &str) {
        self.drop_conn(id, GoneReason::GaveUp, why);
    }

    /// An admin kicked `user` (Dovecot 2.4's `doveadm kick`): each of its
    /// connections, or only `only`, gets `* BYE Server shutting down.` and
    /// is closed. Connections in flight are left alone: the imap process
    /// taking them registers with anvil itself, and a kick reaches it
    /// there. Returns how many were kicked.
    pub fn kick(&mut self, user: &str, only: Option<ConnId>) -> u32 {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::InFlight && self.users.name(c.user) == user)
            .map(|(k, c)| c.id(k as u32))
            .filter(|id| only.is_none_or(|o| o == *id))
            .collect();
        for &id in &ids {
            info!("{}: kicked by an admin", self.who(id));
            if let Some(mut conn) = self.remove_conn(id, true) {
                let bye = conn.framed(Cow::Borrowed(KICKED));
                self.out.push_back(Action::Bye { fd: conn.fd, bye });
            }
        }
        ids.len() as u32
    }

    /// Undo a park whose confirmation could not be delivered: the mail
    /// process keeps the client, so we close our copy without a word.
    pub fn unconfirmed(&mut self, id: ConnId) {
        if !self.holds(id) {
            return;
        }
        warn!(
            "{}: park not confirmed to the mail process; dropped",
            self.who(id)
        );
        if let Some(conn) = self.remove_conn(id, true) {
            self.stats.parks -= 1;
            self.close(conn);
        }
    }
}
