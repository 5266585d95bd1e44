//! Who is where: users with their cookies, mail processes with their
//! connections, and the policy that picks a process for a connection.
//! Plain data, no I/O, so every rule is unit-tested. How connections move
//! once placed (released, returned, gone) is in `moves`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::cookie;
use super::parking::{IdleRef, Parking};
use super::policy::{Bound, Policy};
use super::rejoin_state::Rejoin;
use crate::proto::native::Cookie;

pub struct Process {
    pub pid: u32,
    pub uid: u32,
    pub capacity: u32,
    /// Connections assigned and not released.
    pub active: u32,
    /// Its socket is full: skipped until it drains.
    pub blocked: bool,
    bound: Option<Bound>,
    users: HashMap<String, u32>,
    conns: HashSet<u64>,
}

impl Process {
    pub fn serves(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }
}

pub struct User {
    pub cookie: Cookie,
    pub uid: u32,
    /// Connections anywhere: in mail processes, parked, or returning.
    pub conns: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In the mail process registered under this peer key.
    Mail(usize),
    /// In the imap-idle `idle.pid`, under its id `idle.id`.
    Parked { idle: IdleRef, mailbox: String },
}

pub struct ConnEntry {
    pub user: String,
    pub remote: String,
    pub place: Place,
    pub since: Instant,
    /// Known again from a holder's report after a restart, not from a
    /// login or a release: a `Released` for it may still arrive.
    pub rejoined: bool,
}

pub struct Routing {
    pub policy: Policy,
    pub users: HashMap<String, User>,
    pub procs: HashMap<usize, Process>,
    pub conns: BTreeMap<u64, ConnEntry>,
    /// imap-idle's ids and returns.
    pub parking: Parking,
    /// The counted part of our connection ids (see [`Routing::new_conn`]).
    next_conn: u32,
    /// Re-reports after restarts, and what they dropped.
    pub rejoin: Rejoin,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No registered process may take it now.
    NoProcess,
    Random(String),
}

impl Routing {
    pub fn new(policy: Policy) -> Routing {
        Routing {
            policy,
            users: HashMap::new(),
            procs: HashMap::new(),
            conns: BTreeMap::new(),
            parking: Parking::default(),
            next_conn: 1,
            rejoin: Rejoin::default(),
        }
    }

    pub(super) fn next_conn(&self) -> u32 {
        self.next_conn
    }

    pub(super) fn set_next_conn(&mut self, next: u32) {
        self.next_conn = next.max(1);
    }

    /// A fresh connection id: a counter (so ids sort by age) above 32
    /// random bits, so that a peer cannot guess another's ids.
    pub(super) fn new_conn(&mut self) -> Result<u64, RouteError> {
        loop {
            let random = getrandom::u32().map_err(|e| RouteError::Random(e.to_string()))?;
            let id = u64::from(self.next_conn) << 32 | u64::from(random);
            self.next_conn = self.next_conn.wrapping_add(1).max(1);
            if !self.conns.contains_key(&id) {
                return Ok(id);
            }
        }
    }

