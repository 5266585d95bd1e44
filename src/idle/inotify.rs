//! The inotify adapter: the daemon's one inotify instance, and the Dovecot
//! notify fds taken in with hand-offs (`notify_fds.rs`). It adds and
//! removes watches when the core says so and turns the kernel's events
//! into core events; which connection watches what is the core's.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::error;
use mio::Registry;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags};

use super::core::Core;
use super::notify_fds::NotifyFds;
pub use super::watch::Watch;

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
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

/// A kernel watch is a plain 4-byte number here: the core keys its watch
/// table by it, once per watched file.
pub struct Inotify {
    inotify: nix::sys::inotify::Inotify,
    fired: Vec<(Watch, bool)>,
    notify: NotifyFds,
}

impl Inotify {
    /// `reopen`: Dovecot's watched inodes may be reopened by handle
    /// (CAP_DAC_READ_SEARCH); `closing`: descriptors the closing thread
    /// may have queued.
    pub fn new(reopen: bool, closing: usize) -> io::Result<Inotify> {
        let flags = InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC;
        Ok(Inotify {
            inotify: nix::sys::inotify::Inotify::init(flags)?,
            fired: Vec::new(),
            notify: NotifyFds::new(reopen, closing)?,
        })
    }

    /// A kernel watch on `path`. Two paths naming the same file get the
    /// same watch back, which is how the core shares it.
    pub fn add(&mut self, path: &Path) -> Result<Watch, WatchError> {
        match self.inotify.add_watch(path, mask()) {
            Ok(wd) => Ok(Watch::Kernel(wd)),
            Err(Errno::ENOSPC) => Err(WatchError::Limit),
            Err(e) => Err(WatchError::Path(path.to_owned(), e.into())),
        }
    }

    /// The last watcher of `w` left.
    pub fn remove(&mut self, w: Watch, reg: &Registry) {
        match w {
            // Fails only if the kernel already dropped it.
            Watch::Kernel(wd) => drop(self.inotify.rm_watch(wd)),
            Watch::Notify(key) => self.notify.release(key, reg),
        }
    }

    /// Take in a client's Dovecot notify fd: what the client watches
    /// instead (see `notify_fds.rs`), with a path for each where known.
    pub fn take_notify(
        &mut self,
        fd: OwnedFd,
        reg: &Registry,
        core: &mut Core<OwnedFd, Watch>,
        who: &str,
    ) -> Vec<(Watch, PathBuf)> {
        self.notify.take(fd, &self.inotify, reg, core, who)
    }

    /// Descriptors held for Dovecot's notify fds (kept ones, mounts).
    /// The kept Dovecot notify fd a connection watches, if any.
    pub fn notify_fd_of(&self, watches: &[Watch]) -> Option<BorrowedFd<'_>> {
        watches.iter().find_map(|w| match w {
            Watch::Notify(k) => self.notify.fd(*k),
            Watch::Kernel(_) => None,
        })
    }

    pub fn notify_fds(&self) -> usize {
        self.notify.held()
    }

    /// The notify fd kept under `key` is readable: wake its watchers.
    pub fn notify_readable(&mut self, key: u32, core: &mut Core<OwnedFd, Watch>, now: Instant) {
        if self.notify.drain(key) {
            core.watch_fired(&Watch::Notify(key), false, now);
        }
    }

    /// Read every pending event and hand it to the core.
    pub fn readable(&mut self, core: &mut Core<OwnedFd, Watch>, now: Instant) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => return error!("reading inotify events: {e}"),
            };
            let mut overflow = false;
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    overflow = true;
                } else {
                    let gone = ev.mask.contains(AddWatchFlags::IN_IGNORED);
                    self.fired.push((Watch::Kernel(ev.wd), gone));
                }
            }
            if overflow {
                core.overflowed(now);
            }
            for (wd, gone) in self.fired.drain(..) {
                core.watch_fired(&wd, gone, now);
            }
        }
    }
}

impl AsFd for Inotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_names_of_one_file_get_one_watch() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Inotify::new(false, 4).unwrap();
        let a = w.add(dir.path()).unwrap();
        let b = w.add(&dir.path().join(".")).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_new_file_wakes_every_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Inotify::new(false, 4).unwrap();
        let mut core: Core<OwnedFd, Watch> =
            Core::new(10, false, Instant::now(), 1, Default::default());
        let now = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            let wd = w.add(dir.path()).unwrap();
            let arrival = crate::idle::core::Arrival {
                fd: OwnedFd::from(a),
                user: "u",
                cookie: [0; 16],
                tag: "t",
                in_idle: true,
                multiplex: false,
                keepalive_secs: 0,
                watches: vec![(wd, dir.path())],
                state: b"s",
                from_pid: 1,
                carried: Default::default(),
            };
            ids.push(core.adopt(arrival, now).ok().unwrap());
        }
        std::fs::write(dir.path().join("msg"), b"x").unwrap();
        w.readable(&mut core, now);
        for id in ids {
            assert!(core.returning(id).is_some(), "{id:#x} woken");
        }
    }

    #[test]
    fn missing_path_is_an_error() {
        let mut w = Inotify::new(false, 4).unwrap();
        assert!(matches!(
            w.add(Path::new("/nonexistent/x")),
            Err(WatchError::Path(..))
        ));
    }
}
