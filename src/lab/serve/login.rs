//! The reference login process: greets, takes `LOGIN` against a passwd
//! file, and hands the authenticated client to imap-tracker.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::imap::{take_line, words};
use crate::mail::{LoginAnswer, LoginLink};
use crate::proto::native::Login;

const EMFILE: i32 = nix::errno::Errno::EMFILE as i32;
const ENFILE: i32 = nix::errno::Errno::ENFILE as i32;
const LISTENER: Token = Token(0);
const TRACKER: Token = Token(1);
const FIRST_CLIENT: usize = 16;
const MAX_LINE: usize = 8192;
const PRE_AUTH_CAPABILITY: &str = "IMAP4rev1 IDLE LOGIN-REFERRALS";

pub struct LoginConfig {
    pub listen: SocketAddr,
    pub passwd: PathBuf,
    pub tracker_socket: PathBuf,
}

struct Account {
    password: String,
    uid: u32,
}

/// `user:password[:uid]` per line; `#` comments; a `{PLAIN}` prefix on the
/// password is accepted, as in Dovecot's passwd-file.
fn read_passwd(path: &Path) -> Result<HashMap<String, Account>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split(':');
        let (Some(user), Some(pass)) = (f.next(), f.next()) else {
            return Err(format!(
                "{}:{}: expected user:password",
                path.display(),
                n + 1
            ));
        };
        let uid = match f.next().filter(|s| !s.is_empty()) {
            Some(u) => u
                .parse()
                .map_err(|_| format!("{}:{}: bad uid {u:?}", path.display(), n + 1))?,
            None => nix::unistd::getuid().as_raw(),
        };
        let password = pass.strip_prefix("{PLAIN}").unwrap_or(pass).to_owned();
        out.insert(user.to_owned(), Account { password, uid });
    }
    Ok(out)
}

struct Client {
    stream: TcpStream,
    remote: SocketAddr,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Handed to the tracker under this sequence number, awaiting its answer.
    waiting: Option<u64>,
    /// The hand-over, while it waits for room on the tracker link (the
    /// client is still only ours then).
    unsent: Option<Login>,
    tag: String,
    closing: bool,
}

struct LoginServer {
    cfg: LoginConfig,
    accounts: HashMap<String, Account>,
    poll: Poll,
    listener: TcpListener,
    tracker: Option<LoginLink>,
    clients: Slab<Client>,
    by_seq: HashMap<u64, usize>,
    /// Clients whose hand-over waits for room, in order.
    queue: std::collections::VecDeque<usize>,
    next_seq: u64,
    buf: Vec<u8>,
}

pub fn run(cfg: LoginConfig) -> Result<(), String> {
    let accounts = read_passwd(&cfg.passwd)?;
    let mut listener =
        TcpListener::bind(cfg.listen).map_err(|e| format!("listening on {}: {e}", cfg.listen))?;
    let poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts read this line to learn an ephemeral port.
    println!("listening on {addr}");
    info!(
        "login process listening on {addr}, {} accounts, handing clients to {}",
        accounts.len(),
        cfg.tracker_socket.display()
    );
    let mut s = LoginServer {
        cfg,
        accounts,
        poll,
        listener,
        tracker: None,
        clients: Slab::new(),
        by_seq: HashMap::new(),
        queue: std::collections::VecDeque::new(),
        next_seq: 1,
        buf: vec![0; 8192],
    };
    s.run()
}

