//! The load tool's conductor: start worker processes, give each its share
//! of the clients, follow their progress, deliver mail, collect figures.
//! Phased (`connect`, `deliver`, `wait_exists`, `finish`) so `bench` can
//! measure the server between the steps.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::mono_ns;
use super::report::Report;
use super::source;
use crate::lab::serve::maildir;

/// Most connections one worker process holds: the hard open-file limit is
/// often 20,000, and the worker needs a few fds of its own.
pub const PER_WORKER: usize = 8000;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub host: String,
    pub port: u16,
    pub clients: usize,
    /// (user, password); client `i` logs in as `accounts[i % len]`.
    pub accounts: Vec<(String, String)>,
    pub mailbox: String,
    /// Connections started per second in each worker; 0 for no limit.
    pub connect_rate: f64,
    pub timeout_secs: u64,
    /// Worker processes; 0 picks enough for [`PER_WORKER`] each.
    pub procs: usize,
    /// Source addresses 127.0.0.2.. to spread the clients over; `None`
    /// picks enough for [`super::source::PER_SOURCE`] each, 0 binds none.
    pub source_addrs: Option<usize>,
    /// Source addresses to leave out at the start of 127.0.0.2.. (for
    /// several loads to one server at once).
    pub source_skip: usize,
    /// Progress on stderr.
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            host: "127.0.0.1".into(),
            port: 143,
            clients: 100,
            accounts: Vec::new(),
            mailbox: "INBOX".into(),
            connect_rate: 0.0,
            timeout_secs: 30,
            procs: 0,
            source_addrs: None,
            source_skip: 0,
            progress: true,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Delivery {
    /// Maildir root per user, `%u` for the user name.
    Maildir(String),
    /// A shell command per delivery, `%u` for the user name.
    Command(String),
}

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    base: usize,
    idle: usize,
    failed: usize,
    ready: bool,
    ended: bool,
}

pub struct Load {
    opts: LoadOptions,
    workers: Vec<WorkerProc>,
    rx: Receiver<(usize, String)>,
    /// Per client: its account index.
    account_of: Vec<usize>,
    /// Per client: EXISTS arrival times (monotonic ns).
    arrivals: Vec<Vec<u64>>,
    failures: Vec<Option<String>>,
    done_ns: Vec<u64>,
    keepalives: u64,
    keepalive_gap_ns: u64,
    /// Workers that answered the last mark, and the longest gap they told.
    marks: usize,
    mark_gap_ns: u64,
    /// (account index, delivery time ns).
    deliveries: Vec<(usize, u64)>,
    pub connect_secs: f64,
}

