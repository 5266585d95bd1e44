//! Parked clients' sockets: taking a client in (check the descriptor, add
//! its watches, poll it), and reading what it says. Each readiness report
//! gets one read of at most what the core wants; a client still parked
//! after it waits in the ready queue for one more read on the next loop
//! turn (more input, or its close), so one client streaming input cannot
//! starve the others and no hang-up goes unseen.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};

use super::core::{Arrival, ConnId, Core, Refused};
use super::inotify::{Inotify, Watch, WatchError};
use super::tokens::{token, Source};
use crate::proto::native::{RefuseKind, MAX_INPUT};
use crate::sys;

pub type IdleCore = Core<OwnedFd, Watch>;

pub struct Clients {
    scratch: Box<[u8]>,
    /// Clients still parked after their last read: read again next turn.
    ready: VecDeque<ConnId>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients {
            scratch: vec![0; MAX_INPUT].into_boxed_slice(),
            ready: VecDeque::new(),
        }
    }

    /// Whether the next poll must not wait: some client has unread input.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Make a client ours. Shared by every way a client arrives: `a` as
    /// the adapter decoded it (no watches yet), `paths` what it watches.
    pub fn adopt<'a>(
        &mut self,
        core: &mut IdleCore,
        inotify: &mut Inotify,
        reg: &Registry,
        mut a: Arrival<'a, OwnedFd, Watch>,
        paths: &'a [PathBuf],
        now: Instant,
    ) -> Result<ConnId, Refused<OwnedFd>> {
        let refuse = |core: &mut IdleCore, a: Arrival<'_, _, _>, kind, reason: String| {
            core.refuse(a.user, a.from_pid, &reason);
            core.discard_watches(a.watches.into_iter().map(|(wd, _)| wd).collect());
            Err(Refused {
                fd: a.fd,
                kind,
                reason,
            })
        };
        // Checked here as well as in the core: a refusal must not cost the
        // kernel watches and the poll registration first.
        if let Err((kind, reason)) = core.admit(0) {
            return refuse(core, a, kind, reason);
        }
        if let Err(why) = sys::check_stream_socket(&a.fd) {
            return refuse(core, a, RefuseKind::BadFd, why.into());
        }
        for path in paths {
            match inotify.add(path) {
                Ok(wd) => a.watches.push((wd, path.as_path())),
                Err(e) => {
                    let kind = match e {
                        WatchError::Limit => RefuseKind::WatchLimit,
                        WatchError::Path(..) => RefuseKind::BadWatch,
                    };
                    return refuse(core, a, kind, e.to_string());
                }
            }
        }
        if let Err(e) = register(reg, core.next_key(), &a.fd) {
            let reason = format!("cannot poll the descriptor: {e}");
            return refuse(core, a, RefuseKind::BadFd, reason);
        }
        core.adopt(a, now)
            .inspect_err(|r| unpoll(reg, r.fd.as_raw_fd()))
    }

    /// The client polled under `key` is readable (or may have been before
    /// we polled it: edges are not repeated, so look now).
    pub fn readable(&mut self, core: &mut IdleCore, key: u32, now: Instant) {
        if let Some(id) = core.parked_at_key(key) {
            self.read_once(core, id, now);
        }
    }

    /// One read for each client that may have more, in turn.
    pub fn turn(&mut self, core: &mut IdleCore, now: Instant) {
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                return;
            };
            self.read_once(core, id, now);
        }
    }

    fn read_once(&mut self, core: &mut IdleCore, id: ConnId, now: Instant) {
        let Some(budget) = core.read_budget(id) else {
            return;
        };
        let Some(fd) = core.fd(id).map(|f| f.as_raw_fd()) else {
            return;
        };
        let budget = budget.min(self.scratch.len());
        match read_some(fd, &mut self.scratch[..budget]) {
            Ok(0) => core.hung_up(id, "connection closed by client"),
            Ok(n) => {
                core.input(id, &self.scratch[..n], now);
                // Still parked: look again next turn. There may be more
                // than one budget's worth, or the client's close may have
                // come with these bytes in the same edge, which epoll will
                // not report again.
                if core.read_budget(id).is_some() {
                    self.ready.push_back(id);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => core.hung_up(id, &format!("read failed: {e}")),
        }
    }
}

fn register(reg: &Registry, key: u32, fd: &OwnedFd) -> io::Result<()> {
    sys::set_nonblocking(fd.as_fd(), true)?;
    reg.register(
        &mut SourceFd(&fd.as_raw_fd()),
        token(Source::Client(key)),
        Interest::READABLE,
    )
}

/// Stop polling a client's socket. Deregistering a registered fd cannot
/// fail; if it somehow did, events for a connection that is not parked
/// are ignored anyway.
pub fn unpoll(reg: &Registry, fd: std::os::fd::RawFd) {
    let _ = reg.deregister(&mut SourceFd(&fd));
}

fn read_some(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
