//! The reference mail process: takes clients from imap-tracker, serves
//! them from Maildir, parks those idle for `--park-after` in imap-idle,
//! and restores the ones imap-idle hands back.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::session::{Session, CAPABILITY};
use crate::mail::{FromTracker, IdleLink, NotParked, Parking, TrackerLink};
use crate::proto::native::{Assign, Assignment, Release, Return, WakeReason};
use crate::proto::state::SessionState;

const TRACKER: Token = Token(0);
const FIRST_CLIENT: usize = 16;
const TICK: Duration = Duration::from_millis(250);

pub struct MailConfig {
    pub tracker_socket: PathBuf,
    pub idle_socket: PathBuf,
    /// `%u` is the user name.
    pub maildir: String,
    pub park_after: Option<Duration>,
    pub keepalive_secs: u32,
    pub capacity: u32,
}

struct Client {
    stream: TcpStream,
    session: Session,
    writable: bool,
    /// Modification times of the watched directories at the last sync.
    seen: Vec<Option<SystemTime>>,
    /// Last time parking was tried and refused.
    park_refused_at: Option<Instant>,
}

struct Mail {
    cfg: MailConfig,
    poll: Poll,
    tracker: TrackerLink,
    idle: Option<IdleLink>,
    clients: Slab<Client>,
    buf: Vec<u8>,
}

pub fn run(cfg: MailConfig) -> Result<(), String> {
    let uid = nix::unistd::getuid().as_raw();
    let tracker = TrackerLink::register(&cfg.tracker_socket, uid, cfg.capacity)
        .map_err(|e| format!("registering with {}: {e}", cfg.tracker_socket.display()))?;
    let poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(
            &mut SourceFd(&tracker.as_raw_fd()),
            TRACKER,
            Interest::READABLE,
        )
        .map_err(|e| e.to_string())?;
    info!(
        "mail process pid={} registered with {} (capacity {})",
        std::process::id(),
        cfg.tracker_socket.display(),
        cfg.capacity
    );
    let mut m = Mail {
        cfg,
        poll,
        tracker,
        idle: None,
        clients: Slab::new(),
        buf: vec![0; 16 * 1024],
    };
    m.run()
}

