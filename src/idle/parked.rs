//! A parked connection: what it costs, what its client may say, its
//! keepalives, and the ways it leaves (woken, hung up, given up).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use log::{debug, info, warn};
use mio::unix::SourceFd;
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, Shutdown};

use super::daemon::Daemon;
use super::idle_input::{self, IdleInput, MAX_IDLE_INPUT};
use super::timers::{next_keepalive, Millis};
use super::watches::Watcher;
use crate::proto::native::{Cookie, Gone, GoneReason, WakeReason, MAX_INPUT};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Watching the client and the mailbox.
    Parked,
    /// Woken; the tracker refused it and a retry is scheduled.
    Waiting,
    /// Woken; waiting for its turn on the tracker link.
    Queued,
    /// Sent to the tracker; waiting for its answer.
    InFlight,
}

/// One parked connection. Kept small on purpose: this is the per-client
/// cost of the daemon (plus the state blob and tag it carries).
pub(super) struct Conn {
    pub fd: OwnedFd,
    /// Dovecot mode: the imap process's inotify instance for this client.
    pub notify: Option<OwnedFd>,
    /// Tells this connection apart from a later one reusing its slab key.
    pub serial: u32,
    pub user: u32,
    pub timer_gen: u32,
    pub keepalive_secs: u32,
    /// Seconds since the daemon started.
    pub parked_at: u32,
    pub phase: Phase,
    pub in_idle: bool,
    /// Counts of what `data` holds (see [`Conn::pack`]).
    n_watch: u8,
    tag_len: u8,
    pub cookie: Cookie,
    /// Watch indices, tag and state blob in one allocation: one malloc
    /// header and one pointer instead of three.
    data: Box<[u8]>,
    pub extra: Option<Box<Extra>>,
}

/// What only some connections need, boxed so the rest do not pay for it.
pub(super) enum Extra {
    /// Bytes of a `DONE` that has not fully arrived.
    Partial(Box<[u8]>),
    Waking(Waking),
}

pub(super) struct Waking {
    pub reason: WakeReason,
    pub input: Vec<u8>,
    pub idle_running: bool,
    pub give_up_at: Millis,
    pub attempts: u32,
    /// The watch paths, kept from the shared table before leaving it.
    pub watch: Vec<PathBuf>,
    /// Dovecot mode: the imap-master connection carrying it back.
    pub master: Option<u32>,
    /// When the daemon noticed what woke it; taken when first sent back.
    pub woken_at: Option<std::time::Instant>,
}

impl Conn {
    /// A new parked connection; `watches` are indices into the watch
    /// table, at most `MAX_WATCH`, and `tag` at most `MAX_TAG` bytes (both
    /// checked when the park message was decoded).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fd: OwnedFd,
        serial: u32,
        user: u32,
        keepalive_secs: u32,
        parked_at: u32,
        in_idle: bool,
        cookie: Cookie,
        watches: &[u32],
        tag: &str,
        state: &[u8],
    ) -> Conn {
        Conn {
            fd,
            notify: None,
            serial,
            user,
            timer_gen: 0,
            keepalive_secs,
            parked_at,
            phase: Phase::Parked,
            in_idle,
            n_watch: watches.len() as u8,
            tag_len: tag.len() as u8,
            cookie,
            data: Conn::pack(watches, tag.as_bytes(), state),
            extra: None,
        }
    }

    fn pack(watches: &[u32], tag: &[u8], state: &[u8]) -> Box<[u8]> {
        let mut data = Vec::with_capacity(watches.len() * 4 + tag.len() + state.len());
        for w in watches {
            data.extend_from_slice(&w.to_ne_bytes());
        }
        data.extend_from_slice(tag);
        data.extend_from_slice(state);
        data.into_boxed_slice()
    }

    fn tag_start(&self) -> usize {
        self.n_watch as usize * 4
    }

    pub fn watches(&self) -> Vec<u32> {
        self.data[..self.tag_start()]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    pub fn tag(&self) -> &str {
        let start = self.tag_start();
        std::str::from_utf8(&self.data[start..start + self.tag_len as usize]).unwrap_or("")
    }

    pub fn state(&self) -> &[u8] {
        &self.data[self.tag_start() + self.tag_len as usize..]
    }

    fn repack(&mut self, watches: &[u32], tag: &[u8]) {
        self.data = Conn::pack(watches, tag, self.state());
        self.n_watch = watches.len() as u8;
        self.tag_len = tag.len() as u8;
    }

    /// The client restarted IDLE with a new tag.
    pub fn set_tag(&mut self, tag: &[u8]) {
        let watches = self.watches();
        self.repack(&watches, tag);
    }

    /// Forget the watch indices (the connection left the watches).
    pub fn take_watches(&mut self) -> Vec<u32> {
        let watches = self.watches();
        let tag = self.tag().as_bytes().to_vec();
        self.repack(&[], &tag);
        watches
    }

    pub fn id(&self, key: u32) -> u64 {
        (self.serial as u64) << 32 | key as u64
    }

    pub fn waking(&self) -> Option<&Waking> {
        match self.extra.as_deref() {
            Some(Extra::Waking(w)) => Some(w),
            _ => None,
        }
    }

    pub fn waking_mut(&mut self) -> Option<&mut Waking> {
        match self.extra.as_deref_mut() {
            Some(Extra::Waking(w)) => Some(w),
            _ => None,
        }
    }

    fn take_partial(&mut self) -> Vec<u8> {
        match self.extra.take().map(|b| *b) {
            Some(Extra::Partial(p)) => p.into_vec(),
            other => {
                self.extra = other.map(Box::new);
                Vec::new()
            }
        }
    }
}

