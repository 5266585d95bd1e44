//! One client process of the load tool (`imap-idle-lab load-worker`,
//! started by `load`): its share of the connections in one mio loop.
//!
//! Orders come on stdin, one per line: `target ADDR`, `mailbox NAME`,
//! `timeout SECS`, `rate PER_SEC`, `sources ADDR,ADDR.. FIRST` (client i
//! binds to source (FIRST + i) mod the count; `-` for none), `client USER
//! PASSWORD` (one per connection), `go`, later `mark` (answered `gap NS`: the longest keepalive gap since
//! the last mark), `finish [PER_SEC]` (DONE to every idle client,
//! at most PER_SEC a second when given) or `hangup` (close them all).
//! Reports go to stdout: `progress IDLE
//! FAILED`, `ready`, `exists INDEX NS`, `fail INDEX REASON`, then after
//! `finish`: `done INDEX NS`, `keepalives COUNT`, `keepalive_gap NS` (the
//! longest any client saw between two) and `end`. NS are
//! CLOCK_MONOTONIC nanoseconds, comparable across processes.

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::client::{Client, Event, Step};
use super::mono_ns;
use super::source;

const STDIN: Token = Token(0);
const FIRST: usize = 16;
/// Connections in the middle of connecting or logging in at once, at most.
const IN_FLIGHT: usize = 256;

struct Conn {
    stream: Option<TcpStream>,
    client: Client,
    out: Vec<u8>,
}

struct Worker {
    poll: Poll,
    target: SocketAddr,
    /// Source addresses, and the index of our first client among all.
    sources: (Vec<Ipv4Addr>, usize),
    conns: Vec<Conn>,
    next: usize,
    in_flight: usize,
    idle: usize,
    failed: usize,
    timeout_ns: u64,
    rate: f64,
    started_at: u64,
    finishing: Option<u64>,
    /// DONEs per second while finishing; 0 for all at once.
    finish_rate: f64,
    /// Clients before this index have been sent DONE (or were not idle).
    finish_next: usize,
    finish_sent: usize,
    out: io::BufWriter<io::Stdout>,
    buf: Vec<u8>,
}

pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imap-idle-lab load-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let _ = crate::sys::limits::raise_nofile();
    let stdin = io::stdin();
    let mut target = None;
    let mut mailbox = "INBOX".to_owned();
    let mut timeout = 30u64;
    let mut rate = 0.0f64;
    let mut clients = Vec::new();
    let mut sources = (Vec::new(), 0);
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut w = line.splitn(3, ' ');
        match (w.next(), w.next(), w.next()) {
            (Some("target"), Some(a), None) => {
                target = Some(a.parse::<SocketAddr>().map_err(|e| format!("{a}: {e}"))?)
            }
            (Some("mailbox"), Some(m), None) => mailbox = m.to_owned(),
            (Some("timeout"), Some(t), None) => timeout = t.parse().map_err(|_| "bad timeout")?,
            (Some("rate"), Some(r), None) => rate = r.parse().map_err(|_| "bad rate")?,
            (Some("sources"), Some(list), Some(first)) => {
                let first = first.parse().map_err(|_| "bad first client index")?;
                sources = (source::from_order(list)?, first);
            }
            (Some("client"), Some(u), Some(p)) => clients.push((u.to_owned(), p.to_owned())),
            (Some("go"), None, None) => break,
            _ => return Err(format!("unknown order {line:?}")),
        }
    }
    let target = target.ok_or("no target")?;
    let now = mono_ns();
    let conns = clients
        .iter()
        .map(|(u, p)| Conn {
            stream: None,
            client: Client::new(u, p, &mailbox, now),
            out: Vec::new(),
        })
        .collect();
    let poll = Poll::new().map_err(|e| e.to_string())?;
    crate::sys::set_nonblocking(io::stdin().as_fd(), true).map_err(|e| e.to_string())?;
    poll.registry()
        .register(
            &mut SourceFd(&io::stdin().as_raw_fd()),
            STDIN,
            Interest::READABLE,
        )
        .map_err(|e| e.to_string())?;
    let mut w = Worker {
        poll,
        target,
        sources,
        conns,
        next: 0,
        in_flight: 0,
        idle: 0,
        failed: 0,
        timeout_ns: timeout * 1_000_000_000,
        rate,
        started_at: now,
        finishing: None,
        finish_rate: 0.0,
        finish_next: 0,
        finish_sent: 0,
        out: io::BufWriter::new(io::stdout()),
        buf: vec![0; 16 * 1024],
    };
    w.run()
}