impl Mail {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("polling: {e}"));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    TRACKER => self.tracker_event()?,
                    Token(t) if t >= FIRST_CLIENT => {
                        let key = t - FIRST_CLIENT;
                        if ev.is_writable() {
                            if let Some(c) = self.clients.get_mut(key) {
                                c.writable = true;
                            }
                        }
                        self.client_event(key);
                    }
                    _ => {}
                }
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + TICK;
            }
        }
    }

    fn tracker_event(&mut self) -> Result<(), String> {
        loop {
            match self.tracker.recv() {
                Ok(Some(FromTracker::Assigned(a, fd))) => self.assigned(*a, fd),
                Ok(Some(FromTracker::Describe { query, user })) => {
                    let conns = self
                        .clients
                        .iter()
                        .filter(|(_, c)| user.as_deref().is_none_or(|u| u == c.session.user))
                        .map(|(_, c)| c.session.info())
                        .collect();
                    if let Err(e) = self.tracker.described(query, conns) {
                        warn!("answering who: {e}");
                    }
                }
                Ok(None) => return Ok(()),
                // Without the tracker nobody can route to us or hear our
                // releases: stop, and our clients go with us.
                Err(e) => return Err(format!("tracker link: {e}")),
            }
        }
    }

    fn user_root(&self, user: &str) -> PathBuf {
        PathBuf::from(self.cfg.maildir.replace("%u", user))
    }

    fn assigned(&mut self, a: Assign, fd: OwnedFd) {
        let stream = TcpStream::from(fd);
        if let Err(e) = stream.set_nonblocking(true) {
            warn!("user={} conn={}: {e}", a.user, a.conn);
            return self.release(a.conn, &a.user, Release::Closed);
        }
        let mut session = Session::new(
            a.conn,
            &a.user,
            a.cookie,
            &a.remote,
            self.user_root(&a.user),
        );
        session.keepalive_secs = self.cfg.keepalive_secs;
        match a.how {
            Assignment::Login { tag, input } => {
                debug!(
                    "user={} conn={}: logged in from {}",
                    a.user, a.conn, a.remote
                );
                session.out.extend_from_slice(
                    format!("{tag} OK [CAPABILITY {CAPABILITY}] Logged in.\r\n").as_bytes(),
                );
                session.inbuf = input;
            }
            Assignment::Restore(ret) => restore(&mut session, &ret),
        }
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let token = Token(FIRST_CLIENT + key);
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("user={} conn={}: registering: {e}", a.user, a.conn);
            return self.release(a.conn, &a.user, Release::Closed);
        }
        entry.insert(Client {
            stream,
            session,
            writable: true,
            seen: Vec::new(),
            park_refused_at: None,
        });
        self.remember_dirs(key);
        self.client_event(key);
    }

    fn release(&mut self, conn: u64, user: &str, how: Release) {
        if let Err(e) = self.tracker.released(conn, how) {
            warn!("user={user} conn={conn}: cannot tell the tracker it left: {e}");
        }
    }

    /// Read what the client sent, answer it, write what we can.
    fn client_event(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let mut eof = false;
        loop {
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.session.inbuf.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        c.session.run();
        self.flush(key);
        if eof {
            self.close(key, "client hung up");
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        while c.writable && !c.session.out.is_empty() {
            match c.stream.write(&c.session.out) {
                Ok(n) => {
                    c.session.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("write failed: {e}");
                    return self.close(key, &why);
                }
            }
        }
        let done = c.session.closing && c.session.out.is_empty();
        if done {
            self.close(key, "session ended");
        }
    }

    fn close(&mut self, key: usize, why: &str) {
        let Some(c) = self.clients.try_remove(key) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
        let s = &c.session;
        debug!(
            "user={} conn={} ({}): closed ({why})",
            s.user, s.conn, s.remote
        );
        self.release(c.session.conn, &c.session.user, Release::Closed);
    }

    /// Idle sessions: tell them about mailbox changes, park the ones idle
    /// long enough.
    fn tick(&mut self) {
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.idle.is_some())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let changed = self.clients.get(key).is_some_and(dirs_changed);
            if changed {
                if let Some(c) = self.clients.get_mut(key) {
                    c.session.catch_up();
                }
                self.remember_dirs(key);
                self.flush(key);
            }
            self.maybe_park(key);
        }
    }

    fn remember_dirs(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key) {
            c.seen = watched(&c.session).iter().map(|p| mtime(p)).collect();
        }
    }

    fn maybe_park(&mut self, key: usize) {
        let Some(after) = self.cfg.park_after else {
            return;
        };
        let Some(c) = self.clients.get(key) else {
            return;
        };
        let s = &c.session;
        let ready = s.idle.is_some()
            && s.inbuf.is_empty()
            && s.out.is_empty()
            && !s.closing
            && s.since.elapsed() >= after
            && c.park_refused_at.is_none_or(|at| at.elapsed() >= after);
        if !ready {
            return;
        }
        // Last look at the mailbox: a change the client has not been told
        // about yet would otherwise only be noticed at the next one. The
        // directories' times are taken first, to catch what lands after.
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let paths = watched(&c.session);
        let before: Vec<Option<SystemTime>> = paths.iter().map(|p| mtime(p)).collect();
        c.session.catch_up();
        if !c.session.out.is_empty() || c.session.closing {
            self.remember_dirs(key);
            return self.flush(key);
        }
        let s = &c.session;
        let Some(state) = s.state() else {
            return;
        };
        let Ok(dup) = c.stream.try_clone() else {
            return;
        };
        let park = Parking::idle(&s.user, s.cookie, &state);
        let (conn, user, mailbox) = (s.conn, s.user.clone(), state.mailbox.clone());
        if self.idle.is_none() {
            match IdleLink::connect(&self.cfg.idle_socket) {
                Ok(l) => self.idle = Some(l),
                Err(e) => {
                    warn!(
                        "cannot reach imap-idle at {}: {e}",
                        self.cfg.idle_socket.display()
                    );
                    return self.park_refused(key);
                }
            }
        }
        let Some(idle) = &mut self.idle else {
            return;
        };
        match idle.park(OwnedFd::from(dup), &park) {
            Ok(idle_id) => {
                // imap-idle owns the client now; our descriptor goes.
                if let Some(c) = self.clients.try_remove(key) {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
                }
                debug!("user={user} conn={conn}: parked in imap-idle as {idle_id}");
                self.release(conn, &user, Release::Parked { idle_id, mailbox });
                // imap-idle watches from before its answer. A change between
                // our last look and then would go unnoticed: poke a watched
                // directory so it wakes the client (at worst needlessly).
                let after: Vec<Option<SystemTime>> = paths.iter().map(|p| mtime(p)).collect();
                if after != before {
                    if let Some(dir) = paths.first() {
                        poke(dir);
                    }
                }
            }
            Err(NotParked::Kept(kept)) => {
                if !idle.is_open() {
                    self.idle = None;
                }
                info!(
                    "user={user} conn={conn}: not parked ({}); keeping it",
                    kept.reason
                );
                self.park_refused(key);
            }
            Err(NotParked::Lost { reason }) => {
                // imap-idle may have it: serving it on could mean two
                // processes serve one client, so we let it go.
                self.idle = None;
                warn!("user={user} conn={conn}: park {reason}; closing our copy");
                if let Some(c) = self.clients.try_remove(key) {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
                }
                self.release(conn, &user, Release::Closed);
            }
        }
    }

    fn park_refused(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key) {
            c.park_refused_at = Some(Instant::now());
        }
    }
}

