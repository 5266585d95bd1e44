//! Knowing connections again after a restart, and forgetting the ones
//! nobody holds any more. The tracker keeps only users' cookies on disk
//! (`cookie_file`); the connections come back from their holders: imap-idle
//! re-reports what it holds on every new link (`Holding`), a mail process
//! what it serves once re-registered (`Serving`). Each report counts only
//! with the user's kept cookie, so a peer can re-register nothing it could
//! not have been given; and a mail process only users of its own uid.
//! A report from imap-idle is complete: what that daemon held before its
//! Hello and no longer reports is stale and dropped (counted), as is
//! everything of a daemon that died. Kept cookies that nobody claims
//! within the rejoin time go, like the cookie of any user whose last
//! connection went. Methods of [`Routing`]; plain data, no I/O.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::cookie_file::{Saved, SavedUser};
use super::parking::IdleRef;
use super::routing::{ConnEntry, Place, Routing, User};
use crate::proto::native::{Held, Served};

#[derive(Default)]
pub struct Rejoin {
    /// Entries dropped because imap-idle no longer held them.
    pub stale: u64,
    /// Kept cookies dropped because nobody claimed them after a restart.
    pub unclaimed: u64,
    /// Connections known again from re-reports since start.
    pub rejoined: u64,
    /// Users (and so cookies) changed since the file was last written.
    pub changed: bool,
    /// After a restart: when unclaimed kept cookies go.
    pub claim_until: Option<Instant>,
    /// An imap-idle link closed: whether its daemon died is looked at then
    /// (a process killed closes its sockets a moment before it is dead).
    pub check_daemons_at: Option<Instant>,
    /// imap-idle links whose report is under way: what each reported.
    reports: HashMap<usize, Report>,
}

struct Report {
    pid: u32,
    /// When we heard its Hello: entries parked since may be missing from
    /// its report (it was made before they came) and are not stale.
    since: Instant,
    seen: HashSet<u64>,
}

/// Why a re-reported connection is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRejoined {
    /// Unknown user, or not that user's cookie.
    Cookie,
    /// A mail process may serve only users of its own uid.
    Uid,
    /// That connection id stands for another connection.
    Taken,
}

impl std::fmt::Display for NotRejoined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotRejoined::Cookie => "the user is unknown or the cookie is not theirs",
            NotRejoined::Uid => "the user is of another uid",
            NotRejoined::Taken => "that id stands for another connection",
        })
    }
}

impl Routing {
    /// Cookies kept by the previous tracker; they wait for their users'
    /// connections to be reported until `claim_until`.
    pub fn load(&mut self, saved: Saved, claim_until: Instant) {
        self.set_next_conn(saved.next_conn);
        for u in saved.users {
            let user = User {
                cookie: u.cookie,
                uid: u.uid,
                conns: 0,
            };
            self.users.insert(u.name, user);
        }
        self.rejoin.claim_until = Some(claim_until);
    }

    /// What goes on disk.
    pub fn saved(&self) -> Saved {
        Saved {
            next_conn: self.next_conn(),
            users: self
                .users
                .iter()
                .map(|(name, u)| SavedUser {
                    name: name.clone(),
                    uid: u.uid,
                    cookie: u.cookie,
                })
                .collect(),
        }
    }

    /// imap-idle on link `key` (pid `pid`) said Hello: its report begins.
    pub fn report_begins(&mut self, key: usize, pid: u32, now: Instant) {
        let report = Report {
            pid,
            since: now,
            seen: HashSet::new(),
        };
        self.rejoin.reports.insert(key, report);
    }

    pub fn link_closed(&mut self, key: usize) {
        self.rejoin.reports.remove(&key);
    }

