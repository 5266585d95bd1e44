//! The park socket adapter: mail processes hand over clients, operators
//! ask for statistics and `who`. Each role is checked against the peer's
//! credentials when claimed; a uid other than root and ours holds a
//! bounded number of connections, and each must say Hello in time. Any
//! malformed packet closes that one control connection (with every
//! descriptor it carried) and the daemon serves everyone else.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use slab::Slab;

use super::accept::{self, Next};
use super::admission::{Admission, Policy};
use super::clients::{Clients, IdleCore};
use super::config::Config;
use super::control::{Control, Sent};
use super::core::Arrival;
use super::inotify::Inotify;
use super::tokens::{token, Source};
use crate::proto::native::{self, Message, Park, RecvError, Role, MAX_PACKET};
use crate::setup::{ensure_dir_mode, setup, SetupError};
use crate::sys::SeqPacket;

/// Bind the park socket as configured: its directory checked (or made)
/// ours, its mode and group set. With `shared` (Dovecot's master may run
/// several of us with one runtime directory), a default path another live
/// imap-idle holds gives way to `park.PID` beside it. Returns the path
/// bound.
pub fn listen(cfg: &Config, shared: bool) -> Result<(SeqPacket, PathBuf), SetupError> {
    if let Some(dir) = cfg.park_socket.parent() {
        ensure_dir_mode(dir, cfg.runtime_dir_mode)?;
    }
    let mut path = cfg.park_socket.clone();
    let mut bound = SeqPacket::listen(&path, cfg.park_socket_mode);
    let default = cfg.park_socket == cfg.runtime_dir.join("park");
    if shared
        && default
        && bound
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse)
    {
        path = cfg.runtime_dir.join(format!("park.{}", std::process::id()));
        bound = SeqPacket::listen(&path, cfg.park_socket_mode);
    }
    let listener = setup(format_args!("listening on {}", path.display()), bound)?;
    if let Some(name) = &cfg.park_socket_group {
        let Ok(Some(g)) = nix::unistd::Group::from_name(name) else {
            return Err(SetupError(format!(
                "--park-socket-group: no group {name:?}"
            )));
        };
        setup(
            format_args!("giving {} to group {name}", path.display()),
            nix::unistd::chown(&path, None, Some(g.gid)).map_err(io::Error::from),
        )?;
    }
    Ok((listener, path))
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
    admission: Admission,
    /// Dovecot mode: mail processes may not park here.
    dovecot: bool,
    /// A close took us below 90% of the cap: accepting may resume.
    resume: bool,
    scratch: Box<[u8]>,
}

impl ParkSocket {
    pub fn new(listener: SeqPacket, dovecot: bool, policy: Policy) -> ParkSocket {
        ParkSocket {
            listener,
            controls: Slab::new(),
            admission: Admission::new(policy),
            dovecot,
            resume: false,
            scratch: vec![0; MAX_PACKET + 1].into_boxed_slice(),
        }
    }

