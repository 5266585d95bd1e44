//! imap-idle's side of the routing tables: which of its ids stand for
//! which of our connections (and whose they are), the returns and gone
//! notices that overtook the mail process's `Released`, and the returns
//! already placed, so that one imap-idle sends again after a lost link is
//! acknowledged instead of being placed twice. Plain data, no I/O; every
//! table is bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A return or gone notice may overtake the mail process's `Released`
/// (they come over different sockets); such ids are remembered this long.
pub const EARLY_TTL: Duration = Duration::from_secs(120);
/// ... and at most this many (the oldest are forgotten first).
pub const MAX_EARLY: usize = 65_536;
/// How long a placed return is remembered: imap-idle re-sends what was in
/// flight as soon as its link is back, so minutes are plenty.
pub const PLACED_TTL: Duration = Duration::from_secs(600);
/// ... and at most this many (the oldest are forgotten first).
pub const MAX_PLACED: usize = 65_536;

/// A connection parked in one imap-idle: that daemon's pid (from its
/// Hello) and the id it gave. Several daemons may serve us and each counts
/// its ids on its own, so an id alone names nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdleRef {
    pub pid: u32,
    pub id: u64,
}

/// A return as imap-idle sent it: the daemon and its id, and the inode of
/// the client socket that came with it. A re-send carries the same socket;
/// a new return that reuses an id (imap-idle restarted) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReturnKey {
    pub idle: IdleRef,
    pub socket: u64,
}

/// A map that forgets its entries after `ttl`, and its oldest ones past
/// `max`, so a peer cannot grow it without end.
pub struct Recent<K, V> {
    map: HashMap<K, (V, Instant)>,
    /// Insertion order; entries whose time no longer matches the map's
    /// were removed or replaced and are skipped.
    order: VecDeque<(K, Instant)>,
    max: usize,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone, V> Recent<K, V> {
    pub fn new(max: usize, ttl: Duration) -> Recent<K, V> {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
            ttl,
        }
    }

    pub fn insert(&mut self, k: K, v: V, now: Instant) {
        self.map.insert(k.clone(), (v, now));
        self.order.push_back((k, now));
        while self.map.len() > self.max {
            self.pop_oldest();
        }
        if self.order.len() > 2 * self.max.max(1) {
            // Drop the stale entries so the order stays as bounded as the map.
            let map = &self.map;
            self.order
                .retain(|(k, t)| map.get(k).is_some_and(|(_, at)| at == t));
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((k, t)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|(_, at)| *at == t) {
                self.map.remove(&k);
            }
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    pub fn expire(&mut self, now: Instant) {
        while let Some((_, t)) = self.order.front() {
            if now.saturating_duration_since(*t) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }
}

pub struct Parking {
    /// imap-idle's (pid, id) -> our connection id.
    parked: HashMap<IdleRef, u64>,
    /// imap-idle ids already returned or gone before `Released` said
    /// parked, with the user they were for.
    pub early: Recent<IdleRef, String>,
    /// Returns placed lately.
    placed: Recent<ReturnKey, ()>,
    /// ... by daemon and id alone, for imap-idle's report on a new link,
    /// which names no socket.
    placed_ids: Recent<IdleRef, ()>,
}

impl Default for Parking {
    fn default() -> Parking {
        Parking {
            parked: HashMap::new(),
            early: Recent::new(MAX_EARLY, EARLY_TTL),
            placed: Recent::new(MAX_PLACED, PLACED_TTL),
            placed_ids: Recent::new(MAX_PLACED, PLACED_TTL),
        }
    }
}

impl Parking {
    pub fn conn_of(&self, idle: IdleRef) -> Option<u64> {
        self.parked.get(&idle).copied()
    }

    pub fn park(&mut self, idle: IdleRef, conn: u64) {
        self.parked.insert(idle, conn);
    }

    pub fn unpark(&mut self, idle: IdleRef) -> Option<u64> {
        self.parked.remove(&idle)
    }

    pub fn count(&self) -> usize {
        self.parked.len()
    }

    /// The daemons (pids) something is parked in.
    pub fn daemons(&self) -> std::collections::HashSet<u32> {
        self.parked.keys().map(|k| k.pid).collect()
    }

    /// Everything parked in daemon `pid`.
    pub fn of_daemon(&self, pid: u32) -> Vec<(IdleRef, u64)> {
        self.parked
            .iter()
            .filter(|(k, _)| k.pid == pid)
            .map(|(&k, &c)| (k, c))
            .collect()
    }

    /// Return `key` was given to a mail process.
    pub fn placed(&mut self, key: ReturnKey, now: Instant) {
        self.placed.insert(key, (), now);
        self.placed_ids.insert(key.idle, (), now);
    }

    /// Was a return of `idle` given to a mail process lately? A report of
    /// it then means our `Accepted` was lost with the link, not that it is
    /// still parked.
    pub fn placed_lately(&self, idle: IdleRef) -> bool {
        self.placed_ids.get(&idle).is_some()
    }

    /// Was return `key` given to a mail process lately?
    pub fn was_placed(&self, key: &ReturnKey) -> bool {
        self.placed.get(key).is_some()
    }

    pub fn expire(&mut self, now: Instant) {
        self.early.expire(now);
        self.placed.expire(now);
        self.placed_ids.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_forgets_the_oldest_and_the_old() {
        let t0 = Instant::now();
        let mut r = Recent::new(3, Duration::from_secs(10));
        for i in 0..5u64 {
            r.insert(i, (), t0 + Duration::from_secs(i));
        }
        assert_eq!(r.map.len(), 3);
        assert!(r.get(&0).is_none() && r.get(&1).is_none());
        assert!(r.get(&4).is_some());
        r.expire(t0 + Duration::from_secs(13));
        assert!(r.get(&2).is_none() && r.get(&3).is_none());
        assert!(r.get(&4).is_some());
        // Removing and re-inserting keeps the order bounded.
        for i in 0..100u64 {
            r.insert(7, (), t0 + Duration::from_secs(20 + i));
            r.remove(&7);
        }
        assert!(r.order.len() <= 6);
    }

    #[test]
    fn a_placed_return_is_known_by_daemon_id_and_socket() {
        let mut p = Parking::default();
        let now = Instant::now();
        let key = |pid, id, socket| ReturnKey {
            idle: IdleRef { pid, id },
            socket,
        };
        p.placed(key(1, 5, 9), now);
        assert!(p.was_placed(&key(1, 5, 9)));
        assert!(!p.was_placed(&key(1, 5, 10)));
        assert!(!p.was_placed(&key(2, 5, 9)));
        p.expire(now + PLACED_TTL);
        assert!(!p.was_placed(&key(1, 5, 9)));
    }

    #[test]
    fn equal_ids_of_two_daemons_are_two_connections() {
        let mut p = Parking::default();
        p.park(IdleRef { pid: 10, id: 1 }, 100);
        p.park(IdleRef { pid: 11, id: 1 }, 200);
        assert_eq!(p.count(), 2);
        assert_eq!(p.unpark(IdleRef { pid: 11, id: 1 }), Some(200));
        assert_eq!(p.conn_of(IdleRef { pid: 10, id: 1 }), Some(100));
        assert_eq!(p.conn_of(IdleRef { pid: 11, id: 1 }), None);
    }
}
