//! The inotify adapter: the daemon's one inotify instance. It adds and
//! removes kernel watches when the core says so and turns the kernel's
//! events into core events; which connection watches what is the core's.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::error;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, WatchDescriptor};

use super::core::Core;

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
    fired: Vec<(WatchDescriptor, bool)>,
}

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        let flags = InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC;
        Ok(Inotify {
            inotify: nix::sys::inotify::Inotify::init(flags)?,
            fired: Vec::new(),
        })
    }

    /// A kernel watch on `path`. Two paths naming the same file get the
    /// same watch back, which is how the core shares it.
    pub fn add(&mut self, path: &Path) -> Result<WatchDescriptor, WatchError> {
        self.inotify.add_watch(path, mask()).map_err(|e| match e {
            Errno::ENOSPC => WatchError::Limit,
            e => WatchError::Path(path.to_owned(), e.into()),
        })
    }

    pub fn remove(&mut self, wd: WatchDescriptor) {
        // Fails only if the kernel already dropped it.
        let _ = self.inotify.rm_watch(wd);
    }

    /// Read every pending event and hand it to the core.
    pub fn readable(&mut self, core: &mut Core<OwnedFd, WatchDescriptor>, now: Instant) {
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
                    self.fired.push((ev.wd, gone));
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
        let mut w = Inotify::new().unwrap();
        let a = w.add(dir.path()).unwrap();
        let b = w.add(&dir.path().join(".")).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_new_file_wakes_every_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Inotify::new().unwrap();
        let mut core: Core<OwnedFd, WatchDescriptor> = Core::new(10, false, Instant::now(), 1);
        let now = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            let wd = w.add(dir.path()).unwrap();
            let arrival = crate::idle::core::Arrival {
                fd: OwnedFd::from(a),
                notify: None,
                user: "u",
                cookie: [0; 16],
                tag: "t",
                in_idle: true,
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
        let mut w = Inotify::new().unwrap();
        assert!(matches!(
            w.add(Path::new("/nonexistent/x")),
            Err(WatchError::Path(..))
        ));
    }
}