    /// Accept what waits. `Err` carries the error that should pause
    /// accepting (out of descriptors).
    pub fn accept(&mut self, h: &mut Held<'_>) -> Result<(), io::Error> {
        loop {
            let max = self.admission.policy.max_controls;
            if self.controls.len() >= max {
                // Resumed by close once below 90%.
                warn!("{max} control connections open; not accepting more for now");
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
            if let Err(reason) = self.admission.room_for(&peer) {
                let _ = native::send(&sock, &Message::Error { reason }, None);
                continue;
            }
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
            let hello_by = self.admission.opened(&peer, key, h.now);
            entry.insert(Control::new(sock, peer, hello_by));
            // Packets may have arrived before registration; edge-triggered
            // polling would not report them again.
            self.event(key, h);
        }
    }

    fn close(&mut self, key: usize, reg: &Registry) {
        if let Some(c) = self.controls.try_remove(key) {
            let _ = reg.deregister(&mut SourceFd(&c.sock.as_raw_fd()));
            self.admission.closed(&c.peer);
            if self.controls.len() + 1 == self.admission.policy.max_controls * 9 / 10 {
                self.resume = true;
            }
        }
    }

    /// Send an answer, or queue it until the peer reads; a peer that is
    /// gone or will not read is dropped.
    fn answer(&mut self, key: usize, msg: Message, reg: &Registry) -> bool {
        let Some(c) = self.controls.get_mut(key) else {
            return false;
        };
        match c.send(msg, key, reg) {
            Sent::Ok => true,
            Sent::Failed(why) => {
                warn!("{}: {why}; closing", c.who());
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
        if let Some(c) = self.controls.get_mut(key) {
            if let Sent::Failed(why) = c.flush(key, h.reg) {
                warn!("{}: {why}; closing", c.who());
                self.close(key, h.reg);
            }
        }
        while let Some(c) = self.controls.get(key) {
            if c.paced() {
                // It reads its answers first; the next writable event
                // brings us back.
                break;
            }
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
                let allowed = match role {
                    Role::MailProcess => &self.admission.policy.mail,
                    Role::Admin => &self.admission.policy.admin,
                    _ => {
                        let reason = format!("role {role:?} does not park connections");
                        self.fail(key, &reason, h.reg);
                        return false;
                    }
                };
                if !allowed.admits(&c.peer) {
                    let flag = if role == Role::Admin {
                        "--admin-group"
                    } else {
                        "--mail-uid"
                    };
                    warn!(
                        "SECURITY: pid={} uid={} claimed the {role:?} role; refused ({flag})",
                        c.peer.pid, c.peer.uid
                    );
                    let reason = format!("uid {} may not take the {role:?} role", c.peer.uid);
                    self.fail(key, &reason, h.reg);
                    return false;
                }
                c.role = Some(role);
                c.hello_by = None;
                debug!("{}: connected", c.who());
                let hello = Message::Hello {
                    role: Role::Idle,
                    pid: std::process::id(),
                };
                self.answer(key, hello, h.reg)
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
                self.answer(key, stats, h.reg)
            }
            (Some(Role::Admin), Message::Describe { query, user }) => {
                let pieces = native::chunks(h.core.describe(user.as_deref(), h.now));
                let n = pieces.len();
                pieces.into_iter().enumerate().all(|(i, conns)| {
                    let last = i + 1 == n;
                    self.answer(key, Message::Described { query, conns, last }, h.reg)
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
        let arrival = Arrival {
            fd,
            notify: None,
            user: &park.user,
            cookie: park.cookie,
            tag: &park.tag,
            in_idle: park.in_idle,
            keepalive_secs: park.keepalive_secs,
            watches: Vec::new(),
            state: &park.state,
            from_pid: pid,
        };
        match h
            .clients
            .adopt(h.core, h.inotify, h.reg, arrival, &park.watch, h.now)
        {
            Ok(id) => {
                if self.answer(key, Message::Parked { req, id }, h.reg) {
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
                self.answer(key, msg, h.reg)
            }
        }
    }

    /// When the next silent connection's time to say Hello runs out.
    /// Deadlines of connections that spoke or closed since are dropped
    /// first: an idle daemon must not wake for them (a tool polling stats
    /// would otherwise wake it once per poll, ten seconds later).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let controls = &self.controls;
        self.admission
            .next_deadline(|at, key| controls.get(key).is_some_and(|c| c.hello_by == Some(at)))
    }

    /// Close connections that did not say Hello in time.
    pub fn expire(&mut self, now: Instant, reg: &Registry) -> bool {
        while let Some(key) = self.admission.next_due(now) {
            // The key may have been reused since: only its own deadline counts.
            let late = self
                .controls
                .get(key)
                .is_some_and(|c| c.hello_by.is_some_and(|by| by <= now));
            if late {
                let secs = self.admission.policy.handshake.as_secs();
                self.fail(key, &format!("no Hello within {secs} s"), reg);
            }
        }
        std::mem::take(&mut self.resume)
    }
}
