//! The park socket: mail processes hand over clients, operators ask for
//! statistics. Any malformed packet closes that one control connection
//! (with every descriptor it carried) and the daemon serves everyone else.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::errno::Errno;

use super::daemon::{
    Daemon, Shutdown, ACCEPT_PAUSE_MS, FIRST_CONN, FIRST_CONTROL, FIRST_NOTIFY, MAX_CONTROLS,
};
use super::parked::Conn;
use super::watches::WatchError;
use crate::proto::native::{self, Cookie, Message, Park, RecvError, RefuseKind, Role};
use crate::sys::{self, fdpass, Peer, SeqPacket};

/// A client arriving to be parked, however it came.
pub(super) struct Adopt<'a> {
    pub fd: OwnedFd,
    /// Dovecot's inotify instance for this client: readable means wake.
    pub notify: Option<OwnedFd>,
    pub user: &'a str,
    pub cookie: Cookie,
    pub tag: &'a str,
    pub in_idle: bool,
    pub keepalive_secs: u32,
    pub watch: &'a [std::path::PathBuf],
    pub state: &'a [u8],
    pub from_pid: i32,
}

pub(super) struct Control {
    sock: SeqPacket,
    peer: Peer,
    role: Option<Role>,
}

impl Control {
    fn who(&self) -> String {
        let role = match self.role {
            Some(r) => format!("{r:?}"),
            None => "peer".into(),
        };
        format!("{role} pid={} uid={}", self.peer.pid, self.peer.uid)
    }
}