/// Give-up deadlines, as Dovecot's imap-hibernate: a client that typed is
/// waiting for an answer; one with only a mailbox change can wait longer.
const GIVE_UP_WITH_INPUT_MS: Millis = 10_000;
const GIVE_UP_WITHOUT_INPUT_MS: Millis = 5 * 60_000;
/// At shutdown, how long the tracker gets to take everyone back.
const GIVE_UP_AT_SHUTDOWN_MS: Millis = 30_000;

const STILL_HERE: &[u8] = b"* OK Still here\r\n";
const BYE: &[u8] = b"* BYE [UNAVAILABLE] Server is busy, please reconnect.\r\n";

enum WriteError {
    Full,
    Failed(io::Error),
}

fn write_now(fd: &OwnedFd, bytes: &[u8]) -> Result<(), WriteError> {
    sys::write_now(fd.as_fd(), bytes).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => WriteError::Full,
        _ => WriteError::Failed(e),
    })
}

impl Daemon {
    pub(super) fn who(&self, key: u32) -> String {
        match self.conns.get(key as usize) {
            Some(c) => format!("user={} conn={}", self.users.name(c.user), c.serial),
            None => format!("conn key {key}"),
        }
    }

    pub(super) fn schedule_keepalive(&mut self, key: u32, now: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.timer_gen = self.timers.new_gen();
        if conn.keepalive_secs > 0 {
            let hash = self.users.hash(conn.user);
            let at = next_keepalive(now, conn.keepalive_secs as u64 * 1000, hash);
            self.timers.schedule(at, key, conn.timer_gen);
        }
    }