impl Worker {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut stdin_buf = Vec::new();
        let mut last_progress = (usize::MAX, usize::MAX);
        let mut ready_sent = false;
        loop {
            self.start_more();
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(100)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.to_string());
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    STDIN if !self.orders(&mut stdin_buf) => return Ok(()),
                    Token(t) if t >= FIRST => self.conn_event(t - FIRST),
                    _ => {}
                }
            }
            self.check_timeouts();
            let progress = (self.idle, self.failed);
            if progress != last_progress {
                let _ = writeln!(self.out, "progress {} {}", self.idle, self.failed);
                last_progress = progress;
            }
            if !ready_sent && self.idle + self.failed == self.conns.len() {
                let _ = writeln!(self.out, "ready");
                ready_sent = true;
            }
            self.finish_more();
            if self.finishing.is_some()
                && self.finish_next == self.conns.len()
                && self.all_finished()
            {
                let keepalives: u64 = self.conns.iter().map(|c| c.client.keepalives as u64).sum();
                let _ = writeln!(self.out, "keepalives {keepalives}");
                let gap = self.conns.iter().map(|c| c.client.keepalive_gap).max();
                let _ = writeln!(self.out, "keepalive_gap {}", gap.unwrap_or(0));
                let _ = writeln!(self.out, "end");
                let _ = self.out.flush();
                return Ok(());
            }
            let _ = self.out.flush();
        }
    }

    /// Read orders; false when the parent is gone.
    fn orders(&mut self, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match io::stdin().lock().read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if line.starts_with(b"hangup") {
                self.hang_up();
            } else if line.starts_with(b"mark") {
                // The longest gap since the last mark; the one under way
                // counts towards the next.
                let gap = self.conns.iter().map(|c| c.client.keepalive_gap).max();
                let _ = writeln!(self.out, "gap {}", gap.unwrap_or(0));
                let _ = self.out.flush();
                for c in &mut self.conns {
                    c.client.keepalive_gap = 0;
                }
            } else if let Some(rest) = line.strip_prefix(b"finish") {
                let rate = String::from_utf8_lossy(rest).trim().parse().unwrap_or(0.0);
                self.finish(rate);
            }
        }
        true
    }

    fn start_more(&mut self) {
        let elapsed = mono_ns().saturating_sub(self.started_at) as f64 / 1e9;
        while self.next < self.conns.len() && self.in_flight < IN_FLIGHT {
            if self.rate > 0.0 && self.next as f64 >= elapsed * self.rate {
                return;
            }
            let i = self.next;
            self.next += 1;
            self.in_flight += 1;
            self.conns[i].client.started = mono_ns();
            let (list, first) = &self.sources;
            let from = (!list.is_empty()).then(|| list[(first + i) % list.len()]);
            match source::connect(self.target, from) {
                Ok(mut s) => {
                    let r = self.poll.registry().register(
                        &mut s,
                        Token(FIRST + i),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    match r {
                        Ok(()) => self.conns[i].stream = Some(s),
                        Err(e) => self.failed(i, format!("register: {e}")),
                    }
                }
                Err(e) => self.failed(i, format!("connect: {e}")),
            }
        }
    }

    fn failed(&mut self, i: usize, why: String) {
        let c = &mut self.conns[i];
        let was = c.client.step;
        if matches!(was, Step::Failed | Step::Finished) {
            return;
        }
        c.client.fail(why.clone());
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if was == Step::Idle || was == Step::Done || was == Step::Logout {
            self.idle -= 1;
        } else {
            self.in_flight -= 1;
        }
        self.failed += 1;
        let _ = writeln!(self.out, "fail {i} {}", why.replace('\n', " "));
    }

    fn conn_event(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        let Some(stream) = &mut c.stream else {
            return;
        };
        if c.client.step == Step::Connecting {
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.failed(i, format!("connect: {e}")),
            }
            match stream.peer_addr() {
                Ok(_) => c.client.connected(),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.failed(i, format!("connect: {e}")),
            }
        }
        let mut events = Vec::new();
        let mut eof = false;
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let before = c.client.keepalives;
                    events.extend(c.client.input(&self.buf[..n]));
                    c.client.keepalives_at(before, mono_ns());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    events.push(Event::Fail(format!("read: {e}")));
                    break;
                }
            }
        }
        let now = mono_ns();
        for e in events {
            match e {
                Event::Send(s) => self.conns[i].out.extend_from_slice(s.as_bytes()),
                Event::Idle => {
                    self.in_flight -= 1;
                    self.idle += 1;
                }
                Event::Exists(n) => {
                    let _ = writeln!(self.out, "exists {i} {now} {n}");
                }
                Event::Fail(why) => return self.failed(i, why),
                Event::DoneOk => {
                    let c = &mut self.conns[i].client;
                    c.done_ns = Some(now.saturating_sub(c.done_sent));
                    let _ = writeln!(self.out, "done {i} {}", now.saturating_sub(c.done_sent));
                }
                Event::Finished => {
                    self.idle -= 1;
                    if let Some(mut s) = self.conns[i].stream.take() {
                        let _ = self.poll.registry().deregister(&mut s);
                    }
                    return;
                }
            }
        }
        if eof {
            let step = self.conns[i].client.step;
            return self.failed(i, format!("connection closed by server in {step:?}"));
        }
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = &mut c.stream else {
            return;
        };
        while !c.out.is_empty() {
            match stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.failed(i, format!("write: {e}")),
            }
        }
    }

    fn check_timeouts(&mut self) {
        let now = mono_ns();
        let late: Vec<(usize, Step)> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let waiting_since = match c.client.step {
                    Step::Connecting
                    | Step::Greeting
                    | Step::Login
                    | Step::Select
                    | Step::IdleStart => c.client.started,
                    Step::Done | Step::Logout => c.client.done_sent,
                    _ => return false,
                };
                c.stream.is_some() && now.saturating_sub(waiting_since) > self.timeout_ns
            })
            .map(|(i, c)| (i, c.client.step))
            .collect();
        for (i, step) in late {
            self.failed(i, format!("timeout in {step:?}"));
        }
    }

    fn finish(&mut self, rate: f64) {
        self.finishing = Some(mono_ns());
        self.finish_rate = rate;
        self.finish_more();
    }

    /// Close every connection without a word, as clients that go away.
    fn hang_up(&mut self) {
        self.finishing = Some(mono_ns());
        self.finish_next = self.conns.len();
        for c in &mut self.conns {
            if let Some(mut s) = c.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    /// Send DONE to the next clients, as many as the rate allows by now.
    fn finish_more(&mut self) {
        let Some(since) = self.finishing else {
            return;
        };
        let allowed = if self.finish_rate > 0.0 {
            (mono_ns().saturating_sub(since) as f64 / 1e9 * self.finish_rate) as usize + 1
        } else {
            usize::MAX
        };
        while self.finish_next < self.conns.len() && self.finish_sent < allowed {
            let i = self.finish_next;
            self.finish_next += 1;
            if let Some(done) = self.conns[i].client.finish(mono_ns()) {
                self.conns[i].out.extend_from_slice(done.as_bytes());
                self.flush(i);
                self.finish_sent += 1;
            }
        }
    }

    fn all_finished(&self) -> bool {
        self.conns.iter().all(|c| {
            matches!(c.client.step, Step::Finished | Step::Failed)
                || (c.client.step == Step::Logout && c.stream.is_none())
        }) || self.conns.iter().all(|c| c.stream.is_none())
    }
}