impl Daemon {
    pub(super) fn accept_controls(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            if self.controls.len() >= MAX_CONTROLS {
                // Resumed by close_control once below 90%.
                warn!("{MAX_CONTROLS} control connections open; not accepting more for now");
                return;
            }
            let sock = match accept_next(self.listener.as_fd()) {
                Next::Conn(fd) => SeqPacket::from(fd),
                Next::Retry => continue,
                Next::Empty => return,
                Next::Failed(e) => return self.accept_failed("the park socket", &e),
            };
            let peer = match sock.peer() {
                Ok(p) => p,
                Err(e) => {
                    warn!("reading peer credentials: {e}");
                    continue;
                }
            };
            let entry = self.controls.vacant_entry();
            let token = Token(FIRST_CONTROL + entry.key());
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&sock.as_raw_fd()),
                token,
                Interest::READABLE,
            ) {
                warn!("registering a control connection: {e}");
                continue;
            }
            entry.insert(Control {
                sock,
                peer,
                role: None,
            });
            // Packets may have arrived before registration; edge-triggered
            // polling would not report them again.
            self.control_event(token.0 - FIRST_CONTROL);
        }
    }

    /// Dovecot's imap processes connecting to hand clients over.
    pub(super) fn accept_hibernates(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.hibernate_listener else {
                return;
            };
            if self.hibernating.len() >= MAX_CONTROLS {
                warn!("{MAX_CONTROLS} hand-offs in progress; not accepting more for now");
                return;
            }
            match accept_next(listener.as_fd()) {
                Next::Conn(sock) => {
                    let pid = sys::peer_pid(sock.as_fd());
                    self.accept_hibernate(sock, pid);
                }
                Next::Retry => continue,
                Next::Empty => return,
                Next::Failed(e) => return self.accept_failed("imap-hibernate", &e),
            }
        }
    }

    /// Out of descriptors: pause both listeners for a moment instead of
    /// spinning on the same error; anything else is logged and the
    /// listener waits for its next event.
    fn accept_failed(&mut self, which: &str, e: &io::Error) {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
        if matches!(errno, Errno::EMFILE | Errno::ENFILE) {
            warn!("accepting on {which}: {e}; pausing for {ACCEPT_PAUSE_MS} ms");
            self.accept_paused_until = Some(self.now() + ACCEPT_PAUSE_MS);
        } else {
            warn!("accepting on {which}: {e}");
        }
    }

    fn close_control(&mut self, key: usize) {
        if let Some(c) = self.controls.try_remove(key) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&c.sock.as_raw_fd()));
            if self.controls.len() + 1 == MAX_CONTROLS * 9 / 10 {
                self.accept_controls();
            }
        }
    }

    /// Send an answer; a peer that cannot take it is dropped.
    fn answer(&mut self, key: usize, msg: &Message) -> bool {
        let Some(c) = self.controls.get(key) else {
            return false;
        };
        match native::send(&c.sock, msg, None) {
            Ok(()) => true,
            Err(e) => {
                warn!("{}: cannot answer ({e}); closing", c.who());
                self.close_control(key);
                false
            }
        }
    }

    fn fail_control(&mut self, key: usize, reason: &str) {
        if let Some(c) = self.controls.get(key) {
            warn!("{}: {reason}; closing the connection", c.who());
            let _ = native::send(
                &c.sock,
                &Message::Error {
                    reason: reason.to_owned(),
                },
                None,
            );
        }
        self.close_control(key);
    }

    pub(super) fn control_event(&mut self, key: usize) {
        loop {
            let Some(c) = self.controls.get(key) else {
                return;
            };
            let incoming = match native::recv(&c.sock, &mut self.scratch) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(RecvError::Closed) => {
                    debug!("{}: closed", c.who());
                    return self.close_control(key);
                }
                Err(RecvError::Io(e)) => {
                    warn!("{}: {e}; closing", c.who());
                    return self.close_control(key);
                }
                Err(RecvError::Proto(e)) => return self.fail_control(key, &e.to_string()),
            };
            if !self.control_message(key, incoming.msg, incoming.fd) {
                return;
            }
        }
    }

    /// Handle one message; false when the connection was closed.
    fn control_message(&mut self, key: usize, msg: Message, fd: Option<OwnedFd>) -> bool {
        let Some(c) = self.controls.get_mut(key) else {
            return false;
        };
        match (c.role, msg) {
            (None, Message::Hello { role, .. }) => {
                if role == Role::MailProcess && self.cfg.dovecot {
                    self.fail_control(
                        key,
                        "this imap-idle runs in Dovecot mode: it parks clients of Dovecot only",
                    );
                    return false;
                }
                if !matches!(role, Role::MailProcess | Role::Admin) {
                    self.fail_control(key, &format!("role {role:?} does not park connections"));
                    return false;
                }
                c.role = Some(role);
                debug!("{}: connected", c.who());
                let hello = Message::Hello {
                    role: Role::Idle,
                    pid: std::process::id(),
                };
                self.answer(key, &hello)
            }
            (None, _) => {
                self.fail_control(key, "the first message must be Hello");
                false
            }
            (Some(Role::MailProcess), Message::Park(park)) => {
                let Some(fd) = fd else {
                    // native::recv guarantees the fd; stay defensive anyway.
                    self.fail_control(key, "Park without a descriptor");
                    return false;
                };
                let peer = c.peer;
                let (answer, parked) = self.park(park, fd, peer);
                let delivered = self.answer(key, &answer);
                match parked {
                    // Input may have arrived during the hand-off; edges are
                    // not repeated, so look now.
                    Some(k) if delivered => self.client_event(k),
                    // The mail process never heard "Parked": it still serves
                    // the client, so we must not.
                    Some(k) => self.unpark_unconfirmed(k),
                    None => {}
                }
                delivered
            }
            (Some(_), Message::StatsRequest) => {
                let stats = Message::Stats(self.current_stats());
                self.answer(key, &stats)
            }
            (Some(Role::Admin), Message::Describe { query, user }) => {
                let pieces = native::chunks(self.describe(user.as_deref()));
                let n = pieces.len();
                pieces.into_iter().enumerate().all(|(i, conns)| {
                    let last = i + 1 == n;
                    self.answer(key, &Message::Described { query, conns, last })
                })
            }
            (Some(role), other) => {
                let name = format!("{other:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("?");
                self.fail_control(key, &format!("unexpected {name} from a {role:?}"));
                false
            }
        }
    }

    /// Take over a client for a mail process. Returns the answer and,
    /// when parked, the key.
    fn park(&mut self, park: Park, fd: OwnedFd, peer: Peer) -> (Message, Option<u32>) {
        let adopted = self.adopt(Adopt {
            fd,
            notify: None,
            user: &park.user,
            cookie: park.cookie,
            tag: &park.tag,
            in_idle: park.in_idle,
            keepalive_secs: park.keepalive_secs,
            watch: &park.watch,
            state: &park.state,
            from_pid: peer.pid,
        });
        match adopted {
            Ok(key) => {
                let id = self.conns[key as usize].id(key);
                (Message::Parked { id }, Some(key))
            }
            Err((kind, reason)) => (Message::Refused { kind, reason }, None),
        }
    }

    /// Make a client ours: check it, watch its paths, poll it, schedule
    /// its keepalive. Shared by every way a client arrives.
    pub(super) fn adopt(&mut self, a: Adopt<'_>) -> Result<u32, (RefuseKind, String)> {
        let refused = |d: &mut Daemon, kind, reason: String| {
            d.stats.refused += 1;
            info!(
                "user={}: park refused from pid {}: {reason}",
                a.user, a.from_pid
            );
            Err((kind, reason))
        };
        if self.shutdown != Shutdown::Running {
            return refused(
                self,
                RefuseKind::ShuttingDown,
                "imap-idle is shutting down".into(),
            );
        }
        if self.conns.len() >= self.max_parked {
            let why = format!(
                "imap-idle is full ({} connections parked)",
                self.conns.len()
            );
            return refused(self, RefuseKind::Full, why);
        }
        if let Err(why) = sys::check_stream_socket(&a.fd) {
            return refused(self, RefuseKind::BadFd, why.into());
        }
        let key = self.conns.vacant_key() as u32;
        self.next_serial = self.next_serial.wrapping_add(1);
        let serial = self.next_serial;
        let mut watches = Vec::with_capacity(a.watch.len());
        let mut failed = None;
        for path in a.watch {
            match self.watches.add(path, (key, serial)) {
                Ok(idx) => watches.push(idx),
                Err(e) => {
                    let kind = match e {
                        WatchError::Limit => RefuseKind::WatchLimit,
                        WatchError::Path(..) => RefuseKind::BadWatch,
                    };
                    failed = Some((kind, e.to_string()));
                    break;
                }
            }
        }
        if failed.is_none() {
            if let Err(e) = self.register_conn(key, &a.fd, a.notify.as_ref()) {
                failed = Some((
                    RefuseKind::BadFd,
                    format!("cannot poll the descriptor: {e}"),
                ));
            }
        }
        if let Some((kind, reason)) = failed {
            for &idx in &watches {
                self.watches.leave(idx, |_| true);
            }
            return refused(self, kind, reason);
        }
        let now = self.now();
        let user = self.users.intern(a.user);
        let mut conn = Conn::new(
            a.fd,
            serial,
            user,
            a.keepalive_secs,
            (now / 1000) as u32,
            a.in_idle,
            a.cookie,
            &watches,
            a.tag,
            a.state,
        );
        conn.notify = a.notify;
        let inserted = self.conns.insert(conn) as u32;
        debug_assert_eq!(inserted, key);
        self.schedule_keepalive(key, now);
        self.stats.parks += 1;
        debug!(
            "{}: parked from pid {} ({} watches{}, keepalive {}s)",
            self.who(key),
            a.from_pid,
            watches.len(),
            if self.conns[key as usize].notify.is_some() {
                ", notify fd"
            } else {
                ""
            },
            a.keepalive_secs
        );
        Ok(key)
    }

    fn register_conn(&self, key: u32, fd: &OwnedFd, notify: Option<&OwnedFd>) -> io::Result<()> {
        let reg = self.poll.registry();
        sys::set_nonblocking(fd.as_fd(), true)?;
        reg.register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(FIRST_CONN + key as usize),
            Interest::READABLE,
        )?;
        if let Some(n) = notify {
            let r = sys::set_nonblocking(n.as_fd(), true).and_then(|()| {
                reg.register(
                    &mut SourceFd(&n.as_raw_fd()),
                    Token(FIRST_NOTIFY + key as usize),
                    Interest::READABLE,
                )
            });
            if let Err(e) = r {
                let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undo a park whose confirmation could not be delivered: the mail
    /// process keeps the client, so we close our copy without a word.
    fn unpark_unconfirmed(&mut self, key: u32) {
        if !self.conns.contains(key as usize) {
            return;
        }
        warn!(
            "{}: park not confirmed to the mail process; dropped",
            self.who(key)
        );
        self.stats.parks -= 1;
        self.remove_conn(key);
    }
}

enum Next {
    Conn(OwnedFd),
    /// Interrupted, or the peer left before we accepted: try again.
    Retry,
    /// Nothing more to accept for now.
    Empty,
    Failed(io::Error),
}

fn accept_next(listener: BorrowedFd<'_>) -> Next {
    match fdpass::accept(listener) {
        Ok(fd) => Next::Conn(fd),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock => Next::Empty,
            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => Next::Retry,
            _ => Next::Failed(e),
        },
    }
}