impl Load {
    /// Start the workers and return once every client is idle or failed.
    pub fn connect(opts: &LoadOptions) -> Result<Load, String> {
        if opts.accounts.is_empty() {
            return Err("no accounts to log in with".into());
        }
        let target: SocketAddr = (opts.host.as_str(), opts.port)
            .to_socket_addrs()
            .map_err(|e| format!("{}:{}: {e}", opts.host, opts.port))?
            .next()
            .ok_or_else(|| format!("{}: no address", opts.host))?;
        let sources = source::sources(target, opts.clients, opts.source_addrs, opts.source_skip)?;
        let procs = if opts.procs > 0 {
            opts.procs
        } else {
            opts.clients.div_ceil(PER_WORKER).max(1)
        };
        let exe = std::env::current_exe().map_err(|e| format!("finding myself: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let mut workers = Vec::new();
        let per = opts.clients.div_ceil(procs);
        let account_of: Vec<usize> = (0..opts.clients).map(|i| i % opts.accounts.len()).collect();
        let started = Instant::now();
        for w in 0..procs {
            let base = w * per;
            let end = ((w + 1) * per).min(opts.clients);
            if base >= end {
                break;
            }
            let mut child = Command::new(&exe)
                .arg("load-worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting a worker: {e}"))?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("worker pipes missing".into());
            };
            let mut orders = format!(
                "target {target}\nmailbox {}\ntimeout {}\nrate {}\nsources {} {base}\n",
                opts.mailbox,
                opts.timeout_secs,
                opts.connect_rate / procs as f64,
                source::to_order(&sources),
            );
            for &a in &account_of[base..end] {
                let (u, p) = &opts.accounts[a];
                orders.push_str(&format!("client {u} {p}\n"));
            }
            orders.push_str("go\n");
            stdin
                .write_all(orders.as_bytes())
                .map_err(|e| format!("talking to a worker: {e}"))?;
            let tx = tx.clone();
            let idx = workers.len();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((idx, line)).is_err() {
                        break;
                    }
                }
                let _ = tx.send((idx, "end".into()));
            });
            workers.push(WorkerProc {
                child,
                stdin,
                base,
                idle: 0,
                failed: 0,
                ready: false,
                ended: false,
            });
        }
        let mut load = Load {
            opts: opts.clone(),
            workers,
            rx,
            arrivals: vec![Vec::new(); opts.clients],
            failures: vec![None; opts.clients],
            done_ns: Vec::new(),
            keepalives: 0,
            keepalive_gap_ns: 0,
            marks: 0,
            mark_gap_ns: 0,
            deliveries: Vec::new(),
            account_of,
            connect_secs: 0.0,
        };
        let mut bar = Progress::new(opts.clients, opts.progress);
        while !load.workers.iter().all(|w| w.ready || w.ended) {
            match load.rx.recv_timeout(Duration::from_millis(200)) {
                Ok((w, line)) => load.line(w, &line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            bar.show(load.idle(), load.failed());
        }
        bar.done(load.idle(), load.failed());
        load.connect_secs = started.elapsed().as_secs_f64();
        Ok(load)
    }

    /// The client processes, for measuring what the client side costs.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.child.id()).collect()
    }

    pub fn idle(&self) -> usize {
        self.workers.iter().map(|w| w.idle).sum()
    }

    pub fn failed(&self) -> usize {
        self.workers.iter().map(|w| w.failed).sum()
    }

    fn line(&mut self, w: usize, line: &str) {
        let Some(worker) = self.workers.get_mut(w) else {
            return;
        };
        let mut f = line.splitn(4, ' ');
        let num = |s: Option<&str>| s.and_then(|v| v.parse::<u64>().ok());
        match f.next() {
            Some("progress") => {
                worker.idle = num(f.next()).unwrap_or(0) as usize;
                worker.failed = num(f.next()).unwrap_or(0) as usize;
            }
            Some("ready") => worker.ready = true,
            Some("exists") => {
                if let (Some(i), Some(ns)) = (num(f.next()), num(f.next())) {
                    if let Some(a) = self.arrivals.get_mut(worker.base + i as usize) {
                        a.push(ns);
                    }
                }
            }
            Some("fail") => {
                if let Some(i) = num(f.next()) {
                    let why: Vec<&str> = f.collect();
                    if let Some(slot) = self.failures.get_mut(worker.base + i as usize) {
                        *slot = Some(why.join(" "));
                    }
                }
            }
            Some("done") => {
                if let (Some(_), Some(ns)) = (num(f.next()), num(f.next())) {
                    self.done_ns.push(ns);
                }
            }
            Some("keepalives") => self.keepalives += num(f.next()).unwrap_or(0),
            Some("gap") => {
                self.marks += 1;
                self.mark_gap_ns = self.mark_gap_ns.max(num(f.next()).unwrap_or(0));
            }
            Some("keepalive_gap") => {
                self.keepalive_gap_ns = self.keepalive_gap_ns.max(num(f.next()).unwrap_or(0))
            }
            Some("end") => {
                worker.ended = true;
                worker.ready = true;
            }
            _ => {}
        }
    }

    fn pump(&mut self, until: Instant) {
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok((w, line)) => self.line(w, &line),
                Err(_) => return,
            }
        }
    }

    /// Deliver `count` messages, one every `1/rate` s, round-robin over the
    /// accounts that have idle clients.
    pub fn deliver(&mut self, how: &Delivery, count: usize, rate: f64) -> Result<(), String> {
        let mut targets: Vec<usize> = (0..self.opts.accounts.len())
            .filter(|&a| {
                self.account_of
                    .iter()
                    .zip(&self.failures)
                    .any(|(&acc, f)| acc == a && f.is_none())
            })
            .collect();
        targets.sort_unstable();
        if targets.is_empty() {
            return Err("no idle client to deliver to".into());
        }
        let gap = if rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::ZERO
        };
        let start = Instant::now();
        for k in 0..count {
            self.pump(start + gap * k as u32);
            let a = targets[k % targets.len()];
            let user = &self.opts.accounts[a].0;
            let mut t = mono_ns();
            match how {
                Delivery::Maildir(pattern) => {
                    let root = pattern.replace("%u", user);
                    let body = format!(
                        "From: load@localhost\r\nTo: {user}\r\nSubject: load {k}\r\n\r\nmessage {k}\r\n"
                    );
                    // The clock starts at the rename, when the message
                    // becomes visible to a watcher.
                    maildir::deliver_then(
                        root.as_ref(),
                        &self.opts.mailbox,
                        body.as_bytes(),
                        || t = mono_ns(),
                    )
                    .map_err(|e| format!("delivering to {root}: {e}"))?;
                }
                Delivery::Command(cmd) => {
                    let status = Command::new("/bin/sh")
                        .arg("-c")
                        .arg(cmd.replace("%u", user))
                        .status()
                        .map_err(|e| format!("running {cmd:?}: {e}"))?;
                    if !status.success() {
                        return Err(format!("{cmd:?} for {user}: {status}"));
                    }
                }
            }
            self.deliveries.push((a, t));
        }
        Ok(())
    }

    fn expected(&self) -> usize {
        self.deliveries
            .iter()
            .map(|(a, _)| {
                self.account_of
                    .iter()
                    .zip(&self.failures)
                    .filter(|(&acc, f)| acc == *a && f.is_none())
                    .count()
            })
            .sum()
    }

    fn received(&self) -> usize {
        self.arrivals.iter().map(Vec::len).sum()
    }

    /// Wait until every idle client has seen an EXISTS per delivery to its
    /// user, or `timeout`.
    pub fn wait_exists(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.received() < self.expected() && Instant::now() < end {
            self.pump((Instant::now() + Duration::from_millis(100)).min(end));
        }
    }

    /// End IDLE everywhere (timing DONE -> OK), log out, and report.
    pub fn finish(self) -> Report {
        self.finish_paced(0.0)
    }

    /// `finish`, sending at most `rate` DONEs a second (0: all at once), so
    /// DONE -> OK measures a client typing rather than a stampede.
    pub fn finish_paced(self, rate: f64) -> Report {
        let per_worker = rate / self.workers.len().max(1) as f64;
        self.end(&format!("finish {per_worker}\n"), rate)
    }

    /// The longest gap between two keepalives any client saw since the
    /// last mark (or the start); a gap under way counts towards the next.
    pub fn mark(&mut self) -> Duration {
        (self.marks, self.mark_gap_ns) = (0, 0);
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"mark\n");
        }
        let end = Instant::now() + Duration::from_secs(10);
        while self.marks < self.workers.len() && Instant::now() < end {
            self.pump((Instant::now() + Duration::from_millis(50)).min(end));
        }
        Duration::from_nanos(self.mark_gap_ns)
    }

    /// Close every connection without DONE or LOGOUT, and report.
    pub fn hang_up(self) -> Report {
        self.end("hangup\n", 0.0)
    }

    fn end(mut self, order: &str, rate: f64) -> Report {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(order.as_bytes());
        }
        let pacing = if rate > 0.0 {
            Duration::from_secs_f64(self.opts.clients as f64 / rate)
        } else {
            Duration::ZERO
        };
        let end = Instant::now() + pacing + Duration::from_secs(self.opts.timeout_secs);
        while !self.workers.iter().all(|w| w.ended) && Instant::now() < end {
            self.pump((Instant::now() + Duration::from_millis(100)).min(end));
        }
        for w in &mut self.workers {
            if !w.ended {
                let _ = w.child.kill();
            }
            let _ = w.child.wait();
        }
        self.report()
    }

    fn report(&self) -> Report {
        let mut latencies = Vec::new();
        let mut missing = 0;
        for (c, arrivals) in self.arrivals.iter().enumerate() {
            if self.failures[c].is_some() {
                continue;
            }
            let mut arrivals = arrivals.clone();
            arrivals.sort_unstable();
            let mut next = 0;
            for &(_, t) in self
                .deliveries
                .iter()
                .filter(|(a, _)| *a == self.account_of[c])
            {
                // The first arrival at or after this delivery.
                while next < arrivals.len() && arrivals[next] < t {
                    next += 1;
                }
                match arrivals.get(next) {
                    Some(&at) => {
                        latencies.push((at - t) as f64 / 1e6);
                        next += 1;
                    }
                    None => missing += 1,
                }
            }
        }
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for why in self.failures.iter().flatten() {
            match reasons.iter_mut().find(|(r, _)| r == why) {
                Some((_, n)) => *n += 1,
                None => reasons.push((why.clone(), 1)),
            }
        }
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        Report {
            target: format!("{}:{}", self.opts.host, self.opts.port),
            requested: self.opts.clients,
            users: self.opts.accounts.len().min(self.opts.clients),
            workers: self.workers.len(),
            idle: self.opts.clients - self.failures.iter().flatten().count(),
            failures: reasons,
            connect_secs: self.connect_secs,
            deliveries: self.deliveries.len(),
            exists_expected: latencies.len() + missing,
            exists_received: latencies.len(),
            latency_ms: latencies,
            done_ms: self.done_ns.iter().map(|&n| n as f64 / 1e6).collect(),
            keepalives: self.keepalives,
            keepalive_gap_ms: self.keepalive_gap_ns as f64 / 1e6,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

struct Progress {
    total: usize,
    on: bool,
    tty: bool,
    last_decile: usize,
}

impl Progress {
    fn new(total: usize, on: bool) -> Progress {
        let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
        Progress {
            total,
            on,
            tty,
            last_decile: 0,
        }
    }

    fn show(&mut self, idle: usize, failed: usize) {
        if !self.on || self.total == 0 {
            return;
        }
        let done = idle + failed;
        if self.tty {
            let width = 30;
            let filled = done * width / self.total;
            eprint!(
                "\rconnecting [{}{}] {idle}/{} idle, {failed} failed",
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.total
            );
        } else {
            let decile = done * 10 / self.total;
            if decile > self.last_decile {
                self.last_decile = decile;
                eprintln!("connecting: {idle}/{} idle, {failed} failed", self.total);
            }
        }
    }

    fn done(&mut self, idle: usize, failed: usize) {
        self.show(idle, failed);
        if self.on && self.tty {
            eprintln!();
        }
    }
}
