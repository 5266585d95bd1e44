//! Dovecot's notify fds: with each hand-off the imap process sends the
//! inotify instance that watches the client's mailbox. Keeping each one
//! costs a descriptor and an inotify instance per client (and
//! `fs.inotify.max_user_instances`, 128 by default, runs out). So, in
//! order of preference:
//! 1. reopened: with CAP_DAC_READ_SEARCH, every inode it watches is
//!    reopened by its file handle (read from /proc/self/fdinfo) and added
//!    to our own instance with the same mask; Dovecot's fd is closed.
//! 2. shared: a notify fd we keep for another client watches the same
//!    inodes with the same masks (same mailbox): that one serves both.
//! 3. kept: polled as it is, and offered to later clients of the mailbox.
//!
//! Either way the client watches a [`Watch`] in the core, whose shared
//! watch table counts who still needs a kept fd. Before Dovecot's fd is
//! closed it is polled once: events already queued on it (a change since
//! the imap process last looked) would otherwise be lost, so such a fd is
//! kept and wakes its client at once. Closes go to the closing thread.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::AddWatchFlags;
use slab::Slab;

use super::closer::Closer;
use super::core::{Core, NotifyPath};
use super::tokens::{token, Source};
use super::watch::Watch;
use crate::sys::fdinfo::{self, Mark};
use crate::sys::{self, fhandle};

/// One watched inode and its events: `(device, inode, mask)`.
type MarkKey = (u32, u64, u32);

struct Kept {
    fd: OwnedFd,
    /// What it watches, when others may share it.
    marks: Option<Box<[MarkKey]>>,
}

pub struct NotifyFds {
    kept: Slab<Kept>,
    by_marks: HashMap<Box<[MarkKey]>, u32>,
    /// A descriptor on each filesystem handles were decoded on (`None`:
    /// it has no mount we can open).
    mounts: HashMap<u32, Option<File>>,
    reopen: bool,
    closer: Closer,
    scratch: Box<[u8]>,
}

impl NotifyFds {
    pub fn new(reopen: bool, closing: usize) -> io::Result<NotifyFds> {
        Ok(NotifyFds {
            kept: Slab::new(),
            by_marks: HashMap::new(),
            mounts: HashMap::new(),
            reopen,
            closer: Closer::new(closing)?,
            scratch: vec![0; 4096].into_boxed_slice(),
        })
    }

