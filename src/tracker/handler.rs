//! What the tracker does when a peer speaks: admits a peer to the role it
//! claims, checks each message against that role and hands it to the
//! component concerned (what mail processes and imap-idle say is handled
//! in `from_mail` and `from_idle`). A [`Handler`] borrows the daemon's
//! components for one event; this is also the one place that undoes what a
//! closed peer leaves behind in all of them, so the components themselves
//! only ever close a connection. It also keeps the bounds on peers and on
//! waiting clients.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::Registry;

use super::config::Config;
use super::peers::Peers;
use super::pending::{Pending, Placed, Waiting};
use super::routing::Routing;
use super::spawn::Spawner;
use super::trust::Trust;
use super::who::Who;
use crate::proto::native::{self, Message, RecvError, Role};
use crate::sys::{Peer, SeqPacket};

/// Connections on the control socket at once, at most: admins are few,
/// and the operator can still ask while the main socket is full.
pub const MAX_ADMINS: usize = 64;
/// After an imap-idle link closes, whether that daemon died is looked at
/// this much later (a killed process closes its sockets before it is dead).
const DAEMON_CHECK_DELAY: Duration = Duration::from_secs(1);

pub struct Handler<'a> {
    pub(super) cfg: &'a Config,
    pub(super) trust: &'a Trust,
    pub(super) registry: &'a Registry,
    pub(super) peers: &'a mut Peers,
    pub(super) routing: &'a mut Routing,
    pub(super) pending: &'a mut Waiting,
    pub(super) who: &'a mut Who,
    pub(super) spawner: &'a mut Spawner,
}

