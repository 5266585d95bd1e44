//! The ways a connection leaves the core. Every one goes through
//! `remove_conn`, which undoes what the connection held (polling, watches,
//! its place on the return path, its user), so each leaves exactly once and
//! its descriptor is handed to the loop exactly once.

use std::hash::Hash;
use std::os::fd::AsRawFd;

use log::{debug, info, warn};

use super::action::Action;
use super::conn::{split_id, Conn, ConnId, Phase};
use super::Core;
use crate::proto::native::{Gone, GoneReason};

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// Take the connection out, undoing everything it held. `abandon`: a
    /// return under way is dropped (it did not end by that return).
    pub(super) fn remove_conn(&mut self, id: ConnId, abandon: bool) -> Option<Conn<F>> {
        self.get(id)?;
        let (key, _) = split_id(id);
        let conn = self.conns.remove(key as usize);
        match conn.phase {
            Phase::Parked => {
                self.out.push_back(Action::Unpoll {
                    fd: conn.fd.as_raw_fd(),
                    notify: conn.notify.as_ref().map(|n| n.as_raw_fd()),
                });
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
        if let Some(n) = conn.notify {
            self.out.push_back(Action::Close(n));
        }
    }

    /// The connection is over: close it, tell the tracker, log why once.
    pub(super) fn drop_conn(&mut self, id: ConnId, reason: GoneReason, detail: &str) {
        let who = self.who(id);
        let Some(user) = self.get(id).map(|c| self.users.name(c.user).to_owned()) else {
            return;
        };
        let Some(conn) = self.remove_conn(id, true) else {
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
            self.out.push_back(Action::Bye(conn.fd));
            if let Some(n) = conn.notify {
                self.out.push_back(Action::Close(n));
            }
        } else {
            self.close(conn);
        }
    }

    /// Nobody took the connection back in time: say goodbye and close it.
    pub fn give_up(&mut self, id: ConnId, why: &str) {
        self.drop_conn(id, GoneReason::GaveUp, why);
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
