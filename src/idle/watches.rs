//! One inotify instance for the whole daemon, one watch per watched file,
//! shared by every parked connection that names it.
//!
//! A watch counts its live watchers; the last one leaving removes it. The
//! watcher lists are cleaned lazily: a connection that leaves only lowers
//! the count, and its entry is dropped when the list is next compacted or
//! fired. That keeps leaving O(1), which matters when one delivery wakes
//! thousands of connections watching the same two files.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use slab::Slab;

/// A parked connection as a watcher: slab key and the serial that tells a
/// reused key apart.
pub type Watcher = (u32, u32);

struct Watch {
    wd: WatchDescriptor,
    path: Box<Path>,
    live: u32,
    watchers: Vec<Watcher>,
    /// The kernel dropped the watch (file deleted, unmounted): no new
    /// watchers; the entry goes when the last old one leaves.
    dead: bool,
}

pub struct Watches {
    inotify: Inotify,
    by_wd: HashMap<i32, u32>,
    list: Slab<Watch>,
    buf: Box<[u8]>,
}

#[derive(Debug)]
pub enum WatchError {
    /// `fs.inotify.max_user_watches` reached.
    Limit,
    Path(PathBuf, io::Error),
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::Limit => write!(
                f,
                "inotify watch limit reached (raise fs.inotify.max_user_watches)"
            ),
            WatchError::Path(p, e) => write!(f, "cannot watch {}: {e}", p.display()),
        }
    }
}

/// What the kernel reports that makes a mailbox worth looking at again.
fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

impl Watches {
    pub fn new() -> io::Result<Watches> {
        Ok(Watches {
            inotify: Inotify::init()?,
            by_wd: HashMap::new(),
            list: Slab::new(),
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        })
    }

    /// Watch `path` for `who`; returns the watch's index. Two paths naming
    /// the same file share one watch (the kernel gives the same descriptor).
    pub fn add(&mut self, path: &Path, who: Watcher) -> Result<u32, WatchError> {
        let wd = self.inotify.watches().add(path, mask()).map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ENOSPC) {
                WatchError::Limit
            } else {
                WatchError::Path(path.to_owned(), e)
            }
        })?;
        let idx = match self.by_wd.get(&wd.get_watch_descriptor_id()) {
            Some(&idx) => idx,
            None => {
                let id = wd.get_watch_descriptor_id();
                let idx = self.list.insert(Watch {
                    wd,
                    path: path.into(),
                    live: 0,
                    // Most files have one watcher: don't let the first push
                    // reserve room for four.
                    watchers: Vec::with_capacity(1),
                    dead: false,
                }) as u32;
                self.by_wd.insert(id, idx);
                idx
            }
        };
        let w = &mut self.list[idx as usize];
        w.live += 1;
        w.watchers.push(who);
        Ok(idx)
    }

    /// `who` no longer watches `idx`. `is_live` tells whether a watcher
    /// still counts (used to compact the list now and then).
    pub fn leave(&mut self, idx: u32, is_live: impl Fn(Watcher) -> bool) {
        let Some(w) = self.list.get_mut(idx as usize) else {
            return;
        };
        w.live = w.live.saturating_sub(1);
        if w.live == 0 {
            let w = self.list.remove(idx as usize);
            if !w.dead {
                self.by_wd.remove(&w.wd.get_watch_descriptor_id());
                // Fails only if the kernel already dropped it.
                let _ = self.inotify.watches().remove(w.wd);
            }
        } else if w.watchers.len() > 2 * w.live as usize + 8 {
            w.watchers.retain(|&x| is_live(x));
        }
    }

    pub fn path(&self, idx: u32) -> Option<&Path> {
        self.list.get(idx as usize).map(|w| &*w.path)
    }

    /// Number of inotify watches held.
    pub fn count(&self) -> usize {
        self.by_wd.len()
    }

    /// Read every pending event; push the watchers to wake into `woken`
    /// (possibly stale or repeated: the caller checks). Returns false when
    /// nothing more is pending.
    pub fn read(&mut self, woken: &mut Vec<Watcher>) -> io::Result<()> {
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut overflow = false;
            let mut fired: Vec<(i32, bool)> = Vec::new();
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                } else {
                    let gone = ev.mask.contains(EventMask::IGNORED);
                    fired.push((ev.wd.get_watch_descriptor_id(), gone));
                }
            }
            if overflow {
                // Events were lost: anyone might have missed a change.
                for (_, w) in self.list.iter_mut() {
                    woken.append(&mut w.watchers);
                }
            }
            for (id, gone) in fired {
                let Some(&idx) = self.by_wd.get(&id) else {
                    continue;
                };
                let w = &mut self.list[idx as usize];
                woken.append(&mut w.watchers);
                if gone {
                    w.dead = true;
                    self.by_wd.remove(&id);
                }
            }
        }
    }
}

impl AsFd for Watches {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_watch_is_counted_once_and_removed_with_the_last_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watches::new().unwrap();
        let a = w.add(dir.path(), (1, 1)).unwrap();
        let b = w.add(&dir.path().join("."), (2, 1)).unwrap();
        assert_eq!(a, b);
        assert_eq!(w.count(), 1);
        w.leave(a, |_| true);
        assert_eq!(w.count(), 1);
        w.leave(b, |_| true);
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn a_new_file_wakes_every_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watches::new().unwrap();
        w.add(dir.path(), (1, 1)).unwrap();
        w.add(dir.path(), (2, 7)).unwrap();
        std::fs::write(dir.path().join("msg"), b"x").unwrap();
        let mut woken = Vec::new();
        w.read(&mut woken).unwrap();
        woken.sort();
        woken.dedup();
        assert_eq!(woken, vec![(1, 1), (2, 7)]);
    }

    #[test]
    fn missing_path_is_an_error() {
        let mut w = Watches::new().unwrap();
        assert!(matches!(
            w.add(Path::new("/nonexistent/x"), (1, 1)),
            Err(WatchError::Path(..))
        ));
    }
}
