//! The park socket: mail processes hand over clients, operators ask for
//! statistics. Any malformed packet closes that one control connection
//! (with every descriptor it carried) and the daemon serves everyone else.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::errno::Errno;

use super::daemon::{Daemon, Shutdown, ACCEPT_PAUSE_MS, FIRST_CONN, FIRST_CONTROL, MAX_CONTROLS};
use super::parked::Conn;
use super::watches::WatchError;
use crate::proto::native::{self, Message, Park, RecvError, RefuseKind, Role};
use crate::sys::{self, Peer, SeqPacket};

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
            let sock = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e)
                    if matches!(
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        Errno::EMFILE | Errno::ENFILE
                    ) =>
                {
                    warn!("accepting: {e}; pausing for {ACCEPT_PAUSE_MS} ms");
                    self.accept_paused_until = Some(self.now() + ACCEPT_PAUSE_MS);
                    return;
                }
                Err(e) => {
                    warn!("accepting: {e}");
                    return;
                }
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
            (Some(role), other) => {
                let name = format!("{other:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("?");
                self.fail_control(key, &format!("unexpected {name} from a {role:?}"));
                false
            }
        }
    }

    /// Take over a client. Returns the answer and, when parked, its key.
    fn park(&mut self, park: Park, fd: OwnedFd, peer: Peer) -> (Message, Option<u32>) {
        let refuse = |kind, reason: String| (Message::Refused { kind, reason }, None);
        if self.shutdown != Shutdown::Running {
            return refuse(
                RefuseKind::ShuttingDown,
                "imap-idle is shutting down".into(),
            );
        }
        if self.conns.len() >= self.max_parked {
            self.stats.refused += 1;
            info!(
                "user={}: park refused: full ({} parked)",
                park.user,
                self.conns.len()
            );
            return refuse(
                RefuseKind::Full,
                format!(
                    "imap-idle is full ({} connections parked)",
                    self.conns.len()
                ),
            );
        }
        if let Err(why) = sys::check_stream_socket(&fd) {
            self.stats.refused += 1;
            warn!(
                "user={}: park refused from pid {}: {why}",
                park.user, peer.pid
            );
            return refuse(RefuseKind::BadFd, why.into());
        }
        let key = self.conns.vacant_key() as u32;
        self.next_serial = self.next_serial.wrapping_add(1);
        let serial = self.next_serial;
        let mut watches = Vec::with_capacity(park.watch.len());
        for path in &park.watch {
            match self.watches.add(path, (key, serial)) {
                Ok(idx) => watches.push(idx),
                Err(e) => {
                    for &idx in &watches {
                        self.watches.leave(idx, |_| true);
                    }
                    self.stats.refused += 1;
                    info!("user={}: park refused: {e}", park.user);
                    let kind = match e {
                        WatchError::Limit => RefuseKind::WatchLimit,
                        WatchError::Path(..) => RefuseKind::BadWatch,
                    };
                    return refuse(kind, e.to_string());
                }
            }
        }
        let registered = sys::set_nonblocking(fd.as_fd(), true).and_then(|()| {
            self.poll.registry().register(
                &mut SourceFd(&fd.as_raw_fd()),
                Token(FIRST_CONN + key as usize),
                Interest::READABLE,
            )
        });
        if let Err(e) = registered {
            for &idx in &watches {
                self.watches.leave(idx, |_| true);
            }
            self.stats.refused += 1;
            warn!("user={}: park refused: {e}", park.user);
            return refuse(
                RefuseKind::BadFd,
                format!("cannot poll the descriptor: {e}"),
            );
        }
        let now = self.now();
        let user = self.users.intern(&park.user);
        let conn = Conn::new(
            fd,
            serial,
            user,
            park.keepalive_secs,
            (now / 1000) as u32,
            park.in_idle,
            park.cookie,
            &watches,
            &park.tag,
            &park.state,
        );
        let id = conn.id(key);
        let inserted = self.conns.insert(conn) as u32;
        debug_assert_eq!(inserted, key);
        self.schedule_keepalive(key, now);
        self.stats.parks += 1;
        debug!(
            "{}: parked from pid {} ({} watches, keepalive {}s)",
            self.who(key),
            peer.pid,
            watches.len(),
            park.keepalive_secs
        );
        (Message::Parked { id }, Some(key))
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
        let conn = self.conns.remove(key as usize);
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        self.leave_watches(&conn.watches());
        self.users.release(conn.user);
    }
}