impl LoginServer {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("polling: {e}"));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    TRACKER => {
                        if ev.is_writable() {
                            self.send_queued();
                        }
                        self.tracker_event();
                    }
                    Token(t) if t >= FIRST_CLIENT => self.client_event(t - FIRST_CLIENT),
                    _ => {}
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, remote) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    // Out of descriptors: the rest wait in the backlog until
                    // the next connection's edge.
                    warn!("accepting: {e}");
                    return;
                }
                Err(e) => {
                    // A connection that died in the queue: the others in it
                    // still need accepting (edges are not repeated).
                    warn!("accepting: {e}");
                    continue;
                }
            };
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(FIRST_CLIENT + key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("registering {remote}: {e}");
                continue;
            }
            let greeting = format!(
                "* OK [CAPABILITY {PRE_AUTH_CAPABILITY}] imap-idle-lab reference server ready.\r\n"
            );
            entry.insert(Client {
                stream,
                remote,
                inbuf: Vec::new(),
                out: greeting.into_bytes(),
                waiting: None,
                unsent: None,
                tag: String::new(),
                closing: false,
            });
            self.client_event(key);
        }
    }

    fn client_event(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        // While the tracker decides, input stays in the socket for whoever
        // gets the client.
        if c.waiting.is_none() {
            loop {
                match c.stream.read(&mut self.buf) {
                    Ok(0) => return self.close(key),
                    Ok(n) => c.inbuf.extend_from_slice(&self.buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.close(key),
                }
            }
            self.commands(key);
        }
        self.flush(key);
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(key),
            }
        }
        if c.closing {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut c) = self.clients.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if let Some(seq) = c.waiting {
                self.by_seq.remove(&seq);
            }
        }
    }

    fn commands(&mut self, key: usize) {
        loop {
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            if c.waiting.is_some() || c.closing {
                return;
            }
            let Some(line) = take_line(&mut c.inbuf) else {
                if c.inbuf.len() > MAX_LINE {
                    c.out.extend_from_slice(b"* BYE Command line too long.\r\n");
                    c.closing = true;
                }
                return;
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let w = match words(&line) {
                Ok(w) => w,
                Err(e) => {
                    let tag = line.split(' ').next().unwrap_or("*");
                    c.out
                        .extend_from_slice(format!("{tag} BAD {e}\r\n").as_bytes());
                    continue;
                }
            };
            let (Some(tag), Some(cmd)) = (w.first(), w.get(1)) else {
                c.out.extend_from_slice(b"* BAD Empty command.\r\n");
                continue;
            };
            let reply = match cmd.to_ascii_uppercase().as_str() {
                "CAPABILITY" => format!(
                    "* CAPABILITY {PRE_AUTH_CAPABILITY}\r\n{tag} OK Capability completed.\r\n"
                ),
                "NOOP" => format!("{tag} OK NOOP completed.\r\n"),
                "LOGOUT" => {
                    c.closing = true;
                    format!("* BYE Logging out.\r\n{tag} OK Logout completed.\r\n")
                }
                "LOGIN" => match (w.get(2), w.get(3)) {
                    (Some(user), Some(pass)) => {
                        let (tag, user, pass) = (tag.clone(), user.clone(), pass.clone());
                        self.login(key, &tag, &user, &pass);
                        continue;
                    }
                    _ => format!("{tag} BAD LOGIN needs a user and a password.\r\n"),
                },
                _ => format!("{tag} BAD Log in first.\r\n"),
            };
            c.out.extend_from_slice(reply.as_bytes());
        }
    }

    fn login(&mut self, key: usize, tag: &str, user: &str, pass: &str) {
        let account = self
            .accounts
            .get(user)
            .filter(|a| a.password == pass)
            .map(|a| a.uid);
        let Some(uid) = account else {
            info!("user={user}: authentication failed");
            return self.reply(
                key,
                &format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
            );
        };
        if self.tracker.is_none() {
            match LoginLink::connect(&self.cfg.tracker_socket) {
                Ok(link) => {
                    let fd = link.as_raw_fd();
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd),
                        TRACKER,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("registering the tracker link: {e}");
                    }
                    self.tracker = Some(link);
                }
                Err(e) => {
                    warn!("user={user}: tracker unavailable: {e}");
                    return self.reply(
                        key,
                        &format!("{tag} NO [UNAVAILABLE] Mail service unavailable, try later.\r\n"),
                    );
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let local = c
            .stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        c.unsent = Some(Login {
            seq,
            user: user.to_owned(),
            uid,
            tag: tag.to_owned(),
            local,
            remote: c.remote.to_string(),
            input: std::mem::take(&mut c.inbuf),
        });
        c.waiting = Some(seq);
        c.tag = tag.to_owned();
        self.by_seq.insert(seq, key);
        self.queue.push_back(key);
        self.send_queued();
    }

    /// Hand over queued clients in order, while the tracker link has room.
    /// Never waits: a slow tracker must not stop us accepting and greeting.
    fn send_queued(&mut self) {
        while let Some(&key) = self.queue.front() {
            let Some(link) = &self.tracker else {
                return;
            };
            let Some(c) = self.clients.get_mut(key) else {
                self.queue.pop_front();
                continue;
            };
            let Some(login) = c.unsent.take() else {
                self.queue.pop_front();
                continue;
            };
            match link.hand_over(c.stream.as_fd(), &login) {
                Ok(()) => {
                    self.queue.pop_front();
                    debug!(
                        "user={}: handed to the tracker (seq {})",
                        login.user, login.seq
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.unsent = Some(login);
                    return;
                }
                Err(e) => {
                    warn!("user={}: cannot hand over to the tracker: {e}", login.user);
                    c.unsent = Some(login);
                    return self.drop_tracker();
                }
            }
        }
    }

    fn reply(&mut self, key: usize, text: &str) {
        if let Some(c) = self.clients.get_mut(key) {
            c.out.extend_from_slice(text.as_bytes());
        }
        self.flush(key);
    }

    fn tracker_event(&mut self) {
        loop {
            let Some(link) = &mut self.tracker else {
                return;
            };
            match link.answer() {
                Ok(Some(LoginAnswer::Accepted { seq, conn, pid })) => {
                    if let Some(key) = self.by_seq.remove(&seq) {
                        debug!("seq {seq}: conn={conn} in mail process pid={pid}");
                        // The mail process owns the client: drop ours quietly.
                        if let Some(mut c) = self.clients.try_remove(key) {
                            let _ = self.poll.registry().deregister(&mut c.stream);
                        }
                    }
                }
                Ok(Some(LoginAnswer::Refused { seq, reason })) => {
                    if let Some(key) = self.by_seq.remove(&seq) {
                        let tag = match self.clients.get_mut(key) {
                            Some(c) => {
                                c.waiting = None;
                                c.tag.clone()
                            }
                            None => continue,
                        };
                        warn!("seq {seq}: login refused by the tracker: {reason}");
                        self.reply(key, &format!("{tag} NO [UNAVAILABLE] {reason}\r\n"));
                        self.client_event(key);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    warn!("tracker link: {e}");
                    return self.drop_tracker();
                }
            }
        }
    }

    /// The tracker is gone. A client handed over may or may not have been
    /// given to a mail process already: closing our copy is the only safe
    /// move (a client served twice is worse than one that reconnects). One
    /// not yet sent is told to try later. The next login reconnects.
    fn drop_tracker(&mut self) {
        if let Some(link) = self.tracker.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&link.as_raw_fd()));
        }
        self.queue.clear();
        let waiting: Vec<(u64, usize)> = self.by_seq.drain().collect();
        let mut closed = 0;
        for (_, key) in waiting {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            c.waiting = None;
            if let Some(login) = c.unsent.take() {
                // Never sent: still only ours, and the client can be told.
                c.inbuf = login.input;
                let tag = c.tag.clone();
                self.reply(
                    key,
                    &format!("{tag} NO [UNAVAILABLE] Mail service unavailable, try later.\r\n"),
                );
            } else if let Some(mut c) = self.clients.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut c.stream);
                closed += 1;
            }
        }
        if closed > 0 {
            warn!("tracker link lost with {closed} logins unanswered; closed our copies");
        }
    }
}
