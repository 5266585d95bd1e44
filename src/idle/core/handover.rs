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

use super::conn::{Carried, ConnId, Extra, Leaving, Phase};
use super::timers::{next_keepalive, Millis};
use super::Core;
use crate::proto::native::{Handed, Park};

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
        let keepalive_at_ms = match c.keepalive_secs {
            0 => 0,
            secs => next_keepalive(ms, secs as u64 * 1000, self.users.hash(c.user)),
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
                // A kept Dovecot notify fd has no path: the adapter sends
                // the fd itself (see `watch_keys`).
                watch: c
                    .watches()
                    .iter()
                    .filter_map(|&i| self.watches.path(i))
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| p.to_path_buf())
                    .collect(),
                state: c.state().to_vec(),
            },
            notify: false,
            keepalive_at_ms,
            partial,
            parked_secs: ((ms / 1000) as u32).saturating_sub(c.parked_at),
            multiplex: c.multiplex_state(),
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
            handed,
        })
    }

    /// A successor confirmed it holds the connection: our copies close
    /// (no BYE, no shutdown: the socket lives on over there).
    pub fn left(&mut self, l: Leaving<F>) {
        self.out.push_back(super::Action::Close(l.fd));
    }

    /// Count a park; or apply what a connection adopted from a predecessor
    /// carried: its keepalive instant and any partial `DONE`. The one place
    /// where a connection adopted from a predecessor is handled as such:
    /// whatever must hear of that hooks in here.
    pub(super) fn arrived(&mut self, key: u32, carried: &Carried<'_>, ms: Millis) {
        if !carried.predecessor {
            self.stats.parks += 1;
            return;
        }
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !carried.partial.is_empty() {
            conn.extra = Some(Box::new(Extra::Partial(carried.partial.into())));
        }
        conn.parked_at = conn.parked_at.saturating_sub(carried.parked_secs);
        if carried.switched {
            conn.set_switched();
        }
        // Our clock is the predecessor's: its instant is ours as it is
        // (one already past goes out at once).
        if carried.keepalive_at_ms > 0 && conn.keepalive_secs > 0 {
            conn.timer_gen = self.timers.new_gen();
            let at = carried.keepalive_at_ms.max(ms);
            self.timers.schedule(at, key, conn.timer_gen);
        }
        self.stats.taken_over += 1;
    }
}

impl<F: AsRawFd, W: Clone + Eq + Hash> Core<F, W> {
    /// An adopted connection the predecessor was never told about: it
    /// keeps the client, so ours closes quietly.
    pub fn not_taken_over(&mut self, id: ConnId) {
        if let Some(conn) = self.remove_conn(id, true) {
            self.stats.taken_over = self.stats.taken_over.saturating_sub(1);
            self.out.push_back(super::Action::Close(conn.fd));
        }
    }

    /// The socket of a parked connection, to send to a successor.
    pub fn fd_of(&self, id: ConnId) -> Option<&F> {
        self.get(id)
            .filter(|c| c.phase == Phase::Parked)
            .map(|c| &c.fd)
    }

    /// What a parked connection watches, as the adapter keys it.
    pub fn watch_keys(&self, id: ConnId) -> Vec<W> {
        let Some(c) = self.get(id) else {
            return Vec::new();
        };
        let watches = &self.watches;
        c.watches()
            .iter()
            .filter_map(|&i| watches.key(i).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::RawFd;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::idle::core::{Action, Arrival};

    use crate::idle::core::tests::TestFd as Fd;

    fn arrival<'a>(fd: RawFd, carried: Carried<'a>, watch: &'a Path) -> Arrival<'a, Fd, u32> {
        Arrival {
            fd: Fd(fd),
            multiplex: true,
            user: "alice",
            cookie: [3; 16],
            tag: "A1",
            in_idle: true,
            keepalive_secs: 10,
            watches: vec![(7, watch)],
            state: b"st",
            from_pid: 1,
            carried,
        }
    }

    #[test]
    fn a_connection_carries_its_keepalive_instant_and_partial_done_across() {
        let epoch = Instant::now();
        let watch = Path::new("/m/new");
        let mut old: Core<Fd, u32> = Core::new(10, true, epoch, 1, Default::default());
        let id = old
            .adopt(arrival(5, Carried::default(), watch), epoch)
            .ok()
            .unwrap();
        let due = old.next_deadline().unwrap();
        let t = epoch + Duration::from_millis(300);
        old.input(id, b"DO", t);
        while old.next_action().is_some() {}
        let l = old.leave_for_successor(id, t).unwrap();
        assert_eq!(l.handed.partial, b"DO");
        assert_eq!(l.handed.park.watch, vec![watch.to_path_buf()]);
        assert_eq!((l.handed.notify, l.handed.parked_secs), (false, 0));
        assert_eq!(l.handed.multiplex, 1, "multiplexed, nothing written yet");
        let l_at = l.handed.keepalive_at_ms;
        assert_eq!(epoch + Duration::from_millis(l_at), due);
        // Leaving tells the tracker nothing and closes nothing yet.
        let acts: Vec<_> = std::iter::from_fn(|| old.next_action()).collect();
        assert!(acts
            .iter()
            .all(|a| !matches!(a, Action::Gone(_) | Action::Close(_))));
        assert!(old.is_empty());
        old.left(l);
        let closed = std::iter::from_fn(|| old.next_action())
            .filter(|a| matches!(a, Action::Close(_)))
            .count();
        assert_eq!(closed, 1, "the client (a notify fd is the adapter's)");

        // The successor shares the clock; the keepalive keeps its instant.
        let mut new: Core<Fd, u32> = Core::new(10, true, epoch, 2, Default::default());
        let carried = Carried {
            predecessor: true,
            keepalive_at_ms: l_at,
            partial: b"DO",
            parked_secs: 3,
            switched: false,
        };
        let id = new.adopt(arrival(6, carried, watch), t).ok().unwrap();
        assert_eq!(new.next_deadline(), Some(due));
        assert_eq!((new.stats().parks, new.stats().taken_over), (0, 1));
        new.input(id, b"NE\r\n", t);
        let woke = std::iter::from_fn(|| new.next_action()).count();
        assert!(woke > 0);
        assert_eq!(new.stats().wake_done, 1, "the DONE typed across completes");
    }
}
