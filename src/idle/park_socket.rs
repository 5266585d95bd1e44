//! The park socket adapter: mail processes hand over clients, operators
//! ask for statistics and `who`. Any malformed packet closes that one
//! control connection (with every descriptor it carried) and the daemon
//! serves everyone else.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use slab::Slab;

use super::accept::{self, Next};
use super::clients::{Clients, IdleCore, Incoming};
use super::inotify::Inotify;
use super::tokens::{token, Source};
use crate::proto::native::{self, Message, Park, RecvError, Role, MAX_PACKET};
use crate::sys::{Peer, SeqPacket};

/// Control connections (mail processes, admin tools) at most; accepting
/// pauses at this count and resumes below 90% of it.
pub const MAX_CONTROLS: usize = 512;

struct Control {
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

/// What the park socket needs from the rest of the daemon for one event.
pub struct Held<'a> {
    pub core: &'a mut IdleCore,
    pub clients: &'a mut Clients,
    pub inotify: &'a mut Inotify,
    pub reg: &'a Registry,
    pub now: Instant,
}

pub struct ParkSocket {
    listener: SeqPacket,
    controls: Slab<Control>,
    /// Dovecot mode: mail processes may not park here.
    dovecot: bool,
    /// A close took us below 90% of the cap: accepting may resume.
    resume: bool,
    scratch: Box<[u8]>,
}

impl ParkSocket {
    pub fn new(listener: SeqPacket, dovecot: bool) -> ParkSocket {
        ParkSocket {
            listener,
            controls: Slab::new(),
            dovecot,
            resume: false,
            scratch: vec![0; MAX_PACKET + 1].into_boxed_slice(),
        }
    }