    /// One connection imap-idle on link `key` holds. Ok(true) when it was
    /// not known and is now.
    pub fn held(&mut self, key: usize, h: &Held, now: Instant) -> Result<bool, NotRejoined> {
        let Some(pid) = self.rejoin.reports.get(&key).map(|r| r.pid) else {
            return Ok(false);
        };
        if !self.cookie_ok(&h.user, &h.cookie) {
            return Err(NotRejoined::Cookie);
        }
        let idle = IdleRef { pid, id: h.id };
        if let Some(r) = self.rejoin.reports.get_mut(&key) {
            r.seen.insert(h.id);
        }
        if self.parking.conn_of(idle).is_some() {
            self.check_idle_id(idle, &h.user)
                .map_err(|_| NotRejoined::Taken)?;
            return Ok(false);
        }
        let conn = self.new_conn().map_err(|_| NotRejoined::Taken)?;
        let entry = ConnEntry {
            user: h.user.clone(),
            remote: String::new(),
            place: Place::Parked {
                idle,
                mailbox: String::new(),
            },
            since: now,
            rejoined: true,
        };
        self.conns.insert(conn, entry);
        self.parking.park(idle, conn);
        if let Some(u) = self.users.get_mut(&h.user) {
            u.conns += 1;
        }
        self.rejoin.rejoined += 1;
        Ok(true)
    }

    /// imap-idle on link `key` reported everything: what it held before
    /// its Hello and did not report is stale. Returns what was dropped.
    pub fn report_done(&mut self, key: usize) -> Vec<(u64, String)> {
        let Some(r) = self.rejoin.reports.remove(&key) else {
            return Vec::new();
        };
        let stale: Vec<u64> = self
            .parking
            .of_daemon(r.pid)
            .into_iter()
            .filter(|(idle, conn)| {
                !r.seen.contains(&idle.id)
                    && self.conns.get(conn).is_some_and(|c| c.since < r.since)
            })
            .map(|(_, conn)| conn)
            .collect();
        self.drop_stale(stale)
    }

    /// Everything parked in daemons that are gone (no link, process dead).
    pub fn drop_dead_daemons(
        &mut self,
        linked: &HashSet<u32>,
        alive: impl Fn(u32) -> bool,
    ) -> Vec<(u64, String)> {
        let dead: Vec<u32> = self
            .parking
            .daemons()
            .into_iter()
            .filter(|pid| !linked.contains(pid) && !alive(*pid))
            .collect();
        let conns = dead
            .into_iter()
            .flat_map(|pid| self.parking.of_daemon(pid))
            .map(|(_, conn)| conn)
            .collect();
        self.drop_stale(conns)
    }

    fn drop_stale(&mut self, conns: Vec<u64>) -> Vec<(u64, String)> {
        let mut dropped = Vec::new();
        for conn in conns {
            if let Some(c) = self.remove_conn(conn) {
                self.rejoin.stale += 1;
                dropped.push((conn, c.user));
            }
        }
        dropped
    }

    /// One connection mail process `key` (running as `proc_uid`) serves.
    /// Ok(true) when it was not known and is now.
    pub fn served(
        &mut self,
        key: usize,
        proc_uid: u32,
        s: &Served,
        now: Instant,
    ) -> Result<bool, NotRejoined> {
        if !self.cookie_ok(&s.user, &s.cookie) {
            return Err(NotRejoined::Cookie);
        }
        let user_uid = self.users.get(&s.user).map_or(u32::MAX, |u| u.uid);
        if user_uid != s.uid || (proc_uid != 0 && proc_uid != s.uid) {
            return Err(NotRejoined::Uid);
        }
        if let Some(c) = self.conns.get(&s.conn) {
            return match c.place == Place::Mail(key) && c.user == s.user {
                true => Ok(false),
                false => Err(NotRejoined::Taken),
            };
        }
        let entry = ConnEntry {
            user: s.user.clone(),
            remote: String::new(),
            place: Place::Mail(key),
            since: now,
            rejoined: true,
        };
        self.conns.insert(s.conn, entry);
        if let Some(u) = self.users.get_mut(&s.user) {
            u.conns += 1;
        }
        self.place_on(key, s.conn, &s.user, s.uid);
        self.rejoin.rejoined += 1;
        Ok(true)
    }

    /// The rejoin time is over: kept cookies nobody claimed go.
    pub fn drop_unclaimed(&mut self, now: Instant) -> Vec<String> {
        if self.rejoin.claim_until.is_none_or(|t| t > now) {
            return Vec::new();
        }
        self.rejoin.claim_until = None;
        let gone: Vec<String> = self
            .users
            .iter()
            .filter(|(_, u)| u.conns == 0)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.users.remove(name);
        }
        self.rejoin.unclaimed += gone.len() as u64;
        self.rejoin.changed |= !gone.is_empty();
        gone
    }
}
