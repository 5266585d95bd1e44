//! The reference login process: greets, takes `LOGIN` against a passwd
//! file, and hands the authenticated client to imap-tracker. A client gets
//! `--auth-timeout` to log in, and no more of its input is read while
//! [`MAX_QUEUED_OUTPUT`] of our answers wait for it (see `bounds`).

mod handover;
mod passwd;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::bounds::MAX_QUEUED_OUTPUT;
use super::imap::{take_line, words};
use crate::mail::LoginLink;
use crate::proto::native::Login;
use passwd::{read_passwd, Account};

const EMFILE: i32 = nix::errno::Errno::EMFILE as i32;
const ENFILE: i32 = nix::errno::Errno::ENFILE as i32;
const LISTENER: Token = Token(0);
const TRACKER: Token = Token(1);
const FIRST_CLIENT: usize = 16;
const MAX_LINE: usize = 8192;
const PRE_AUTH_CAPABILITY: &str = "IMAP4rev1 IDLE LOGIN-REFERRALS";
/// A client whose LOGIN is with the tracker at its deadline is looked at
/// again this much later: its fate is the tracker's until it answers.
const RECHECK: Duration = Duration::from_secs(1);

pub struct LoginConfig {
    pub listen: SocketAddr,
    pub passwd: PathBuf,
    pub tracker_socket: PathBuf,
    /// From connecting to logging in, at most.
    pub auth_timeout: Duration,
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
    /// Closed with `* BYE` if still here then.
    deadline: Instant,
    /// Over the output cap, its input unread (logged once per episode).
    throttled: bool,
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
    /// Clients' deadlines, soonest first; an entry whose client has gone
    /// (or whose slot holds a newer client) is skipped when it comes due.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    buf: Vec<u8>,
}

/// Connections waiting to be accepted, at most: thousands of clients may
/// connect in the same second (a load test, every phone after an outage),
/// and the default of 128 drops the surplus until they retry.
const BACKLOG: i32 = 4096;

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{
        self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    match addr {
        SocketAddr::V4(a) => socket::bind(raw, &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => socket::bind(raw, &SockaddrIn6::from(a))?,
    }
    socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from_std(std::net::TcpListener::from(fd)))
}

pub fn run(cfg: LoginConfig) -> Result<(), String> {
    let accounts = read_passwd(&cfg.passwd)?;
    let mut listener =
        listen(cfg.listen).map_err(|e| format!("listening on {}: {e}", cfg.listen))?;
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
        deadlines: BinaryHeap::new(),
        buf: vec![0; 8192],
    };
    s.run()
}

impl LoginServer {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        loop {
            // No clients, no deadlines: sleep until something happens.
            let timeout = self
                .deadlines
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
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
            self.expire();
        }
    }

    /// Close the clients that did not log in in time.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if at > now {
                return;
            }
            self.deadlines.pop();
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            if c.deadline > now {
                // The slot was reused: that client has its own entry.
                continue;
            }
            if c.waiting.is_some() {
                self.deadlines.push(Reverse((now + RECHECK, key)));
                continue;
            }
            let secs = self.cfg.auth_timeout.as_secs();
            info!(
                "{}: authentication timed out after {secs} s; closing",
                c.remote
            );
            c.out
                .extend_from_slice(b"* BYE Authentication timed out.\r\n");
            c.closing = true;
            // Best effort: a client that reads nothing does not get the
            // BYE, and is closed all the same.
            self.flush(key);
            self.close(key);
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
            let deadline = Instant::now() + self.cfg.auth_timeout;
            entry.insert(Client {
                stream,
                remote,
                inbuf: Vec::new(),
                out: greeting.into_bytes(),
                waiting: None,
                unsent: None,
                tag: String::new(),
                closing: false,
                deadline,
                throttled: false,
            });
            self.deadlines.push(Reverse((deadline, key)));
            self.client_event(key);
        }
    }

    /// Write what we can, answer what the client sent, read more: until
    /// the socket has nothing more, or we must stop reading.
    fn client_event(&mut self, key: usize) {
        loop {
            self.flush(key);
            if !self.may_read(key) {
                return;
            }
            self.commands(key);
            if !self.may_read(key) {
                // Write the answers first; the loop then stops.
                continue;
            }
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            match c.stream.read(&mut self.buf) {
                Ok(0) => return self.close(key),
                Ok(n) => c.inbuf.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.flush(key),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(key),
            }
        }
    }

    /// Whether the client's input may be taken now. While the tracker
    /// decides, it stays in the socket for whoever gets the client; while
    /// MAX_QUEUED_OUTPUT of answers wait unread, it stays there too, and a
    /// writable event (the client read some) resumes it.
    fn may_read(&mut self, key: usize) -> bool {
        let Some(c) = self.clients.get_mut(key) else {
            return false;
        };
        let over = c.out.len() >= MAX_QUEUED_OUTPUT;
        if over && !c.throttled {
            info!(
                "{}: {} bytes of answers unread; its input waits until it reads them",
                c.remote,
                c.out.len()
            );
        }
        c.throttled = over;
        c.waiting.is_none() && !c.closing && !over
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
            if c.waiting.is_some() || c.closing || c.out.len() >= MAX_QUEUED_OUTPUT {
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

    fn reply(&mut self, key: usize, text: &str) {
        if let Some(c) = self.clients.get_mut(key) {
            c.out.extend_from_slice(text.as_bytes());
        }
        self.flush(key);
    }
}
