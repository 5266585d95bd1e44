//! The reference mail process: takes clients from imap-tracker, serves
//! them from Maildir, parks those idle for `--park-after` in imap-idle,
//! and restores the ones imap-idle hands back. A client's input waits
//! while [`MAX_QUEUED_OUTPUT`] of its answers are unread, and a client that
//! takes none of them for `--stall-timeout` is disconnected (see `bounds`).

mod park;
mod relink;
mod restore;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::bounds::MAX_QUEUED_OUTPUT;
use super::session::{Session, CAPABILITY};
use crate::mail::{FromTracker, IdlePool, Redial, TrackerLink};
use crate::proto::native::{Assign, Assignment, Release};
use park::dirs_changed;
use restore::restore;

const TRACKER: Token = Token(0);
const FIRST_CLIENT: usize = 16;
const TICK: Duration = Duration::from_millis(250);

pub struct MailConfig {
    pub tracker_socket: PathBuf,
    /// Every imap-idle's park socket: a user's parks go to its home daemon.
    pub idle_sockets: Vec<PathBuf>,
    /// `%u` is the user name.
    pub maildir: String,
    pub park_after: Option<Duration>,
    pub keepalive_secs: u32,
    pub capacity: u32,
    /// Over the output cap with nothing taken this long: disconnected.
    pub stall_timeout: Duration,
}

struct Client {
    /// The uid the tracker gave the user, re-reported after a restart.
    uid: u32,
    stream: TcpStream,
    session: Session,
    writable: bool,
    /// Modification times of the watched directories at the last sync.
    seen: Vec<Option<SystemTime>>,
    /// Last time parking was tried and refused.
    park_refused_at: Option<Instant>,
    /// Last time the client took some output or had room under the cap.
    room_at: Instant,
    /// Over the output cap, its input unread (logged once per episode).
    throttled: bool,
}

struct Mail {
    cfg: MailConfig,
    poll: Poll,
    /// None while the tracker is away: clients stay, `relink` tries again.
    tracker: Option<TrackerLink>,
    redial: Redial,
    uid: u32,
    idle: IdlePool,
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
    let idle = IdlePool::new(cfg.idle_sockets.clone());
    let mut m = Mail {
        cfg,
        poll,
        tracker: Some(tracker),
        redial: Redial::default(),
        uid,
        idle,
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
                self.relink()?;
                self.tick();
                next_tick = Instant::now() + TICK;
            }
        }
    }

    fn tracker_event(&mut self) -> Result<(), String> {
        loop {
            let Some(tracker) = &mut self.tracker else {
                return Ok(());
            };
            match tracker.recv() {
                Ok(Some(FromTracker::Assigned(a, fd))) => self.assigned(*a, fd),
                Ok(Some(FromTracker::Describe { query, user })) => {
                    let conns = self
                        .clients
                        .iter()
                        .filter(|(_, c)| user.as_deref().is_none_or(|u| u == c.session.user))
                        .map(|(_, c)| c.session.info())
                        .collect();
                    let sent = self.tracker.as_ref().map(|t| t.described(query, conns));
                    if let Some(Err(e)) = sent {
                        warn!("answering who: {e}");
                    }
                }
                Ok(None) => return Ok(()),
                // Our clients stay with us; the tracker (restarted) hears
                // of them again when we re-register.
                Err(e) => {
                    self.tracker_lost(&e.to_string());
                    return Ok(());
                }
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
            uid: a.uid,
            stream,
            session,
            writable: true,
            seen: Vec::new(),
            park_refused_at: None,
            room_at: Instant::now(),
            throttled: false,
        });
        self.remember_dirs(key);
        self.client_event(key);
    }

    fn release(&mut self, conn: u64, user: &str, how: Release) {
        // While the tracker is away it hears nothing; its successor learns
        // what we still serve when we re-register.
        let told = self.tracker.as_ref().map(|t| t.released(conn, how));
        if let Some(Err(e)) = told {
            warn!("user={user} conn={conn}: cannot tell the tracker it left: {e}");
        }
    }

    /// Write what we can, answer what the client sent, read more: until
    /// the socket has nothing more, or its answers pile up unread. Then its
    /// input waits in the socket, and a writable event (the client read
    /// some) brings us back here.
    fn client_event(&mut self, key: usize) {
        loop {
            self.flush(key);
            if !self.may_read(key) {
                return;
            }
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            // Stops at the cap too, leaving the rest in `inbuf`.
            c.session.run();
            if !self.may_read(key) {
                // Write the answers first; the loop then stops.
                continue;
            }
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            match c.stream.read(&mut self.buf) {
                Ok(n) if n > 0 => c.session.inbuf.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.flush(key),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Hung up (or failed): what it sent before is answered
                // above, and written as far as it goes.
                Ok(_) | Err(_) => {
                    self.flush(key);
                    return self.close(key, "client hung up");
                }
            }
        }
    }

    /// Whether the client's input may be taken now: not once its session
    /// ends, nor while MAX_QUEUED_OUTPUT of answers wait unread.
    fn may_read(&mut self, key: usize) -> bool {
        let Some(c) = self.clients.get_mut(key) else {
            return false;
        };
        let over = c.session.out.len() >= MAX_QUEUED_OUTPUT;
        if over && !c.throttled {
            let s = &c.session;
            info!(
                "user={} conn={} ({}): {} bytes of answers unread; its input waits until it reads them",
                s.user,
                s.conn,
                s.remote,
                s.out.len()
            );
        }
        c.throttled = over;
        if !over {
            c.room_at = Instant::now();
        }
        !c.session.closing && !over
    }

    /// The clients over the output cap: write to them again (a slow reader
    /// frees room in its socket long before the kernel calls it writable,
    /// and any byte it takes is progress), and resume those back under the
    /// cap. Disconnect the ones that took nothing for the stall timeout:
    /// slow is fine, stopped is not.
    fn throttled(&mut self) {
        let limit = self.cfg.stall_timeout;
        let over: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.out.len() >= MAX_QUEUED_OUTPUT)
            .map(|(k, _)| k)
            .collect();
        for key in over {
            if let Some(c) = self.clients.get_mut(key) {
                c.writable = true;
            }
            self.client_event(key);
            let Some(c) = self.clients.get(key) else {
                continue;
            };
            if c.session.out.len() >= MAX_QUEUED_OUTPUT && c.room_at.elapsed() >= limit {
                let s = &c.session;
                warn!(
                    "user={} conn={} ({}): {} bytes of answers unread, none taken for {} s; disconnecting",
                    s.user,
                    s.conn,
                    s.remote,
                    s.out.len(),
                    limit.as_secs()
                );
                self.close(key, "stalled with answers unread");
            }
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
                    c.room_at = Instant::now();
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
        self.throttled();
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
                    // A stall is counted from when its queue had room.
                    if c.session.out.len() < MAX_QUEUED_OUTPUT {
                        c.room_at = Instant::now();
                    }
                    c.session.catch_up();
                }
                self.remember_dirs(key);
                self.flush(key);
            }
            self.maybe_park(key);
        }
    }
}
