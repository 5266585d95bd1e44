//! The tracker's event loop: one thread, one poll, peers in a slab.
//! Login processes hand clients in, mail processes take them and report
//! them leaving, imap-idle returns them, operators ask who is doing what.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use slab::Slab;

use super::config::Config;
use super::routing::{Place, Routing};
use super::spawn::Spawner;
use super::who::WhoQuery;
use crate::proto::native::{
    self, Assign, Assignment, Gone, Login, Message, RecvError, Return, Role, MAX_PACKET,
};
use crate::setup::{ensure_dir, setup, SetupError};
use crate::sys::signals::Signals;
use crate::sys::{self, limits, Peer, SeqPacket};

const LISTENER: Token = Token(0);
const CONTROL: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_PEER: usize = 16;
/// Answers kept for a peer that is slow to read, at most.
const MAX_OUTBOX: usize = 65_536;

pub(super) struct PeerConn {
    pub sock: SeqPacket,
    pub cred: Peer,
    pub role: Option<Role>,
    /// Pid from the peer's Hello (SO_PEERCRED's when it said nothing).
    pub pid: u32,
    /// Came in on the control socket: only admin requests are taken.
    pub control: bool,
    /// We connected to imap-idle for this `who` query.
    pub query: Option<u64>,
    /// Answers that did not fit in the socket yet, in order.
    outbox: VecDeque<Message>,
}

impl PeerConn {
    pub fn who(&self) -> String {
        let role = self.role.map_or("peer".into(), |r| format!("{r:?}"));
        format!("{role} pid={} uid={}", self.pid, self.cred.uid)
    }
}

/// A client waiting for a mail process to take it.
struct Pending {
    user: String,
    uid: u32,
    fd: OwnedFd,
    from: From,
    deadline: Instant,
}

enum From {
    Login { peer: usize, login: Login },
    Idle { peer: usize, ret: Return },
}

pub struct Tracker {
    pub(super) cfg: Config,
    poll: Poll,
    listener: SeqPacket,
    control: SeqPacket,
    signals: Signals,
    pub(super) peers: Slab<PeerConn>,
    pub(super) routing: Routing,
    pending: VecDeque<Pending>,
    pub(super) queries: Vec<WhoQuery>,
    pub(super) next_query: u64,
    spawner: Spawner,
    buf: Vec<u8>,
    stop: bool,
}

