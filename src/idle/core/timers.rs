//! Deadlines in a binary heap with lazy cancellation: each entry carries
//! the generation its owner had when it was set, and an entry whose owner
//! moved on (rescheduled, or gone and its slab key reused) is skipped when
//! it pops. Cost per tick depends on what expires, not on how many
//! connections exist.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Milliseconds since the daemon's start.
pub type Millis = u64;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Millis, u32, u32)>>,
    next_gen: u32,
}

impl Timers {
    /// A fresh generation for an owner about to (re)schedule: entries made
    /// with an older one become stale.
    pub fn new_gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    pub fn schedule(&mut self, at: Millis, key: u32, gen: u32) {
        self.heap.push(Reverse((at, key, gen)));
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pop one entry due at `now`; the caller checks the generation.
    pub fn pop_due(&mut self, now: Millis) -> Option<(u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, key, gen))| (key, gen))
            }
            _ => None,
        }
    }

    /// Drop stale entries once they outnumber the live ones, so a churn of
    /// reschedules cannot grow the heap without bound.
    pub fn compact(&mut self, live: usize, is_live: impl Fn(u32, u32) -> bool) {
        if self.heap.len() > 2 * live + 1024 {
            self.heap
                .retain(|Reverse((_, key, gen))| is_live(*key, *gen));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// The next keepalive instant for a connection whose user hashes to
/// `user_hash`. Every connection of one user with the same interval gets
/// the same instants, so a phone's radio wakes once for all of them; the
/// instants also fall on a coarse grid so thousands of users share few
/// wake-ups. The gap between two keepalives never exceeds `interval_ms`.
pub fn next_keepalive(now: Millis, interval_ms: u64, user_hash: u64) -> Millis {
    let slot = (interval_ms / 30).clamp(1000, 10_000).min(interval_ms);
    let slots = (interval_ms / slot).max(1);
    let phase = (user_hash % slots) * slot;
    // The smallest t > now with t = phase (mod interval).
    let base = now - now % interval_ms + phase;
    if base > now {
        base
    } else {
        base + interval_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut t = Timers::default();
        t.schedule(30, 3, 1);
        t.schedule(10, 1, 1);
        t.schedule(20, 2, 1);
        assert_eq!(t.next_deadline(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(25), Some((1, 1)));
        assert_eq!(t.pop_due(25), Some((2, 1)));
        assert_eq!(t.pop_due(25), None);
    }

    #[test]
    fn compaction_drops_stale_entries() {
        let mut t = Timers::default();
        for i in 0..5000 {
            t.schedule(i, i as u32, 0);
        }
        t.compact(10, |key, _| key < 10);
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn keepalives_of_one_user_coincide_and_respect_the_interval() {
        let iv = 120_000;
        let a = next_keepalive(1_234, iv, 99);
        let b = next_keepalive(30_000, iv, 99);
        assert_eq!(a, b);
        assert!(a > 30_000);
        assert_eq!(next_keepalive(a, iv, 99), a + iv);
        // Thousands of users land on at most interval/slot instants.
        let mut instants: Vec<_> = (0..10_000u64)
            .map(|u| next_keepalive(0, iv, u.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % iv)
            .collect();
        instants.sort();
        instants.dedup();
        assert!(instants.len() <= 30, "{}", instants.len());
        // Short intervals still work.
        assert_eq!(next_keepalive(0, 1000, 5), 1000);
    }
}