    pub(super) fn keepalive(&mut self, key: u32, now: Millis) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        match write_now(&conn.fd, STILL_HERE) {
            Ok(()) => {
                self.stats.keepalives += 1;
                self.schedule_keepalive(key, now);
            }
            Err(WriteError::Full) => self.drop_conn(
                key,
                GoneReason::OutputFull,
                "client output buffer is full (keepalive)",
            ),
            Err(WriteError::Failed(e)) => {
                self.drop_conn(key, GoneReason::HungUp, &format!("keepalive failed: {e}"))
            }
        }
    }

    /// The client's socket is readable.
    pub(super) fn client_event(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase != Phase::Parked {
            return;
        }
        if !conn.in_idle {
            // Anything at all wakes it; forward what we read.
            let fd = conn.fd.as_raw_fd();
            return match read_some(fd, &mut self.scratch[..MAX_INPUT]) {
                Ok(0) => self.drop_conn(key, GoneReason::HungUp, "connection closed by client"),
                Ok(n) => {
                    let input = self.scratch[..n].to_vec();
                    self.wake_with(key, WakeReason::Input, input, false);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => self.drop_conn(key, GoneReason::HungUp, &format!("read failed: {e}")),
            };
        }
        loop {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return;
            };
            let partial = conn.take_partial();
            let have = partial.len();
            self.scratch[..have].copy_from_slice(&partial);
            let fd = conn.fd.as_raw_fd();
            let n = match read_some(fd, &mut self.scratch[have..MAX_IDLE_INPUT]) {
                Ok(0) => {
                    return self.drop_conn(key, GoneReason::HungUp, "connection closed by client")
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if have > 0 {
                        conn.extra = Some(Box::new(Extra::Partial(partial.into())));
                    }
                    return;
                }
                Err(e) => {
                    return self.drop_conn(key, GoneReason::HungUp, &format!("read failed: {e}"))
                }
            };
            let data = &self.scratch[..have + n];
            match idle_input::parse(data) {
                IdleInput::Partial => {
                    conn.extra = Some(Box::new(Extra::Partial(data.into())));
                }
                IdleInput::Bad => {
                    let input = data.to_vec();
                    return self.wake_with(key, WakeReason::BadDone, input, false);
                }
                IdleInput::Done { rest } => {
                    let input = rest.to_vec();
                    return self.wake_with(key, WakeReason::Done, input, false);
                }
                IdleInput::Restart { tag } => {
                    // Tags are printable ASCII (checked by the parser).
                    let new_tag = tag.to_vec();
                    let mut answer = Vec::with_capacity(conn.tag().len() + 32);
                    answer.extend_from_slice(conn.tag().as_bytes());
                    answer.extend_from_slice(b" OK Idle completed.\r\n+ idling\r\n");
                    match write_now(&conn.fd, &answer) {
                        Ok(()) => {
                            conn.set_tag(&new_tag);
                            self.stats.idle_restarted += 1;
                            debug!("{}: IDLE restarted in place", self.who(key));
                        }
                        Err(WriteError::Full) => {
                            return self.drop_conn(
                                key,
                                GoneReason::OutputFull,
                                "client output buffer is full (IDLE restart)",
                            )
                        }
                        Err(WriteError::Failed(e)) => {
                            return self.drop_conn(
                                key,
                                GoneReason::HungUp,
                                &format!("write failed: {e}"),
                            )
                        }
                    }
                }
            }
        }
    }

    /// Stop polling a connection's descriptors. Deregistering a registered
    /// fd cannot fail; if it somehow did, events for a connection that is
    /// not parked are ignored anyway.
    pub(super) fn unregister_conn(&self, conn: &Conn) {
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        if let Some(n) = &conn.notify {
            let _ = reg.deregister(&mut SourceFd(&n.as_raw_fd()));
        }
    }

    /// Dovecot's inotify instance for a client became readable.
    pub(super) fn notify_event(&mut self, key: u32) {
        if self
            .conns
            .get(key as usize)
            .is_some_and(|c| c.phase == Phase::Parked)
        {
            self.wake(key, WakeReason::Changed);
        }
    }

    /// Wake a parked connection for `reason` (a mailbox change, shutdown):
    /// any partial input already read travels with it.
    pub(super) fn wake(&mut self, key: u32, reason: WakeReason) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let input = conn.take_partial();
        let idle_running = conn.in_idle;
        self.wake_with(key, reason, input, idle_running);
    }

    /// Stop watching, and queue the connection for the tracker.
    pub(super) fn wake_with(
        &mut self,
        key: u32,
        reason: WakeReason,
        input: Vec<u8>,
        idle_running: bool,
    ) {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase != Phase::Parked {
            return;
        }
        let watch_idx = conn.take_watches();
        // The notify fd has done its job, but it stays open until the
        // connection leaves us: closing an inotify instance waits for the
        // kernel to retire its marks (milliseconds), which would delay the
        // return. Dovecot's imap-hibernate closes it at the same point.
        self.unregister_conn(&self.conns[key as usize]);
        let watch = watch_idx
            .iter()
            .filter_map(|&i| self.watches.path(i).map(PathBuf::from))
            .collect();
        self.leave_watches(&watch_idx);
        let give_up_after = match reason {
            WakeReason::Shutdown => GIVE_UP_AT_SHUTDOWN_MS,
            _ if !input.is_empty() => GIVE_UP_WITH_INPUT_MS,
            WakeReason::Changed => GIVE_UP_WITHOUT_INPUT_MS,
            _ => GIVE_UP_WITH_INPUT_MS,
        };
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.phase = Phase::Queued;
        conn.extra = Some(Box::new(Extra::Waking(Waking {
            reason,
            input,
            idle_running,
            give_up_at: now + give_up_after,
            attempts: 0,
            watch,
            master: None,
            woken_at: Some(self.event_at),
        })));
        conn.timer_gen = self.timers.new_gen();
        self.timers
            .schedule(now + give_up_after, key, conn.timer_gen);
        let serial = conn.serial;
        match reason {
            WakeReason::Done => self.stats.wake_done += 1,
            WakeReason::BadDone => self.stats.wake_bad_done += 1,
            WakeReason::Input => self.stats.wake_input += 1,
            WakeReason::Changed => self.stats.wake_changed += 1,
            WakeReason::Shutdown => self.stats.wake_shutdown += 1,
        }
        debug!("{}: woken ({reason:?})", self.who(key));
        self.return_queue.push_back((key, serial));
    }

    /// The next connection waiting for its turn, skipping queue entries
    /// that went stale (the connection left, or its slab key was reused).
    pub(super) fn next_queued(&mut self) -> Option<(u32, u32)> {
        while let Some((key, serial)) = self.return_queue.pop_front() {
            if self
                .conns
                .get(key as usize)
                .is_some_and(|c| c.serial == serial && c.phase == Phase::Queued)
            {
                return Some((key, serial));
            }
        }
        None
    }

    pub(super) fn leave_watches(&mut self, idx: &[u32]) {
        let conns = &self.conns;
        for &i in idx {
            self.watches.leave(i, |w| parked_in(conns, w));
        }
    }

    /// Take a connection out of the daemon, undoing everything it held:
    /// polling, watches, its imap-master link, its place in the tracker's
    /// window, its user. Every way a connection leaves goes through here.
    pub(super) fn remove_conn(&mut self, key: u32) -> Option<Conn> {
        let conn = self.conns.try_remove(key as usize)?;
        match conn.phase {
            Phase::Parked => {
                self.unregister_conn(&conn);
                self.leave_watches(&conn.watches());
            }
            Phase::InFlight if !self.cfg.dovecot => {
                self.tracker.in_flight = self.tracker.in_flight.saturating_sub(1);
            }
            _ => {}
        }
        if let Some(w) = conn.waking() {
            self.forget_master(w);
        }
        self.users.release(conn.user);
        self.report_capacity();
        Some(conn)
    }

    /// The tracker or imap-master took the connection: our copy closes.
    pub(super) fn finish_return(&mut self, key: u32, to: &str) {
        let who = self.who(key);
        if let Some(conn) = self.remove_conn(key) {
            debug!(
                "{who}: returned to {to} ({:?})",
                conn.waking().map(|w| w.reason)
            );
            self.stats.returned += 1;
        }
    }

    /// Try the return again after `delay`, or at the give-up deadline if
    /// that comes first (the timer then gives up).
    pub(super) fn retry_later(&mut self, key: u32, delay: Millis, now: Millis) {
        let gen = self.timers.new_gen();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let give_up_at = conn.waking().map_or(now, |w| w.give_up_at);
        conn.phase = Phase::Waiting;
        conn.timer_gen = gen;
        self.timers
            .schedule((now + delay).min(give_up_at), key, gen);
    }

    /// The connection is over: close it, tell the tracker, log why once.
    pub(super) fn drop_conn(&mut self, key: u32, reason: GoneReason, detail: &str) {
        let who = self.who(key);
        let Some(user) = self
            .conns
            .get(key as usize)
            .map(|c| self.users.name(c.user).to_owned())
        else {
            return;
        };
        let Some(conn) = self.remove_conn(key) else {
            return;
        };
        match reason {
            GoneReason::HungUp => {
                self.stats.hung_up += 1;
                info!("{who}: {detail}");
            }
            GoneReason::OutputFull => {
                self.stats.hung_up += 1;
                warn!("{who}: disconnected: {detail}");
            }
            GoneReason::GaveUp => {
                self.stats.gave_up += 1;
                warn!("{who}: disconnected with BYE: {detail}");
            }
        }
        // Dovecot has no such notice; its imap-master does not count clients.
        if !self.cfg.dovecot {
            self.tracker.tell_gone(Gone {
                id: conn.id(key),
                user,
                cookie: conn.cookie,
                reason,
                detail: detail.to_owned(),
            });
        }
    }

    /// The tracker did not take the connection back in time: say goodbye
    /// and close it for every holder (it may already sit in the tracker's
    /// socket queue).
    pub(super) fn give_up(&mut self, key: u32, why: &str) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        let _ = write_now(&conn.fd, BYE);
        let _ = socket::shutdown(conn.fd.as_raw_fd(), Shutdown::Both);
        self.drop_conn(key, GoneReason::GaveUp, why);
    }
}

/// Whether the watcher `(key, serial)` is still a parked connection (slab
/// keys are reused, serials are not).
pub(super) fn parked_in(conns: &slab::Slab<Conn>, (key, serial): Watcher) -> bool {
    conns
        .get(key as usize)
        .is_some_and(|c| c.serial == serial && c.phase == Phase::Parked)
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