    /// Is `conn` in mail process `key`?
    pub fn owns(&self, key: usize, conn: u64) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.place == Place::Mail(key))
    }

    pub fn register(&mut self, key: usize, pid: u32, uid: u32, capacity: u32) {
        // Under the uid policy an unprivileged process can only ever serve
        // its own uid; root is bound by its first connection.
        let bound = (self.policy == Policy::Uid && uid != 0).then_some(Bound::Uid(uid));
        self.procs.insert(
            key,
            Process {
                pid,
                uid,
                capacity,
                active: 0,
                blocked: false,
                bound,
                users: HashMap::new(),
                conns: HashSet::new(),
            },
        );
    }

    /// A mail process is gone: its connections went with it.
    pub fn unregister(&mut self, key: usize) -> Vec<(u64, String)> {
        let Some(p) = self.procs.get(&key) else {
            return Vec::new();
        };
        let ids: Vec<u64> = p.conns.iter().copied().collect();
        let mut lost = Vec::new();
        for id in ids {
            if let Some(c) = self.remove_conn(id) {
                lost.push((id, c.user));
            }
        }
        self.procs.remove(&key);
        lost
    }

    fn eligible(&self, p: &Process, user: &str, uid: u32) -> bool {
        if p.blocked || p.active >= p.capacity || (p.uid != 0 && p.uid != uid) {
            return false;
        }
        match (&p.bound, self.policy) {
            (None, _) | (_, Policy::PreferUser) => true,
            (Some(Bound::User(u)), _) => u == user,
            (Some(Bound::Uid(b)), _) => *b == uid,
        }
    }

    /// The process a new connection of `user` goes to, if any may take it.
    pub fn pick(&self, user: &str, uid: u32) -> Option<usize> {
        // Processes already holding the user (or bound to it) come first,
        // then the least loaded; the key breaks ties so picks are stable.
        self.procs
            .iter()
            .filter(|(_, p)| self.eligible(p, user, uid))
            .min_by_key(|(&k, p)| (!(p.serves(user) || p.bound.is_some()), p.active, k))
            .map(|(&k, _)| k)
    }

    /// Does `cookie` open `user`'s connections? Unknown users have none.
    pub fn cookie_ok(&self, user: &str, cookie: &Cookie) -> bool {
        let Some(u) = self.users.get(user) else {
            // Compare anyway, so an unknown user takes as long as a known one.
            let _ = cookie::same(cookie, &[0; 16]);
            return false;
        };
        cookie::same(&u.cookie, cookie)
    }

    pub(super) fn place_on(&mut self, key: usize, conn: u64, user: &str, uid: u32) {
        let policy = self.policy;
        if let Some(p) = self.procs.get_mut(&key) {
            p.active += 1;
            *p.users.entry(user.to_owned()).or_default() += 1;
            p.conns.insert(conn);
            if p.bound.is_none() {
                p.bound = match policy {
                    Policy::User => Some(Bound::User(user.to_owned())),
                    Policy::Uid => Some(Bound::Uid(uid)),
                    Policy::PreferUser => None,
                };
            }
        }
    }

    pub(super) fn take_off(&mut self, key: usize, conn: u64, user: &str) {
        if let Some(p) = self.procs.get_mut(&key) {
            if p.conns.remove(&conn) {
                p.active = p.active.saturating_sub(1);
                if let Some(n) = p.users.get_mut(user) {
                    *n -= 1;
                    if *n == 0 {
                        p.users.remove(user);
                    }
                }
            }
        }
    }

    /// A fresh login: a new connection of `user` on process `key`. The
    /// user's cookie is made on their first connection.
    pub fn login(
        &mut self,
        key: usize,
        user: &str,
        uid: u32,
        remote: &str,
        now: Instant,
    ) -> Result<(u64, Cookie), RouteError> {
        let conn = self.new_conn()?;
        if !self.users.contains_key(user) {
            let cookie = cookie::new_cookie().map_err(|e| RouteError::Random(e.to_string()))?;
            self.users.insert(
                user.to_owned(),
                User {
                    cookie,
                    uid,
                    conns: 0,
                },
            );
            self.rejoin.changed = true;
        }
        let Some(u) = self.users.get_mut(user) else {
            return Err(RouteError::NoProcess);
        };
        u.conns += 1;
        let cookie = u.cookie;
        self.conns.insert(
            conn,
            ConnEntry {
                user: user.to_owned(),
                remote: remote.to_owned(),
                place: Place::Mail(key),
                since: now,
                rejoined: false,
            },
        );
        self.place_on(key, conn, user, uid);
        Ok((conn, cookie))
    }

    pub(super) fn remove_conn(&mut self, conn: u64) -> Option<ConnEntry> {
        let entry = self.conns.remove(&conn)?;
        match &entry.place {
            Place::Mail(key) => self.take_off(*key, conn, &entry.user),
            Place::Parked { idle, .. } => {
                self.parking.unpark(*idle);
            }
        }
        if let Some(u) = self.users.get_mut(&entry.user) {
            u.conns = u.conns.saturating_sub(1);
            if u.conns == 0 {
                // Last connection gone: so is the cookie.
                self.users.remove(&entry.user);
                self.rejoin.changed = true;
            }
        }
        Some(entry)
    }

    pub fn expire(&mut self, now: Instant) {
        self.parking.expire(now);
    }

    pub fn parked_count(&self) -> usize {
        self.parking.count()
    }

    /// The parked connections of `user` (all when `None`), for `who`.
    pub fn parked_of<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> impl Iterator<Item = (u64, &'a ConnEntry)> + 'a {
        self.conns.iter().filter_map(move |(&id, c)| {
            let wanted = user.is_none_or(|u| u == c.user);
            (wanted && matches!(c.place, Place::Parked { .. })).then_some((id, c))
        })
    }

    /// Is process `key`'s socket full (see [`Process::blocked`])?
    pub fn blocked(&self, key: usize) -> bool {
        self.procs.get(&key).is_some_and(|p| p.blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::native::Release;
    use crate::tracker::moves::Refusal;

    /// The pid of the imap-idle most tests park in.
    const D: u32 = 500;

    fn at(id: u64) -> IdleRef {
        IdleRef { pid: D, id }
    }

    fn with_procs(policy: Policy, procs: &[(usize, u32)]) -> Routing {
        let mut r = Routing::new(policy);
        for &(key, uid) in procs {
            r.register(key, 100 + key as u32, uid, 10);
        }
        r
    }

    fn login(r: &mut Routing, user: &str, uid: u32) -> Option<usize> {
        let key = r.pick(user, uid)?;
        r.login(key, user, uid, "", Instant::now()).unwrap();
        Some(key)
    }

    #[test]
    fn user_policy_gives_each_user_own_processes() {
        let mut r = with_procs(Policy::User, &[(1, 0), (2, 0), (3, 0)]);
        let a = login(&mut r, "alice", 1000).unwrap();
        let b = login(&mut r, "bob", 1000).unwrap();
        assert_ne!(a, b);
        assert_eq!(login(&mut r, "alice", 1000), Some(a));
        let c = login(&mut r, "carol", 1000).unwrap();
        assert!(c != a && c != b);
        assert_eq!(login(&mut r, "dave", 1000), None);
    }

    #[test]
    fn uid_policy_groups_by_uid_and_respects_unprivileged_processes() {
        let mut r = with_procs(Policy::Uid, &[(1, 0), (2, 2000)]);
        assert_eq!(login(&mut r, "x", 2000), Some(2));
        let a = login(&mut r, "alice", 1000).unwrap();
        assert_eq!(a, 1);
        assert_eq!(login(&mut r, "bob", 1000), Some(1));
        assert_eq!(login(&mut r, "y", 3000), None);
    }

    #[test]
    fn prefer_user_prefers_then_balances() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0), (2, 0)]);
        let a = login(&mut r, "alice", 1).unwrap();
        assert_eq!(login(&mut r, "alice", 1), Some(a));
        let b = login(&mut r, "bob", 1).unwrap();
        assert_ne!(a, b, "the least loaded process takes a new user");
        // Full processes are skipped even when they serve the user.
        r.procs.get_mut(&a).unwrap().capacity = 2;
        assert_eq!(login(&mut r, "alice", 1), Some(b));
    }

    #[test]
    fn cookies_live_while_the_user_has_connections() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0)]);
        let now = Instant::now();
        let (c1, k1) = r.login(1, "alice", 1, "", now).unwrap();
        let (c2, k2) = r.login(1, "alice", 1, "", now).unwrap();
        assert_eq!(k1, k2);
        assert!(r.cookie_ok("alice", &k1));
        assert!(!r.cookie_ok("alice", &[0; 16]));
        assert!(!r.cookie_ok("bob", &k1));
        let parked = Release::Parked {
            idle_id: 77,
            idle_pid: D,
            mailbox: "INBOX".into(),
        };
        r.released(1, c1, parked, now).unwrap();
        r.released(1, c2, Release::Closed, now).unwrap();
        assert_eq!(r.users["alice"].conns, 1, "parked still counts");
        assert_eq!(r.procs[&1].active, 0);
        let back = r.restore(at(77), 1, "alice", k1, now).unwrap();
        assert_eq!(back, c1);
        assert_eq!(r.procs[&1].active, 1);
        r.released(1, c1, Release::Closed, now).unwrap();
        assert!(
            r.users.is_empty(),
            "cookie dropped with the last connection"
        );
        let (_, k3) = r.login(1, "alice", 1, "", now).unwrap();
        assert_ne!(k1, k3);
    }

    #[test]
    fn a_return_that_overtakes_released_is_counted_once() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0), (2, 0)]);
        let now = Instant::now();
        let (c, _) = r.login(1, "alice", 1, "", now).unwrap();
        let back = r.restore(at(5), 2, "alice", [0; 16], now).unwrap();
        assert_ne!(back, c);
        let parked = Release::Parked {
            idle_id: 5,
            idle_pid: D,
            mailbox: "INBOX".into(),
        };
        r.released(1, c, parked, now).unwrap();
        assert_eq!(r.users["alice"].conns, 1);
        assert_eq!(r.conns.len(), 1);
        // Same for a hang-up reported before the release.
        let (c2, _) = r.login(1, "alice", 1, "", now).unwrap();
        assert_eq!(r.gone(at(6), "alice", now), Ok(None));
        let parked = Release::Parked {
            idle_id: 6,
            idle_pid: D,
            mailbox: "INBOX".into(),
        };
        r.released(1, c2, parked, now).unwrap();
        assert_eq!(r.users["alice"].conns, 1);
    }

    #[test]
    fn a_failed_assignment_is_undone() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0)]);
        let now = Instant::now();
        let (c, k) = r.login(1, "alice", 1, "", now).unwrap();
        let parked = Release::Parked {
            idle_id: 3,
            idle_pid: D,
            mailbox: "INBOX".into(),
        };
        r.released(1, c, parked, now).unwrap();
        let was = r.parked_place(at(3), "alice");
        let back = r.restore(at(3), 1, "alice", k, now).unwrap();
        r.unassign(1, back, was, Some(at(3)));
        assert_eq!(r.parked_count(), 1);
        assert_eq!(r.procs[&1].active, 0);
        assert_eq!(
            r.restore(at(3), 1, "alice", k, now),
            Ok(c),
            "the same connection comes back"
        );
        let (c2, _) = r.login(1, "bob", 1, "", now).unwrap();
        r.unassign(1, c2, None, None);
        assert!(!r.users.contains_key("bob"));
        r.procs.get_mut(&1).unwrap().blocked = true;
        assert_eq!(r.pick("alice", 1), None);
    }

    #[test]
    fn a_dead_process_takes_its_connections_with_it() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0), (2, 0)]);
        let now = Instant::now();
        let (a1, _) = r.login(1, "alice", 1, "", now).unwrap();
        r.login(1, "bob", 1, "", now).unwrap();
        r.login(2, "alice", 1, "", now).unwrap();
        let parked = Release::Parked {
            idle_id: 9,
            idle_pid: D,
            mailbox: "INBOX".into(),
        };
        r.released(1, a1, parked, now).unwrap();
        let lost = r.unregister(1);
        assert_eq!(lost.len(), 1);
        assert!(!r.users.contains_key("bob"));
        assert_eq!(r.users["alice"].conns, 2, "one parked, one in process 2");
        assert_eq!(r.parked_count(), 1);
        assert_eq!(
            r.released(2, a1, Release::Closed, now),
            Err(Refusal::NotYours)
        );
    }

    #[test]
    fn ids_not_ones_own_are_refused_and_change_nothing() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0), (2, 0)]);
        let now = Instant::now();
        let (bob, kb) = r.login(1, "bob", 1, "", now).unwrap();
        let (eve, ke) = r.login(2, "eve", 1, "", now).unwrap();
        assert_ne!(bob >> 32, eve >> 32, "a counter above the random part");
        let park = |idle_id| Release::Parked {
            idle_id,
            idle_pid: D,
            mailbox: "INBOX".into(),
        };
        assert_eq!(
            r.released(2, bob, Release::Closed, now),
            Err(Refusal::NotYours)
        );
        assert_eq!(
            r.released(2, bob ^ 1, Release::Closed, now),
            Err(Refusal::Unknown)
        );
        r.released(1, bob, park(7), now).unwrap();
        assert_eq!(r.released(2, eve, park(7), now), Err(Refusal::IdTaken));
        assert_eq!(r.gone(at(7), "eve", now), Err(Refusal::OtherUser));
        assert_eq!(r.check_idle_id(at(7), "eve"), Err(Refusal::OtherUser));
        assert_eq!(r.parked_place(at(7), "eve"), None);
        // A return of eve's under bob's id leaves bob's entry alone.
        let other = r.restore(at(7), 2, "eve", ke, now).unwrap();
        assert_ne!(other, bob);
        assert_eq!(r.parked_count(), 1);
        assert_eq!(r.restore(at(7), 1, "bob", kb, now), Ok(bob));
        // An early return is for its user only.
        r.restore(at(8), 2, "eve", ke, now).unwrap();
        assert_eq!(r.released(2, eve, park(8), now), Ok(()));
        let (carol, _) = r.login(1, "carol", 1, "", now).unwrap();
        r.restore(at(9), 2, "eve", ke, now).unwrap();
        assert_eq!(r.released(1, carol, park(9), now), Err(Refusal::OtherUser));
        assert!(r.owns(1, carol) && !r.owns(2, carol));
    }

    #[test]
    fn the_same_id_in_two_daemons_is_two_connections() {
        let mut r = with_procs(Policy::PreferUser, &[(1, 0)]);
        let now = Instant::now();
        let (a, _) = r.login(1, "alice", 1, "", now).unwrap();
        let (b, kb) = r.login(1, "bob", 1, "", now).unwrap();
        let park = |idle_pid| Release::Parked {
            idle_id: 1,
            idle_pid,
            mailbox: "INBOX".into(),
        };
        r.released(1, a, park(D), now).unwrap();
        r.released(1, b, park(D + 1), now).unwrap();
        assert_eq!(r.parked_count(), 2);
        // Each daemon speaks for its own id 1 only.
        let other = IdleRef { pid: D + 1, id: 1 };
        assert_eq!(r.check_idle_id(at(1), "bob"), Err(Refusal::OtherUser));
        assert_eq!(r.check_idle_id(other, "alice"), Err(Refusal::OtherUser));
        assert_eq!(r.gone(other, "alice", now), Err(Refusal::OtherUser));
        assert_eq!(r.restore(other, 1, "bob", kb, now), Ok(b));
        assert_eq!(r.parked_count(), 1);
        assert_eq!(r.gone(at(1), "alice", now), Ok(Some(a)));
        assert_eq!(r.parked_count(), 0);
    }
}