    /// Descriptors held: kept notify fds and mount descriptors.
    /// The kept notify fd at `key`, to send a successor a copy.
    pub fn fd(&self, key: u32) -> Option<BorrowedFd<'_>> {
        self.kept.get(key as usize).map(|k| k.fd.as_fd())
    }

    pub fn held(&self) -> usize {
        self.kept.len() + self.mounts.values().flatten().count()
    }

    /// Take in `fd`; returns what the client watches instead.
    pub fn take<F: AsRawFd>(
        &mut self,
        fd: OwnedFd,
        ours: &nix::sys::inotify::Inotify,
        reg: &Registry,
        core: &mut Core<F, Watch>,
        who: &str,
    ) -> Vec<(Watch, PathBuf)> {
        let marks = match fdinfo::inotify_marks(fd.as_fd()) {
            Ok(m) => m,
            Err(e) => {
                debug!("{who}: notify fd not readable ({e}); keeping it");
                return self.keep(fd, None, reg, core, who).into_iter().collect();
            }
        };
        let mut watches = Vec::new();
        if self.reopen {
            match self.reopen_all(&marks, ours, &mut watches) {
                Ok(()) if !pending(&fd) => {
                    self.closer.close(fd);
                    core.count_notify(NotifyPath::Reopened);
                    return watches;
                }
                Ok(()) => debug!("{who}: notify fd has events queued; keeping it"),
                Err(e) => debug!("{who}: cannot reopen what the notify fd watches: {e}"),
            }
        }
        let mut key: Vec<MarkKey> = marks.iter().map(|m| (m.dev, m.ino, m.mask)).collect();
        key.sort_unstable();
        let key = key.into_boxed_slice();
        let queued = pending(&fd);
        match self.by_marks.get(&key) {
            Some(&k) if !queued => {
                self.closer.close(fd);
                core.count_notify(NotifyPath::Shared);
                watches.push((Watch::Notify(k), PathBuf::new()));
            }
            // Offered to others only when nothing is queued on it yet
            // (it wakes its first client at once) and no other is.
            found => {
                let offer = (!queued && found.is_none()).then_some(key);
                watches.extend(self.keep(fd, offer, reg, core, who));
            }
        }
        watches
    }

    fn keep<F: AsRawFd>(
        &mut self,
        fd: OwnedFd,
        marks: Option<Box<[MarkKey]>>,
        reg: &Registry,
        core: &mut Core<F, Watch>,
        who: &str,
    ) -> Option<(Watch, PathBuf)> {
        let entry = self.kept.vacant_entry();
        let key = entry.key() as u32;
        let polled = sys::set_nonblocking(fd.as_fd(), true).and_then(|()| {
            reg.register(
                &mut SourceFd(&fd.as_raw_fd()),
                token(Source::Notify(key)),
                Interest::READABLE,
            )
        });
        if let Err(e) = polled {
            warn!("{who}: cannot poll the notify fd ({e}): mailbox changes will not wake it");
            self.closer.close(fd);
            return None;
        }
        if let Some(m) = &marks {
            self.by_marks.insert(m.clone(), key);
        }
        entry.insert(Kept { fd, marks });
        core.count_notify(NotifyPath::Kept);
        Some((Watch::Notify(key), PathBuf::new()))
    }

    /// Every mark of Dovecot's instance, added to ours (`IN_MASK_ADD`:
    /// another client's mask on the same inode stays). What was added
    /// before a failure stays in `watches`: harmless, the client watches
    /// the kept fd as well then.
    fn reopen_all(
        &mut self,
        marks: &[Mark],
        ours: &nix::sys::inotify::Inotify,
        watches: &mut Vec<(Watch, PathBuf)>,
    ) -> io::Result<()> {
        for m in marks {
            let Some((kind, bytes)) = &m.handle else {
                return Err(io::Error::other("its filesystem gives no file handles"));
            };
            let mount = self.mount(m)?;
            let inode = fhandle::open_by_handle(mount.as_fd(), *kind, bytes)?;
            let at = format!("/proc/self/fd/{}", inode.as_raw_fd());
            let path = fs::read_link(&at).unwrap_or_default();
            // nix names no IN_MASK_ADD; the kernel takes the bits as given.
            let mask = m.mask & AddWatchFlags::IN_ALL_EVENTS.bits() | nix::libc::IN_MASK_ADD;
            let wd = ours.add_watch(at.as_str(), AddWatchFlags::from_bits_retain(mask))?;
            watches.push((Watch::Kernel(wd), path));
        }
        Ok(())
    }

    fn mount(&mut self, m: &Mark) -> io::Result<&File> {
        let open = || {
            let (major, minor) = m.major_minor();
            let at = fhandle::mount_point(major, minor)?;
            File::open(at).ok()
        };
        self.mounts
            .entry(m.dev)
            .or_insert_with(open)
            .as_ref()
            .ok_or_else(|| {
                io::Error::other(format!("no mount of device {:?} to open", m.major_minor()))
            })
    }

    /// Nobody watches the kept fd `key` any more.
    pub fn release(&mut self, key: u32, reg: &Registry) {
        let Some(k) = self.kept.try_remove(key as usize) else {
            return;
        };
        if let Some(m) = &k.marks {
            if self.by_marks.get(m) == Some(&key) {
                self.by_marks.remove(m);
            }
        }
        // Before the key can be reused: a late event must not reach the
        // next fd kept under it.
        let _ = reg.deregister(&mut SourceFd(&k.fd.as_raw_fd()));
        self.closer.close(k.fd);
    }

    /// Empty the queue of the kept fd `key` (edges are not repeated, and a
    /// shared fd serves clients still to come). Whether `key` is kept.
    pub fn drain(&mut self, key: u32) -> bool {
        let Some(k) = self.kept.get(key as usize) else {
            return false;
        };
        loop {
            match nix::unistd::read(k.fd.as_fd(), &mut self.scratch) {
                Ok(n) if n > 0 => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return true,
            }
        }
    }
}

