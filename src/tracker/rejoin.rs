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

use std::collections::HashSet;
use std::time::Instant;

use super::cookie_file::{Saved, SavedUser};
use super::parking::IdleRef;
use super::rejoin_state::Report;
use super::routing::{ConnEntry, Place, Routing, User};
use crate::proto::native::{Held, Served};

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
        if self.parking.placed_lately(idle) {
            // Returned and placed; its return comes again and is only
            // acknowledged.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::native::Release;
    use crate::tracker::policy::Policy;
    use std::time::Duration;

    const IDLE: usize = 7;
    const MAIL: usize = 8;

    fn restarted(now: Instant) -> Routing {
        let mut r = Routing::new(Policy::PreferUser);
        let users = ["alice", "bob"]
            .map(|name| SavedUser {
                name: name.into(),
                uid: 1000,
                cookie: [name.len() as u8; 16],
            })
            .to_vec();
        let saved = Saved {
            next_conn: 9,
            users,
        };
        r.load(saved, now + Duration::from_secs(30));
        r.register(MAIL, 200, 1000, 10);
        r
    }

    fn held(id: u64, user: &str, cookie: u8) -> Held {
        Held {
            id,
            user: user.into(),
            cookie: [cookie; 16],
        }
    }

    #[test]
    fn reports_count_only_with_the_kept_cookie_and_the_right_uid() {
        let now = Instant::now();
        let mut r = restarted(now);
        r.report_begins(IDLE, 500, now);
        assert_eq!(r.held(IDLE, &held(1, "alice", 5), now), Ok(true));
        assert_eq!(r.held(IDLE, &held(1, "alice", 5), now), Ok(false), "once");
        assert_eq!(
            r.held(IDLE, &held(2, "alice", 3), now),
            Err(NotRejoined::Cookie)
        );
        assert_eq!(
            r.held(IDLE, &held(3, "mallory", 0), now),
            Err(NotRejoined::Cookie),
            "nobody can bring a user in"
        );
        assert_eq!(r.report_done(IDLE), Vec::new());
        assert_eq!(r.users["alice"].conns, 1);
        // A return we placed whose Accepted was lost is reported once more.
        let placed = crate::tracker::parking::ReturnKey {
            idle: IdleRef { pid: 500, id: 6 },
            socket: 1,
        };
        r.parking.placed(placed, now);
        r.report_begins(IDLE, 500, now);
        assert_eq!(r.held(IDLE, &held(6, "alice", 5), now), Ok(false));
        assert_eq!(r.users["alice"].conns, 1, "not counted again");
        let served = |conn, uid, cookie| Served {
            conn,
            user: "bob".into(),
            uid,
            cookie: [cookie; 16],
        };
        assert_eq!(
            r.served(MAIL, 1000, &served(1 << 33, 1000, 1), now),
            Err(NotRejoined::Cookie)
        );
        assert_eq!(
            r.served(MAIL, 1001, &served(1 << 33, 1001, 3), now),
            Err(NotRejoined::Uid)
        );
        assert_eq!(
            r.served(MAIL, 1000, &served(1 << 33, 1000, 3), now),
            Ok(true)
        );
        assert!(r.owns(MAIL, 1 << 33));
        assert_eq!(r.procs[&MAIL].active, 1);
        let alice_conn = r.parking.conn_of(IdleRef { pid: 500, id: 1 }).unwrap();
        let taken = Served {
            conn: alice_conn,
            user: "alice".into(),
            uid: 1000,
            cookie: [5; 16],
        };
        assert_eq!(r.served(MAIL, 1000, &taken, now), Err(NotRejoined::Taken));
        assert_eq!(r.rejoin.rejoined, 2);
    }

    #[test]
    fn what_the_daemon_no_longer_holds_is_dropped_with_unneeded_cookies() {
        let t0 = Instant::now();
        let mut r = restarted(t0);
        r.report_begins(IDLE, 500, t0);
        r.held(IDLE, &held(1, "alice", 5), t0).unwrap();
        r.held(IDLE, &held(2, "bob", 3), t0).unwrap();
        r.report_done(IDLE);
        // The daemon's link comes back, and it no longer holds bob's.
        let t1 = t0 + Duration::from_secs(1);
        r.report_begins(IDLE, 500, t1);
        // A park released after the Hello may be missing from the report.
        let (c, _) = r.login(MAIL, "alice", 1000, "", t1).unwrap();
        let parked = Release::Parked {
            idle_id: 9,
            idle_pid: 500,
            mailbox: "INBOX".into(),
        };
        r.released(MAIL, c, parked, t1 + Duration::from_millis(1))
            .unwrap();
        r.held(IDLE, &held(1, "alice", 5), t1).unwrap();
        let dropped = r.report_done(IDLE);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].1, "bob");
        assert!(!r.users.contains_key("bob"), "bob's cookie went");
        assert_eq!(r.users["alice"].conns, 2);
        assert_eq!(r.rejoin.stale, 1);
        // The daemon dies: everything it held goes, and alice's cookie.
        let linked = HashSet::new();
        assert_eq!(r.drop_dead_daemons(&linked, |_| true).len(), 0);
        assert_eq!(r.drop_dead_daemons(&linked, |_| false).len(), 2);
        assert!(r.users.is_empty());
        assert_eq!(r.rejoin.stale, 3);
    }

    #[test]
    fn a_release_after_the_report_is_the_reported_connection() {
        let now = Instant::now();
        let mut r = restarted(now);
        let (c, _) = r.login(MAIL, "alice", 1000, "", now).unwrap();
        r.report_begins(IDLE, 500, now);
        r.held(IDLE, &held(4, "alice", 5), now).unwrap();
        r.report_done(IDLE);
        assert_eq!(r.users["alice"].conns, 2, "counted twice for a moment");
        let parked = |user_id| Release::Parked {
            idle_id: user_id,
            idle_pid: 500,
            mailbox: "INBOX".into(),
        };
        r.released(MAIL, c, parked(4), now).unwrap();
        assert_eq!(r.users["alice"].conns, 1);
        assert_eq!(r.parking.conn_of(IdleRef { pid: 500, id: 4 }), Some(c));
        // Not for another user's reported entry.
        r.report_begins(IDLE, 500, now);
        r.held(IDLE, &held(5, "bob", 3), now).unwrap();
        let (c2, _) = r.login(MAIL, "alice", 1000, "", now).unwrap();
        assert!(r.released(MAIL, c2, parked(5), now).is_err());
    }

    #[test]
    fn kept_cookies_nobody_claims_go_when_the_rejoin_time_is_over() {
        let now = Instant::now();
        let mut r = restarted(now);
        r.report_begins(IDLE, 500, now);
        r.held(IDLE, &held(1, "alice", 5), now).unwrap();
        assert!(r.drop_unclaimed(now).is_empty(), "not yet");
        assert_eq!(r.drop_unclaimed(now + Duration::from_secs(30)), ["bob"]);
        assert!(r.users.contains_key("alice"));
        assert_eq!(r.rejoin.unclaimed, 1);
        assert!(r.rejoin.changed);
        let saved = r.saved();
        assert_eq!(saved.users.len(), 1);
        assert_eq!(saved.next_conn, r.next_conn());
        assert!(r.next_conn() > 9, "ids go on from the kept counter");
    }
}
