//! Who watches what: one entry per kernel watch, shared by every parked
//! connection that names the file, with a count of its live watchers. The
//! kernel side (adding and removing watches, reading events) is the inotify
//! adapter's; this table only decides.
//!
//! The watcher lists are cleaned lazily: a connection that leaves only
//! lowers the count, and its entry is dropped when the list is next
//! compacted or fired. That keeps leaving O(1), which matters when one
//! delivery wakes thousands of connections watching the same two files.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;

use slab::Slab;

/// A parked connection as a watcher: slab key and the serial that tells a
/// reused key apart.
pub type Watcher = (u32, u32);

struct Watch<W> {
    wd: W,
    path: Box<Path>,
    live: u32,
    watchers: Vec<Watcher>,
    /// The kernel dropped the watch (file deleted, unmounted): no new
    /// watchers; the entry goes when the last old one leaves.
    dead: bool,
}

pub struct WatchRefs<W> {
    by_wd: HashMap<W, u32>,
    list: Slab<Watch<W>>,
}

impl<W: Clone + Eq + Hash> WatchRefs<W> {
    pub fn new() -> WatchRefs<W> {
        WatchRefs {
            by_wd: HashMap::new(),
            list: Slab::new(),
        }
    }

    /// `who` watches the kernel watch `wd` (for `path`); returns its index.
    /// Two paths naming the same file share one entry: the kernel gives
    /// them the same watch.
    pub fn add(&mut self, wd: W, path: &Path, who: Watcher) -> u32 {
        let idx = match self.by_wd.get(&wd) {
            Some(&idx) => idx,
            None => {
                let idx = self.list.insert(Watch {
                    wd: wd.clone(),
                    path: path.into(),
                    live: 0,
                    // Most files have one watcher: don't let the first push
                    // reserve room for four.
                    watchers: Vec::with_capacity(1),
                    dead: false,
                }) as u32;
                self.by_wd.insert(wd, idx);
                idx
            }
        };
        let w = &mut self.list[idx as usize];
        w.live += 1;
        w.watchers.push(who);
        idx
    }

    pub fn knows(&self, wd: &W) -> bool {
        self.by_wd.contains_key(wd)
    }

    /// A watcher left `idx`. `is_live` tells whether a listed watcher still
    /// counts (used to compact the list now and then). Returns the kernel
    /// watch to remove when the last one left.
    pub fn leave(&mut self, idx: u32, is_live: impl Fn(Watcher) -> bool) -> Option<W> {
        let w = self.list.get_mut(idx as usize)?;
        w.live = w.live.saturating_sub(1);
        if w.live == 0 {
            let w = self.list.remove(idx as usize);
            if !w.dead {
                self.by_wd.remove(&w.wd);
                return Some(w.wd);
            }
        } else if w.watchers.len() > 2 * w.live as usize + 8 {
            w.watchers.retain(|&x| is_live(x));
        }
        None
    }

    /// The watch at `idx`, as the adapter knows it.
    pub fn key(&self, idx: u32) -> Option<&W> {
        self.list.get(idx as usize).map(|w| &w.wd)
    }

    pub fn path(&self, idx: u32) -> Option<&Path> {
        self.list.get(idx as usize).map(|w| &*w.path)
    }

    /// Kernel watches held.
    pub fn count(&self) -> usize {
        self.by_wd.len()
    }

    /// The file behind `wd` changed (`gone`: the kernel dropped the
    /// watch): its watchers go to `woken`, possibly stale or repeated.
    pub fn fired(&mut self, wd: &W, gone: bool, woken: &mut Vec<Watcher>) {
        let Some(&idx) = self.by_wd.get(wd) else {
            return;
        };
        let w = &mut self.list[idx as usize];
        woken.append(&mut w.watchers);
        if gone {
            w.dead = true;
            self.by_wd.remove(wd);
        }
    }

    /// Events were lost: anyone might have missed a change.
    pub fn overflowed(&mut self, woken: &mut Vec<Watcher>) {
        for (_, w) in self.list.iter_mut() {
            woken.append(&mut w.watchers);
        }
    }

    /// Live watcher count of each entry, for consistency checks.
    #[cfg(test)]
    pub fn live_counts(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.list.iter().map(|(i, w)| (i as u32, w.live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_watch_is_counted_once_and_removed_with_the_last_watcher() {
        let mut w = WatchRefs::new();
        let a = w.add(7, Path::new("/a"), (1, 1));
        let b = w.add(7, Path::new("/a/."), (2, 1));
        assert_eq!(a, b);
        assert_eq!(w.count(), 1);
        assert_eq!(w.leave(a, |_| true), None);
        assert_eq!(w.leave(b, |_| true), Some(7));
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn a_dead_watch_is_not_removed_again() {
        let mut w = WatchRefs::new();
        let a = w.add(3, Path::new("/a"), (1, 1));
        let mut woken = Vec::new();
        w.fired(&3, true, &mut woken);
        assert_eq!(woken, vec![(1, 1)]);
        assert_eq!(w.count(), 0);
        assert_eq!(w.leave(a, |_| true), None);
    }
}