    /// Accept what waits. `Err` carries the error that should pause
    /// accepting (out of descriptors).
    pub fn accept(&mut self, h: &mut Held<'_>) -> Result<(), io::Error> {
        loop {
            if self.controls.len() >= MAX_CONTROLS {
                // Resumed by close once below 90%.
                warn!("{MAX_CONTROLS} control connections open; not accepting more for now");
                return Ok(());
            }
            let sock = match accept::next(self.listener.as_fd()) {
                Next::Conn(fd) => SeqPacket::from(fd),
                Next::Retry => continue,
                Next::Empty => return Ok(()),
                Next::Pause(e) => return Err(e),
                Next::Failed(e) => {
                    warn!("accepting on the park socket: {e}");
                    return Ok(());
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
            let key = entry.key();
            if let Err(e) = h.reg.register(
                &mut SourceFd(&sock.as_raw_fd()),
                token(Source::Control(key)),
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
            self.event(key, h);
        }
    }

    fn close(&mut self, key: usize, reg: &Registry) {
        if let Some(c) = self.controls.try_remove(key) {
            let _ = reg.deregister(&mut SourceFd(&c.sock.as_raw_fd()));
            if self.controls.len() + 1 == MAX_CONTROLS * 9 / 10 {
                self.resume = true;
            }
        }
    }

    /// Send an answer; a peer that cannot take it is dropped.
    fn answer(&mut self, key: usize, msg: &Message, reg: &Registry) -> bool {
        let Some(c) = self.controls.get(key) else {
            return false;
        };
        match native::send(&c.sock, msg, None) {
            Ok(()) => true,
            Err(e) => {
                warn!("{}: cannot answer ({e}); closing", c.who());
                self.close(key, reg);
                false
            }
        }
    }

    fn fail(&mut self, key: usize, reason: &str, reg: &Registry) {
        if let Some(c) = self.controls.get(key) {
            warn!("{}: {reason}; closing the connection", c.who());
            let msg = Message::Error {
                reason: reason.to_owned(),
            };
            let _ = native::send(&c.sock, &msg, None);
        }
        self.close(key, reg);
    }

    /// A control connection is readable. Returns whether accepting should
    /// resume (a connection closed below the cap).
    pub fn event(&mut self, key: usize, h: &mut Held<'_>) -> bool {
        while let Some(c) = self.controls.get(key) {
            let incoming = match native::recv(&c.sock, &mut self.scratch) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(RecvError::Closed) => {
                    debug!("{}: closed", c.who());
                    self.close(key, h.reg);
                    break;
                }
                Err(RecvError::Io(e)) => {
                    warn!("{}: {e}; closing", c.who());
                    self.close(key, h.reg);
                    break;
                }
                Err(RecvError::Proto(e)) => {
                    self.fail(key, &e.to_string(), h.reg);
                    break;
                }
            };
            if !self.message(key, incoming.msg, incoming.fd, h) {
                break;
            }
        }
        std::mem::take(&mut self.resume)
    }

    /// Handle one message; false when the connection was closed.
    fn message(&mut self, key: usize, msg: Message, fd: Option<OwnedFd>, h: &mut Held<'_>) -> bool {
        let Some(c) = self.controls.get_mut(key) else {
            return false;
        };
        match (c.role, msg) {
            (None, Message::Hello { role, .. }) => {
                if role == Role::MailProcess && self.dovecot {
                    self.fail(
                        key,
                        "this imap-idle runs in Dovecot mode: it parks clients of Dovecot only",
                        h.reg,
                    );
                    return false;
                }
                if !matches!(role, Role::MailProcess | Role::Admin) {
                    let reason = format!("role {role:?} does not park connections");
                    self.fail(key, &reason, h.reg);
                    return false;
                }
                c.role = Some(role);
                debug!("{}: connected", c.who());
                let hello = Message::Hello {
                    role: Role::Idle,
                    pid: std::process::id(),
                };
                self.answer(key, &hello, h.reg)
            }
            (None, _) => {
                self.fail(key, "the first message must be Hello", h.reg);
                false
            }
            (Some(Role::MailProcess), Message::Park { req, park }) => {
                let Some(fd) = fd else {
                    // native::recv guarantees the fd; stay defensive anyway.
                    self.fail(key, "Park without a descriptor", h.reg);
                    return false;
                };
                let pid = c.peer.pid;
                self.park(key, req, park, fd, pid, h)
            }
            (Some(_), Message::StatsRequest) => {
                let stats = Message::Stats(h.core.stats());
                self.answer(key, &stats, h.reg)
            }
            (Some(Role::Admin), Message::Describe { query, user }) => {
                let pieces = native::chunks(h.core.describe(user.as_deref(), h.now));
                let n = pieces.len();
                pieces.into_iter().enumerate().all(|(i, conns)| {
                    let last = i + 1 == n;
                    self.answer(key, &Message::Described { query, conns, last }, h.reg)
                })
            }
            (Some(role), other) => {
                let name = format!("{other:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("?");
                self.fail(key, &format!("unexpected {name} from a {role:?}"), h.reg);
                false
            }
        }
    }

    /// Take over a client for a mail process, and answer it.
    fn park(
        &mut self,
        key: usize,
        req: u64,
        park: Park,
        fd: OwnedFd,
        pid: i32,
        h: &mut Held<'_>,
    ) -> bool {
        let incoming = Incoming {
            fd,
            notify: None,
            user: &park.user,
            cookie: park.cookie,
            tag: &park.tag,
            in_idle: park.in_idle,
            keepalive_secs: park.keepalive_secs,
            watch: &park.watch,
            state: &park.state,
            from_pid: pid,
        };
        match h.clients.adopt(h.core, h.inotify, h.reg, incoming, h.now) {
            Ok(id) => {
                if self.answer(key, &Message::Parked { req, id }, h.reg) {
                    // Input may have arrived during the hand-off; edges are
                    // not repeated, so look now.
                    h.clients
                        .readable(h.core, super::core::split_id(id).0, h.now);
                    true
                } else {
                    // The mail process never heard "Parked": it still serves
                    // the client, so we must not.
                    h.core.unconfirmed(id);
                    false
                }
            }
            Err(r) => {
                let msg = Message::Refused {
                    req,
                    kind: r.kind,
                    reason: r.reason,
                };
                self.answer(key, &msg, h.reg)
            }
        }
    }
}
