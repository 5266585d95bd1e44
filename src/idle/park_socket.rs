//! The park socket adapter: mail processes hand over clients, operators
//! ask for statistics and `who`. Each role is checked against the peer's
//! credentials when claimed; a uid other than root and ours holds a
//! bounded number of connections, and each must say Hello in time. Any
//! malformed packet closes that one control connection (with every
//! descriptor it carried) and the daemon serves everyone else. A mail
//! process may pipeline its parks: each turn takes up to a budget of a
//! connection's packets and writes their answers out together. A
//! successor daemon's connection goes to the daemon's hand-over.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use slab::Slab;

use super::accept::{self, Next};
use super::admission::{Admission, Policy};
use super::control::{Control, Sent, WRITE_BATCH};
use super::core::Arrival;
pub use super::held::Held;
use super::tokens::{token, Source};
use crate::proto::native::{self, Message, Park, RecvError, Role, MAX_PACKET};
use crate::sys::SeqPacket;

/// Packets of one control connection read per loop turn, at most: a mail
/// process pipelining parks gets a batch adopted and answered at once,
/// and still cannot keep the loop from everyone else. The rest waits for
/// the next turn.
const PACKETS_PER_TURN: usize = 256;

pub struct ParkSocket {
    pub listener: SeqPacket,
    controls: Slab<Control>,
    admission: Admission,
    /// Dovecot mode: mail processes may not park here.
    dovecot: bool,
    /// A close took us below 90% of the cap: accepting may resume.
    resume: bool,
    scratch: Box<[u8]>,
    /// Connections that used their turn's budget with packets left.
    ready: VecDeque<usize>,
    /// Parks whose `Parked` could not be delivered (the connection broke
    /// with it unsent): the mail process keeps those clients, so we must
    /// not. Undone before the event that found them returns.
    undone: Vec<u64>,
    /// A successor that said Hello (and its pid), for the daemon to hand
    /// everything to.
    pub successor: Option<(SeqPacket, i32)>,
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
            ready: VecDeque::new(),
            undone: Vec::new(),
            successor: None,
        }
    }

    /// Whether the next poll must not wait: a connection has packets left
    /// from its last turn.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
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

    fn close(&mut self, key: usize, reg: &Registry) -> Option<Control> {
        let c = self.controls.try_remove(key)?;
        let _ = reg.deregister(&mut SourceFd(&c.sock.as_raw_fd()));
        self.admission.closed(&c.peer);
        if self.controls.len() + 1 == self.admission.policy.max_controls * 9 / 10 {
            self.resume = true;
        }
        Some(c)
    }

    /// Queue an answer for the end of the turn; a peer that leaves too
    /// many unread is dropped.
    fn answer(&mut self, key: usize, msg: Message, reg: &Registry) -> bool {
        let Some(c) = self.controls.get_mut(key) else {
            return false;
        };
        match c.queue(msg) {
            Sent::Ok => true,
            Sent::Failed(why) => {
                self.broken(key, &why, reg);
                false
            }
        }
    }

    /// Close a connection whose answers cannot be delivered.
    fn broken(&mut self, key: usize, why: &str, reg: &Registry) {
        if let Some(c) = self.controls.get_mut(key) {
            warn!("{}: {why}; closing", c.who());
            self.undone.extend(c.unsent_parks());
        }
        self.close(key, reg);
    }

    /// Tell the peer why it is dropped, after the answers it is owed: it
    /// takes every request still unanswered at Error as never read.
    fn fail(&mut self, key: usize, reason: &str, reg: &Registry) {
        if let Some(c) = self.controls.get_mut(key) {
            warn!("{}: {reason}; closing the connection", c.who());
            match c.flush(key, reg) {
                Sent::Ok if !c.paced() => {
                    let msg = Message::Error {
                        reason: reason.to_owned(),
                    };
                    let _ = native::send(&c.sock, &msg, None);
                }
                // Answers still wait: an Error would overtake them, so the
                // peer just sees the end (and counts what it did not hear
                // about as lost).
                Sent::Ok => {}
                Sent::Failed(_) => self.undone.extend(c.unsent_parks()),
            }
        }
        self.close(key, reg);
    }

    /// A control connection is readable (or writable, or has packets left
    /// from its last turn). Returns whether accepting should resume (a
    /// connection closed below the cap).
    pub fn event(&mut self, key: usize, h: &mut Held<'_>) -> bool {
        self.serve(key, h);
        for id in self.undone.drain(..) {
            h.core.unconfirmed(id);
        }
        std::mem::take(&mut self.resume)
    }

    /// One more turn for each connection that had packets left.
    pub fn turn(&mut self, h: &mut Held<'_>) -> bool {
        let mut resume = false;
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            resume |= self.event(key, h);
        }
        resume
    }

    /// Send what waited; unless the peer is still behind with it, read up
    /// to a turn's budget of packets; write their answers out together.
    fn serve(&mut self, key: usize, h: &mut Held<'_>) {
        // A paced peer reads its answers first; the next writable event
        // brings us back.
        if !self.flush(key, h.reg) || self.controls.get(key).is_some_and(Control::paced) {
            return;
        }
        let mut budget = PACKETS_PER_TURN;
        while let Some(c) = self.controls.get(key) {
            if budget == 0 {
                // A key closed and reused before its turn just gets a
                // look for packets: harmless.
                self.ready.push_back(key);
                break;
            }
            budget -= 1;
            let incoming = match native::recv(&c.sock, &mut self.scratch) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(RecvError::Closed) => {
                    debug!("{}: closed", c.who());
                    self.close(key, h.reg);
                    return;
                }
                Err(RecvError::Io(e)) => {
                    warn!("{}: {e}; closing", c.who());
                    self.close(key, h.reg);
                    return;
                }
                Err(RecvError::Proto(e)) => return self.fail(key, &e.to_string(), h.reg),
            };
            if !self.message(key, incoming.msg, incoming.fd, h) {
                return;
            }
            // A write per batch, not per turn: the peer can send its next
            // requests while we take the rest of this turn's.
            if (PACKETS_PER_TURN - budget) % WRITE_BATCH == 0 && !self.flush(key, h.reg) {
                return;
            }
        }
        self.flush(key, h.reg);
    }

    /// Write out the answers queued so far; false when that broke the
    /// connection.
    fn flush(&mut self, key: usize, reg: &Registry) -> bool {
        match self.controls.get_mut(key).map(|c| c.flush(key, reg)) {
            Some(Sent::Ok) => true,
            Some(Sent::Failed(why)) => {
                self.broken(key, &why, reg);
                false
            }
            None => false,
        }
    }

    /// Handle one message; false when the connection was closed.
    fn message(&mut self, key: usize, msg: Message, fd: Option<OwnedFd>, h: &mut Held<'_>) -> bool {
        let Some(c) = self.controls.get_mut(key) else {
            return false;
        };
        match (c.role, msg) {
            (None, Message::Hello { role, .. }) => {
                if let Err(reason) = self.admission.policy.claim(&c.peer, role, self.dovecot) {
                    self.fail(key, &reason, h.reg);
                    return false;
                }
                c.role = Some(role);
                c.hello_by = None;
                if role == Role::Successor {
                    // The daemon's hand-over answers it; a second is closed.
                    let c = self.close(key, h.reg).map(|c| (c.sock, c.peer.pid));
                    self.successor = self.successor.take().or(c);
                    return false;
                }
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
            user: &park.user,
            cookie: park.cookie,
            tag: &park.tag,
            in_idle: park.in_idle,
            multiplex: false,
            keepalive_secs: park.keepalive_secs,
            watches: Vec::new(),
            state: &park.state,
            from_pid: pid,
            carried: Default::default(),
        };
        match h
            .clients
            .adopt(h.core, h.inotify, h.reg, arrival, &park.watch, h.now)
        {
            // Input that arrived before the client was polled needs no
            // read here: epoll reports a descriptor that is already
            // readable when it is added.
            Ok(id) => {
                let answered = self.answer(key, Message::Parked { req, id }, h.reg);
                if !answered {
                    // The mail process never heard "Parked": it still serves
                    // the client, so we must not.
                    h.core.unconfirmed(id);
                }
                answered
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