impl Tracker {
    pub fn new(cfg: Config) -> Result<Tracker, SetupError> {
        let signals = setup(
            "setting up signals",
            Signals::new(&[
                Signal::SIGTERM,
                Signal::SIGINT,
                Signal::SIGUSR1,
                Signal::SIGCHLD,
            ]),
        )?;
        setup("raising the open-file limit", limits::raise_nofile())?;
        for path in [&cfg.socket, &cfg.control_socket] {
            if let Some(dir) = path.parent() {
                ensure_dir(dir)?;
            }
        }
        let listener = setup(
            format_args!("listening on {}", cfg.socket.display()),
            SeqPacket::listen(&cfg.socket, cfg.socket_mode),
        )?;
        let control = setup(
            format_args!("listening on {}", cfg.control_socket.display()),
            SeqPacket::listen(&cfg.control_socket, 0o600),
        )?;
        let poll = setup("creating the poll", Poll::new())?;
        for (fd, token) in [
            (listener.as_raw_fd(), LISTENER),
            (control.as_raw_fd(), CONTROL),
            (signals.as_fd().as_raw_fd(), SIGNALS),
        ] {
            setup(
                "registering with the poll",
                poll.registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE),
            )?;
        }
        info!(
            "imap-tracker {} listening on {} (control {}), policy {:?}{}",
            env!("CARGO_PKG_VERSION"),
            cfg.socket.display(),
            cfg.control_socket.display(),
            cfg.policy,
            cfg.spawn
                .as_ref()
                .map(|c| format!(
                    ", spawning up to {} mail processes with {c:?}",
                    cfg.max_processes
                ))
                .unwrap_or_default()
        );
        Ok(Tracker {
            spawner: Spawner::new(cfg.spawn.clone(), cfg.max_processes, cfg.socket.clone()),
            routing: Routing::new(cfg.policy),
            cfg,
            poll,
            listener,
            control,
            signals,
            peers: Slab::new(),
            pending: VecDeque::new(),
            queries: Vec::new(),
            next_query: 1,
            buf: vec![0; MAX_PACKET + 1],
            stop: false,
        })
    }

    pub fn run(mut self) -> Result<(), SetupError> {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + Duration::from_secs(60);
        while !self.stop {
            let now = Instant::now();
            let next = self
                .pending
                .iter()
                .map(|p| p.deadline)
                .chain(self.queries.iter().map(|q| q.deadline))
                .chain(std::iter::once(next_sweep))
                .min()
                .unwrap_or(next_sweep);
            let timeout = next.saturating_duration_since(now) + Duration::from_millis(1);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(SetupError(format!("polling: {e}")));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(false),
                    CONTROL => self.accept(true),
                    SIGNALS => self.signals(),
                    Token(t) if t >= FIRST_PEER => {
                        if ev.is_writable() {
                            self.writable(t - FIRST_PEER);
                        }
                        self.peer_event(t - FIRST_PEER);
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            self.expire_pending(now);
            self.expire_queries(now);
            if now >= next_sweep {
                self.routing.expire_early(now);
                next_sweep = now + Duration::from_secs(60);
            }
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        let _ = std::fs::remove_file(&self.cfg.control_socket);
        info!("imap-tracker stopped: {}", self.summary());
        Ok(())
    }

    fn summary(&self) -> String {
        let parked = self.routing.parked_count();
        format!(
            "{} users, {} connections ({} in mail processes, {parked} parked), {} mail processes, {} waiting",
            self.routing.users.len(),
            self.routing.conns.len(),
            self.routing.conns.len() - parked,
            self.routing.procs.len(),
            self.pending.len()
        )
    }

    fn signals(&mut self) {
        loop {
            match self.signals.pending() {
                Ok(Some(Signal::SIGTERM | Signal::SIGINT)) => {
                    info!("stopping on signal");
                    self.stop = true;
                }
                Ok(Some(Signal::SIGUSR1)) => info!("{}", self.summary()),
                Ok(Some(Signal::SIGCHLD)) => {
                    self.spawner.reap();
                    // A mail process that died before registering leaves
                    // room for another.
                    self.place_pending();
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    warn!("reading signals: {e}");
                    return;
                }
            }
        }
    }

    fn accept(&mut self, control: bool) {
        loop {
            let listener = if control {
                &self.control
            } else {
                &self.listener
            };
            let sock = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors: the peer retries; we log and wait
                    // for the next event rather than spin.
                    warn!("accepting a connection: {e}");
                    return;
                }
            };
            let cred = match sock.peer() {
                Ok(p) => p,
                Err(e) => {
                    warn!("reading peer credentials: {e}");
                    continue;
                }
            };
            self.add_peer(sock, cred, control, None);
        }
    }

    pub(super) fn add_peer(
        &mut self,
        sock: SeqPacket,
        cred: Peer,
        control: bool,
        query: Option<u64>,
    ) -> Option<usize> {
        let entry = self.peers.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            Token(FIRST_PEER + key),
            Interest::READABLE,
        ) {
            warn!("registering a connection: {e}");
            return None;
        }
        entry.insert(PeerConn {
            sock,
            pid: cred.pid as u32,
            cred,
            role: None,
            control,
            query,
            outbox: VecDeque::new(),
        });
        // Packets that came before registration raise no new edge.
        self.peer_event(key);
        Some(key)
    }

    pub(super) fn close_peer(&mut self, key: usize) {
        let Some(p) = self.peers.try_remove(key) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&p.sock.as_raw_fd()));
        // Whatever this peer handed us and nobody took yet stays with the
        // peer: it keeps its copy until we confirm.
        self.pending.retain(|w| match &w.from {
            From::Login { peer, .. } | From::Idle { peer, .. } => *peer != key,
        });
        self.who_peer_gone(key);
        if p.role == Some(Role::MailProcess) && self.routing.procs.contains_key(&key) {
            let lost = self.routing.unregister(key);
            warn!(
                "mail process pid={} is gone with {} connections{}",
                p.pid,
                lost.len(),
                describe_users(&lost)
            );
        } else {
            debug!("{}: closed", p.who());
        }
    }

    fn fail_peer(&mut self, key: usize, reason: &str) {
        if let Some(p) = self.peers.get(key) {
            warn!("{}: {reason}; closing the connection", p.who());
            let msg = Message::Error {
                reason: reason.to_owned(),
            };
            let _ = native::send(&p.sock, &msg, None);
        }
        self.close_peer(key);
    }

    /// Send without an fd. A peer slow to read gets it later, in order; a
    /// peer that does not read at all, or is gone, is closed.
    pub(super) fn send(&mut self, key: usize, msg: &Message) -> bool {
        let Some(p) = self.peers.get_mut(key) else {
            return false;
        };
        if p.outbox.is_empty() {
            match native::send(&p.sock, msg, None) {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    warn!("{}: cannot send ({e}); closing", p.who());
                    self.close_peer(key);
                    return false;
                }
            }
        }
        if p.outbox.len() >= MAX_OUTBOX {
            warn!("{}: {MAX_OUTBOX} answers unread; closing", p.who());
            self.close_peer(key);
            return false;
        }
        p.outbox.push_back(msg.clone());
        self.update_interest(key);
        true
    }

    /// Send what waited; true when the outbox is empty.
    fn flush_outbox(&mut self, key: usize) {
        loop {
            let Some(p) = self.peers.get_mut(key) else {
                return;
            };
            let Some(msg) = p.outbox.front() else {
                break;
            };
            match native::send(&p.sock, msg, None) {
                Ok(()) => {
                    p.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("{}: cannot send ({e}); closing", p.who());
                    return self.close_peer(key);
                }
            }
        }
        self.update_interest(key);
    }

    /// Readable always; writable while something waits for room.
    fn update_interest(&mut self, key: usize) {
        let Some(p) = self.peers.get(key) else {
            return;
        };
        let blocked = self.routing.procs.get(&key).is_some_and(|p| p.blocked);
        let interest = if blocked || !p.outbox.is_empty() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = self.poll.registry().reregister(
            &mut SourceFd(&p.sock.as_raw_fd()),
            Token(FIRST_PEER + key),
            interest,
        );
    }

    fn peer_event(&mut self, key: usize) {
        loop {
            let Some(p) = self.peers.get(key) else {
                return;
            };
            let incoming = match native::recv(&p.sock, &mut self.buf) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(RecvError::Closed) => return self.close_peer(key),
                Err(RecvError::Io(e)) => {
                    warn!("{}: {e}; closing", p.who());
                    return self.close_peer(key);
                }
                Err(RecvError::Proto(e)) => return self.fail_peer(key, &e.to_string()),
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
        match (p.role, msg) {
            (None, Message::Hello { role, pid }) => {
                if pid != 0 {
                    p.pid = pid;
                }
                self.hello(key, role)
            }
            (None, _) => {
                self.fail_peer(key, "the first message must be Hello");
                false
            }
            (Some(Role::MailProcess), Message::Register { uid, capacity }) => {
                self.register(key, uid, capacity)
            }
            (Some(Role::MailProcess), Message::Released { conn, how }) => {
                if !self.routing.procs.contains_key(&key) {
                    self.fail_peer(key, "Released before Register");
                    return false;
                }
                if let Err(e) = self.routing.released(key, conn, how, Instant::now()) {
                    warn!("{}: release of conn={conn}: {e}", p.who());
                }
                self.place_pending();
                true
            }
            (Some(Role::MailProcess | Role::Idle), Message::Described { query, conns, last }) => {
                self.described(key, query, conns, last);
                self.peers.contains(key)
            }
            (Some(Role::Login), Message::Login(login)) => {
                let Some(fd) = fd else {
                    self.fail_peer(key, "Login without a descriptor");
                    return false;
                };
                self.login(key, login, fd);
                true
            }
            (Some(Role::Idle), Message::Return(ret)) => {
                let Some(fd) = fd else {
                    self.fail_peer(key, "Return without a descriptor");
                    return false;
                };
                self.returned(key, ret, fd);
                self.peers.contains(key)
            }
            (Some(Role::Idle), Message::Gone(g)) => {
                self.gone(key, g);
                true
            }
            (Some(Role::Admin), Message::WhoRequest { user }) => {
                self.start_who(key, user);
                self.peers.contains(key)
            }
            (Some(role), other) => {
                let name = format!("{other:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("?").to_owned();
                self.fail_peer(key, &format!("unexpected {name} from a {role:?}"));
                false
            }
        }
    }

    fn hello(&mut self, key: usize, role: Role) -> bool {
        let Some(p) = self.peers.get_mut(key) else {
            return false;
        };
        if p.query.is_some() {
            // Our own connection to imap-idle for a `who` query.
            if role != Role::Idle {
                self.fail_peer(key, "the idle socket is not imap-idle's");
                return false;
            }
            p.role = Some(role);
            return self.ask_idle(key);
        }
        let allowed = match role {
            Role::Admin => p.control,
            Role::Login | Role::MailProcess | Role::Idle => !p.control,
            Role::Tracker => false,
        };
        if !allowed {
            let reason = if p.control {
                format!("the control socket takes admin requests only, not {role:?}")
            } else {
                format!("role {role:?} is not taken here")
            };
            self.fail_peer(key, &reason);
            return false;
        }
        if matches!(role, Role::Login | Role::MailProcess) {
            if let Some(uids) = &self.cfg.allow_uids {
                if p.cred.uid != 0 && !uids.contains(&p.cred.uid) {
                    let reason = format!("uid {} is not allowed (--allow-uid)", p.cred.uid);
                    self.fail_peer(key, &reason);
                    return false;
                }
            }
        }
        p.role = Some(role);
        debug!("{}: connected", p.who());
        let hello = Message::Hello {
            role: Role::Tracker,
            pid: std::process::id(),
        };
        self.send(key, &hello)
    }

    fn register(&mut self, key: usize, uid: u32, capacity: u32) -> bool {
        let Some(p) = self.peers.get(key) else {
            return false;
        };
        if self.routing.procs.contains_key(&key) {
            self.fail_peer(key, "registered twice");
            return false;
        }
        if capacity == 0 {
            self.fail_peer(key, "capacity 0: such a process can take nothing");
            return false;
        }
        if p.cred.uid != 0 && p.cred.uid != uid {
            let reason = format!("claims uid {uid} but runs as uid {}", p.cred.uid);
            self.fail_peer(key, &reason);
            return false;
        }
        let pid = p.pid;
        self.spawner.registered(pid);
        self.routing.register(key, pid, uid, capacity);
        info!("mail process pid={pid} uid={uid} registered, capacity {capacity}");
        if !self.send(key, &Message::Registered) {
            return false;
        }
        self.place_pending();
        true
    }

    fn login(&mut self, key: usize, login: Login, fd: OwnedFd) {
        if let Err(e) = sys::check_stream_socket(&fd) {
            let msg = Message::LoginRefused {
                seq: login.seq,
                reason: format!("not a client connection: {e}"),
            };
            self.send(key, &msg);
            return;
        }
        let wait = Pending {
            user: login.user.clone(),
            uid: login.uid,
            fd,
            from: From::Login { peer: key, login },
            deadline: Instant::now() + Duration::from_secs(self.cfg.wait_secs),
        };
        self.place_or_wait(wait);
    }

    fn returned(&mut self, key: usize, ret: Return, fd: OwnedFd) {
        let user = ret.park.user.clone();
        if !self.routing.cookie_ok(&user, &ret.park.cookie) {
            let pid = self.peers.get(key).map_or(0, |p| p.pid);
            warn!(
                "SECURITY: user={user}: a connection returned by imap-idle pid={pid} (id {}) \
                 carries a wrong or unknown cookie; refused and closed",
                ret.id
            );
            // Tell the client, close it, and tell imap-idle we took it so it
            // is not offered again.
            let _ = sys::write_now(fd.as_fd(), b"* BYE Session not recognised.\r\n");
            drop(fd);
            self.send(key, &Message::Accepted { id: ret.id });
            return;
        }
        let uid = self.routing.users.get(&user).map_or(0, |u| u.uid);
        let wait = Pending {
            user,
            uid,
            fd,
            from: From::Idle { peer: key, ret },
            deadline: Instant::now() + Duration::from_secs(self.cfg.wait_secs),
        };
        self.place_or_wait(wait);
    }

    fn gone(&mut self, key: usize, g: Gone) {
        if !self.routing.cookie_ok(&g.user, &g.cookie) {
            let pid = self.peers.get(key).map_or(0, |p| p.pid);
            warn!(
                "SECURITY: user={}: imap-idle pid={pid} reports a gone connection (id {}) with a \
                 wrong or unknown cookie; ignored",
                g.user, g.id
            );
            return;
        }
        let conn = self.routing.gone(g.id, Instant::now());
        info!(
            "user={} conn={}: parked client gone ({:?}: {})",
            g.user,
            conn.map_or("?".into(), |c| c.to_string()),
            g.reason,
            g.detail
        );
    }

    fn place_or_wait(&mut self, wait: Pending) {
        if let Some(wait) = self.place(wait) {
            if self.routing.pick(&wait.user, wait.uid).is_none() {
                self.spawner.spawn_for(&wait.user, self.routing.procs.len());
            }
            debug!("user={}: waiting for a mail process", wait.user);
            self.pending.push_back(wait);
        }
    }

    /// Give the client to a mail process; hands it back when none may take it.
    fn place(&mut self, wait: Pending) -> Option<Pending> {
        let Some(proc_key) = self.routing.pick(&wait.user, wait.uid) else {
            return Some(wait);
        };
        let now = Instant::now();
        let pid = self.routing.procs.get(&proc_key).map_or(0, |p| p.pid);
        let (was, idle_id) = match &wait.from {
            From::Idle { ret, .. } => (self.routing.parked_place(ret.id), Some(ret.id)),
            From::Login { .. } => (None, None),
        };
        let (conn, cookie, remote, how) = match &wait.from {
            From::Login { login, .. } => {
                match self
                    .routing
                    .login(proc_key, &wait.user, wait.uid, &login.remote, now)
                {
                    Ok((conn, cookie)) => {
                        let how = Assignment::Login {
                            tag: login.tag.clone(),
                            input: login.input.clone(),
                        };
                        (conn, cookie, login.remote.clone(), how)
                    }
                    Err(e) => {
                        warn!("user={}: cannot make a cookie: {e:?}", wait.user);
                        return Some(wait);
                    }
                }
            }
            From::Idle { ret, .. } => {
                let conn = self
                    .routing
                    .restore(ret.id, proc_key, &wait.user, ret.park.cookie, now);
                let remote = self
                    .routing
                    .conns
                    .get(&conn)
                    .map(|c| c.remote.clone())
                    .unwrap_or_default();
                (
                    conn,
                    ret.park.cookie,
                    remote,
                    Assignment::Restore(ret.clone()),
                )
            }
        };
        let msg = Message::Assign(Assign {
            conn,
            user: wait.user.clone(),
            uid: wait.uid,
            cookie,
            remote,
            how,
        });
        let sent = match self.peers.get(proc_key) {
            Some(p) => native::send(&p.sock, &msg, Some(wait.fd.as_fd())),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = sent {
            self.routing.unassign(proc_key, conn, was, idle_id);
            if e.kind() == io::ErrorKind::WouldBlock {
                // Busy reading: skip it until its socket drains.
                debug!("mail process pid={pid} is busy; waiting for it to drain");
                self.block_process(proc_key);
            } else {
                // A process that cannot take an assignment is of no use.
                warn!(
                    "mail process pid={pid}: cannot assign user={}: {e}",
                    wait.user
                );
                self.close_peer(proc_key);
            }
            return self.place(wait);
        }
        match wait.from {
            From::Login { peer, login } => {
                info!(
                    "user={} conn={conn}: login from {} assigned to mail process pid={pid}",
                    wait.user, login.remote
                );
                self.send(
                    peer,
                    &Message::LoginAccepted {
                        seq: login.seq,
                        conn,
                        pid,
                    },
                );
            }
            From::Idle { peer, ret } => {
                info!(
                    "user={} conn={conn}: back from imap-idle ({:?} after {} s) to mail process pid={pid}",
                    wait.user, ret.reason, ret.parked_secs
                );
                self.send(peer, &Message::Accepted { id: ret.id });
            }
        }
        None
    }

    fn block_process(&mut self, key: usize) {
        if let Some(p) = self.routing.procs.get_mut(&key) {
            p.blocked = true;
        }
        self.update_interest(key);
    }

    fn writable(&mut self, key: usize) {
        self.flush_outbox(key);
        let Some(p) = self.routing.procs.get_mut(&key) else {
            return;
        };
        if !p.blocked {
            return;
        }
        p.blocked = false;
        self.update_interest(key);
        self.place_pending();
    }

    fn place_pending(&mut self) {
        for _ in 0..self.pending.len() {
            let Some(wait) = self.pending.pop_front() else {
                return;
            };
            if let Some(wait) = self.place(wait) {
                self.pending.push_back(wait);
            }
        }
    }

    fn expire_pending(&mut self, now: Instant) {
        while let Some(i) = self.pending.iter().position(|w| w.deadline <= now) {
            let Some(wait) = self.pending.remove(i) else {
                return;
            };
            let reason = format!(
                "no mail process could take user {} within {} s",
                wait.user, self.cfg.wait_secs
            );
            warn!("user={}: {reason}", wait.user);
            match wait.from {
                From::Login { peer, login } => {
                    let msg = Message::LoginRefused {
                        seq: login.seq,
                        reason,
                    };
                    self.send(peer, &msg);
                }
                From::Idle { peer, ret } => {
                    self.send(peer, &Message::Rejected { id: ret.id, reason });
                }
            }
        }
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

/// The parked connections of `user` (all when `None`), for `who`.
pub(super) fn parked_of<'a>(
    routing: &'a Routing,
    user: Option<&'a str>,
) -> impl Iterator<Item = (u64, &'a super::routing::ConnEntry)> + 'a {
    routing.conns.iter().filter_map(move |(&id, c)| {
        let wanted = user.is_none_or(|u| u == c.user);
        (wanted && matches!(c.place, Place::Parked { .. })).then_some((id, c))
    })
}