impl<'a> Handler<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a Config,
        trust: &'a Trust,
        registry: &'a Registry,
        peers: &'a mut Peers,
        routing: &'a mut Routing,
        pending: &'a mut Waiting,
        who: &'a mut Who,
        spawner: &'a mut Spawner,
    ) -> Handler<'a> {
        Handler {
            cfg,
            trust,
            registry,
            peers,
            routing,
            pending,
            who,
            spawner,
        }
    }

    /// A connection accepted on the main or the control socket; refused
    /// with a reason when that socket has all the connections it may.
    pub fn add_peer(&mut self, sock: SeqPacket, cred: Peer, control: bool) {
        let (main, admins) = self.peers.counts();
        let full = if control {
            (admins >= MAX_ADMINS).then(|| format!("{MAX_ADMINS} admin connections already"))
        } else {
            (main >= self.cfg.max_peers)
                .then(|| format!("{main} connections already (--max-peers)"))
        };
        if let Some(why) = full {
            warn!(
                "refusing a connection from pid={} uid={}: {why}",
                cred.pid, cred.uid
            );
            let reason = format!("the tracker is full: {why}");
            let _ = native::send(&sock, &Message::Error { reason }, None);
            return;
        }
        if let Some(key) = self.peers.insert(self.registry, sock, cred, control, None) {
            // Packets that came before registration raise no new edge.
            self.peer_event(key);
        }
    }

    pub(super) fn close_peer(&mut self, key: usize) {
        self.peers.close(self.registry, key);
        self.settle();
    }

    /// Undo what the peers closed since the last call left behind. Called
    /// after every step that may close one, so it happens as if at once.
    fn settle(&mut self) {
        while let Some((key, p)) = self.peers.take_closed() {
            // Whatever this peer handed us and nobody took yet stays with the
            // peer: it keeps its copy until we confirm.
            self.pending.forget_peer(key);
            self.routing.link_closed(key);
            for id in self.who.peer_gone(key) {
                self.finish_who(id);
            }
            if p.role() == Some(Role::MailProcess) && self.routing.procs.contains_key(&key) {
                let lost = self.routing.unregister(key);
                warn!(
                    "mail process pid={} is gone with {} connections{}",
                    p.pid(),
                    lost.len(),
                    describe_users(&lost)
                );
            } else {
                if p.role() == Some(Role::Idle) && p.query().is_none() {
                    let at = Instant::now() + DAEMON_CHECK_DELAY;
                    self.routing.rejoin.check_daemons_at = Some(at);
                }
                debug!("{}: closed", p.who());
            }
        }
    }

    /// Tell `key` why, and close it; false (it is no longer open).
    pub(super) fn fail_peer(&mut self, key: usize, reason: &str) -> bool {
        if let Some(p) = self.peers.get(key) {
            warn!("{}: {reason}; closing the connection", p.who());
            let msg = Message::Error {
                reason: reason.to_owned(),
            };
            let _ = p.send_now(&msg, None);
        }
        self.close_peer(key);
        false
    }

    /// Send without an fd; false when the peer is gone (or now closed).
    pub(super) fn send(&mut self, key: usize, msg: &Message) -> bool {
        let blocked = self.routing.blocked(key);
        let sent = self.peers.send(self.registry, key, msg, blocked);
        self.settle();
        sent
    }

    pub fn peer_event(&mut self, key: usize) {
        loop {
            let Some(got) = self.peers.recv(key) else {
                return;
            };
            let incoming = match got {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(RecvError::Closed) => return self.close_peer(key),
                Err(RecvError::Io(e)) => {
                    if let Some(p) = self.peers.get(key) {
                        warn!("{}: {e}; closing", p.who());
                    }
                    return self.close_peer(key);
                }
                Err(RecvError::Proto(e)) => {
                    self.fail_peer(key, &e.to_string());
                    return;
                }
            };
            if !self.message(key, incoming.msg, incoming.fd) {
                return;
            }
        }
    }

    /// Handle one message; false when the peer was closed.
    fn message(&mut self, key: usize, msg: Message, fd: Option<OwnedFd>) -> bool {
        let Some(p) = self.peers.get_mut(key) else {
            return false;
        };
        match (p.role(), msg) {
            (None, Message::Hello { role, pid }) => {
                if pid != 0 {
                    p.set_pid(pid);
                }
                self.hello(key, role)
            }
            (None, _) => self.fail_peer(key, "the first message must be Hello"),
            (Some(Role::MailProcess), Message::Register { uid, capacity }) => {
                self.register(key, uid, capacity)
            }
            (Some(Role::MailProcess), Message::Released { conn, how }) => {
                self.released(key, conn, how)
            }
            (Some(Role::MailProcess | Role::Idle), Message::Described { query, conns, last }) => {
                self.described(key, query, conns, last);
                self.peers.contains(key)
            }
            (Some(Role::Login), Message::Login(login)) => {
                let Some(fd) = fd else {
                    return self.fail_peer(key, "Login without a descriptor");
                };
                let wait = Duration::from_secs(self.cfg.wait_secs);
                self.take(key, Pending::login(key, login, fd, wait));
                true
            }
            (Some(Role::Idle), Message::Return(ret)) => {
                let Some(fd) = fd else {
                    return self.fail_peer(key, "Return without a descriptor");
                };
                self.returned(key, ret, fd)
            }
            (Some(Role::Idle), Message::Gone(g)) => {
                self.gone(key, g);
                true
            }
            (Some(Role::Idle), Message::Holding { held, last }) if p.query().is_none() => {
                self.holding(key, held, last);
                true
            }
            (Some(Role::MailProcess), Message::Serving { conns, last }) => {
                self.serving(key, conns, last)
            }
            (Some(Role::Admin), Message::WhoRequest { user }) => {
                self.start_who(key, user);
                self.peers.contains(key)
            }
            (Some(role), other) => {
                let name = format!("{other:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("?").to_owned();
                self.fail_peer(key, &format!("unexpected {name} from a {role:?}"))
            }
        }
    }

    fn hello(&mut self, key: usize, role: Role) -> bool {
        let Some(p) = self.peers.get_mut(key) else {
            return false;
        };
        if p.query().is_some() {
            // Our own connection to imap-idle for a `who` query.
            if role != Role::Idle {
                return self.fail_peer(key, "the idle socket is not imap-idle's");
            }
            p.set_role(role);
            let asked = self
                .who
                .ask_idle(key, self.peers, self.routing, self.registry);
            self.settle();
            return asked;
        }
        if let Err(reason) = self.trust.admit(role, p.cred(), p.control()) {
            warn!(
                "SECURITY: pid={} uid={} claims the {role:?} role: {reason}; refused",
                p.pid(),
                p.uid()
            );
            return self.fail_peer(key, &reason);
        }
        p.set_role(role);
        debug!("{}: connected", p.who());
        if role == Role::Idle {
            // Its report of what it holds follows our Hello.
            let pid = p.pid();
            self.routing.report_begins(key, pid, Instant::now());
        }
        let hello = Message::Hello {
            role: Role::Tracker,
            pid: std::process::id(),
        };
        self.send(key, &hello)
    }

    /// A client handed in: placed or queued, or `reply` sent instead.
    pub(super) fn take(&mut self, key: usize, wait: Result<Pending, Box<Message>>) {
        match wait {
            Ok(wait) => self.place_or_wait(wait),
            Err(reply) => {
                self.send(key, &reply);
            }
        }
    }

    fn place_or_wait(&mut self, wait: Pending) {
        if let Some(wait) = self.place(wait) {
            let max = self.cfg.max_waiting;
            if self.pending.len() >= max {
                let reason =
                    format!("too many clients waiting for a mail process ({max}, --max-waiting)");
                warn!("user={}: refused: {reason}", wait.user());
                wait.refuse(reason, self.peers, self.routing, self.registry);
                self.settle();
                return;
            }
            if self.routing.pick(wait.user(), wait.uid()).is_none() {
                self.spawner
                    .spawn_for(wait.user(), self.routing.procs.len());
            }
            debug!("user={}: waiting for a mail process", wait.user());
            self.pending.push(wait);
        }
    }

    /// Give the client to a mail process; hands it back when none may take it.
    fn place(&mut self, mut wait: Pending) -> Option<Pending> {
        loop {
            let placed = wait.place(self.routing, self.peers, self.registry);
            // A process closed for failing the assignment is unregistered
            // before the next pick.
            self.settle();
            match placed {
                Placed::Done => return None,
                Placed::Wait(w) => return Some(w),
                Placed::Retry(w) => wait = w,
            }
        }
    }

    pub(super) fn place_pending(&mut self) {
        for _ in 0..self.pending.len() {
            let Some(wait) = self.pending.pop() else {
                return;
            };
            if let Some(wait) = self.place(wait) {
                self.pending.push(wait);
            }
        }
    }

    /// Room on peer `key`'s socket: send what waited, and if it is a mail
    /// process that was full, place the clients waiting for it.
    pub fn writable(&mut self, key: usize) {
        let blocked = self.routing.blocked(key);
        self.peers.flush_outbox(self.registry, key, blocked);
        self.settle();
        match self.routing.procs.get_mut(&key) {
            Some(p) if p.blocked => p.blocked = false,
            _ => return,
        }
        self.peers.update_interest(self.registry, key, false);
        self.place_pending();
    }

    /// Refuse the clients and end the `who` queries whose time is up.
    pub fn expire(&mut self, now: Instant) {
        while let Some(wait) = self.pending.pop_expired(now) {
            let reason = format!(
                "no mail process could take user {} within {} s",
                wait.user(),
                self.cfg.wait_secs
            );
            warn!("user={}: {reason}", wait.user());
            wait.refuse(reason, self.peers, self.routing, self.registry);
            self.settle();
        }
        for id in self.who.late(now) {
            for key in self.who.expire(id, self.peers) {
                if self.peers.get(key).is_some_and(|p| p.query().is_some()) {
                    self.close_peer(key);
                }
            }
            self.finish_who(id);
        }
    }

    fn start_who(&mut self, admin: usize, user: Option<String>) {
        let (id, procs) = self.who.open(admin, user, self.routing);
        for key in procs {
            self.who
                .ask(id, key, self.peers, self.routing, self.registry);
            self.settle();
        }
        for socket in &self.cfg.idle_sockets {
            let idle = self
                .who
                .connect_idle(id, socket, self.peers, self.routing, self.registry);
            if let Some(key) = idle {
                // Packets that came before registration raise no new edge.
                self.peer_event(key);
            }
        }
        if self.who.answered(id) {
            self.finish_who(id);
        }
    }

    pub(super) fn finish_who(&mut self, id: u64) {
        self.who.finish(id, self.peers, self.routing, self.registry);
        self.settle();
    }
}

fn describe_users(lost: &[(u64, String)]) -> String {
    if lost.is_empty() {
        return String::new();
    }
    let mut users: Vec<&str> = lost.iter().map(|(_, u)| u.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    format!(" (users: {})", users.join(", "))
}