/// Whether events wait on `fd` now.
fn pending(fd: &OwnedFd) -> bool {
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::core::Arrival;
    use nix::sys::inotify::{InitFlags, Inotify};
    use std::path::Path;
    use std::time::Instant;

    struct Rig {
        poll: mio::Poll,
        ours: Inotify,
        fds: NotifyFds,
        core: Core<OwnedFd, Watch>,
        /// The clients' ends of the parked sockets.
        peers: Vec<std::os::unix::net::UnixStream>,
    }

    /// What an imap process would send: an instance watching `dir`.
    fn dovecot_fd(dir: &Path) -> OwnedFd {
        let i = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
        i.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            .unwrap();
        i.into()
    }

    impl Rig {
        fn new(reopen: bool) -> Rig {
            Rig {
                poll: mio::Poll::new().unwrap(),
                ours: Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).unwrap(),
                fds: NotifyFds::new(reopen, 16).unwrap(),
                core: Core::new(10, false, Instant::now(), 1, Default::default()),
                peers: Vec::new(),
            }
        }

        /// Park a client whose notify fd is `fd`; returns its watches.
        fn park(&mut self, fd: OwnedFd) -> Vec<Watch> {
            let got = self
                .fds
                .take(fd, &self.ours, self.poll.registry(), &mut self.core, "t");
            let (client, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            self.peers.push(peer);
            let arrival = Arrival {
                carried: Default::default(),
                multiplex: false,
                fd: OwnedFd::from(client),
                user: "u",
                cookie: [0; 16],
                tag: "t",
                in_idle: true,
                keepalive_secs: 0,
                watches: got.iter().map(|(w, p)| (*w, p.as_path())).collect(),
                state: b"s",
                from_pid: 1,
            };
            assert!(self.core.adopt(arrival, Instant::now()).is_ok());
            got.into_iter().map(|(w, _)| w).collect()
        }

        fn paths(&self) -> (u64, u64, u64) {
            let s = self.core.stats();
            (s.notify_shared, s.notify_reopened, s.notify_kept)
        }
    }

    #[test]
    fn one_mailbox_shares_one_kept_fd_that_wakes_everyone() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut r = Rig::new(false);
        let first = r.park(dovecot_fd(a.path()));
        let second = r.park(dovecot_fd(a.path()));
        let other = r.park(dovecot_fd(b.path()));
        assert_eq!(first, second);
        assert_ne!(first, other);
        assert_eq!(r.paths(), (1, 0, 2));
        assert_eq!(r.fds.held(), 2);
        std::fs::write(a.path().join("msg"), b"x").unwrap();
        let Watch::Notify(k) = first[0] else {
            panic!("{first:?}")
        };
        assert!(r.fds.drain(k));
        r.core.watch_fired(&first[0], false, Instant::now());
        let s = r.core.stats();
        assert_eq!(
            (s.parked, s.wake_changed),
            (1, 2),
            "both of the mailbox woke"
        );
        // The last watcher left: the core asks for the fd to go.
        let mut unwatched = Vec::new();
        while let Some(act) = r.core.next_action() {
            if let crate::idle::core::Action::Unwatch(w) = act {
                unwatched.push(w);
            }
        }
        assert_eq!(unwatched, first);
        r.fds.release(k, r.poll.registry());
        assert_eq!(r.fds.held(), 1);
    }

    #[test]
    fn a_notify_fd_with_events_queued_is_kept_not_shared() {
        let a = tempfile::tempdir().unwrap();
        let mut r = Rig::new(false);
        let first = r.park(dovecot_fd(a.path()));
        let late = dovecot_fd(a.path());
        std::fs::write(a.path().join("msg"), b"x").unwrap();
        let second = r.park(late);
        assert_ne!(first, second, "its queued event must wake its client");
        assert_eq!(r.paths(), (0, 0, 2));
    }

    #[test]
    fn with_the_capability_the_inodes_move_into_our_instance() {
        if !crate::sys::caps::can_read_search() {
            return eprintln!("SKIPPED with_the_capability_...: needs CAP_DAC_READ_SEARCH (root)");
        }
        let a = tempfile::tempdir().unwrap();
        let mut r = Rig::new(true);
        let w = r.park(dovecot_fd(a.path()));
        assert_eq!(r.paths(), (0, 1, 0));
        assert!(matches!(w[..], [Watch::Kernel(_)]), "{w:?}");
        assert_eq!(r.fds.held(), 1, "a mount descriptor, no notify fd");
        std::fs::write(a.path().join("msg"), b"x").unwrap();
        let events = r.ours.read_events().unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].mask.contains(AddWatchFlags::IN_CREATE));
        assert_eq!(Watch::Kernel(events[0].wd), w[0]);
    }
}