/// Rebuild a session from a client imap-idle handed back, and act on why
/// it woke.
fn restore(session: &mut Session, ret: &Return) {
    let park = &ret.park;
    let state = SessionState::from_park_blob(
        &park.state,
        &park.user,
        &park.tag,
        &park.watch,
        park.keepalive_secs,
    );
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "user={} conn={}: damaged state: {e}",
                park.user, session.conn
            );
            return session.bye("Session state lost; please reconnect.");
        }
    };
    if let Err(e) = session.restore(&state) {
        info!(
            "user={} conn={}: cannot restore: {e}",
            park.user, session.conn
        );
        return session.bye(&format!("Cannot resume the session: {e}."));
    }
    if session.closing {
        return;
    }
    debug!(
        "user={} conn={}: restored after {} s parked ({:?})",
        park.user, session.conn, ret.parked_secs, ret.reason
    );
    let tag = &park.tag;
    match ret.reason {
        WakeReason::Done => {
            session
                .out
                .extend_from_slice(format!("{tag} OK Idle completed.\r\n").as_bytes());
            session.inbuf = ret.input.clone();
        }
        WakeReason::BadDone => {
            // The first line is the one that was not DONE: answered, dropped.
            session
                .out
                .extend_from_slice(format!("{tag} BAD Expected DONE.\r\n").as_bytes());
            let mut input = ret.input.clone();
            let cut = input
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |i| i + 1);
            input.drain(..cut);
            session.inbuf = input;
        }
        WakeReason::Input => session.inbuf = ret.input.clone(),
        WakeReason::Changed | WakeReason::Shutdown => {
            if ret.idle_running {
                session.idle = Some(tag.clone());
            }
            session.inbuf = ret.input.clone();
        }
    }
}

fn watched(s: &Session) -> Vec<PathBuf> {
    s.selected
        .as_ref()
        .map(|sel| sel.mb.watch_paths())
        .unwrap_or_default()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Touch a directory's times: its watchers see IN_ATTRIB (setting both
/// times is what the kernel reports as an attribute change).
fn poke(dir: &Path) {
    let now = SystemTime::now();
    let times = std::fs::FileTimes::new()
        .set_accessed(now)
        .set_modified(now);
    let touched = std::fs::File::open(dir).and_then(|f| f.set_times(times));
    if let Err(e) = touched {
        warn!("touching {} to wake its watchers: {e}", dir.display());
    }
}

fn dirs_changed(c: &Client) -> bool {
    let now: Vec<Option<SystemTime>> = watched(&c.session).iter().map(|p| mtime(p)).collect();
    now != c.seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poke_wakes_a_directory_watcher() {
        let t = tempfile::tempdir().unwrap();
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        ino.add_watch(t.path(), AddWatchFlags::IN_ATTRIB).unwrap();
        poke(t.path());
        let events = ino.read_events().unwrap();
        assert!(events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_ATTRIB)));
    }
}
