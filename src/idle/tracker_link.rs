//! The tracker link adapter: woken connections go back to the tracker
//! over one SEQPACKET link, with a window of returns in flight.
//!
//! The core keeps its copy of a client descriptor until the tracker says
//! `Accepted`, so a link that dies mid-way loses nothing: whatever was in
//! flight is sent again on the next link. Gone notices wait here while the
//! tracker is unreachable. The link stays up while we hold anybody, so
//! that a tracker that restarts is found again at once: the first thing
//! each new link carries is our report of every connection held
//! (`Holding`), from which a restarted tracker knows them again and one
//! that outlived our crash drops what we no longer hold.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::clients::IdleCore;
use super::tokens::{token, Source};
use crate::proto::native::{self, Gone, Message, RecvError, Role, MAX_PACKET};
use crate::sys::SeqPacket;

/// Gone notices kept while the tracker is unreachable, at most.
const MAX_GONE: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(2000);

enum Link {
    Down,
    /// Connected, our Hello sent, waiting for the tracker's.
    Greeting(SeqPacket),
    Ready(SeqPacket),
}

pub struct TrackerLink {
    path: PathBuf,
    link: Link,
    gone: VecDeque<Gone>,
    /// The report of what we hold, still to send on this link.
    report: VecDeque<Message>,
    /// When to try connecting again.
    retry_at: Option<Instant>,
    backoff: Duration,
    writable: bool,
    /// Unreachable since this outage began (logged once per outage).
    outage_logged: bool,
    scratch: Box<[u8]>,
    /// Returns sent and not yet answered, at most (`--return-window`).
    window: usize,
}

impl TrackerLink {
    pub fn new(path: PathBuf, window: usize) -> TrackerLink {
        TrackerLink {
            path,
            link: Link::Down,
            gone: VecDeque::new(),
            report: VecDeque::new(),
            retry_at: None,
            backoff: BACKOFF_MIN,
            writable: false,
            outage_logged: false,
            scratch: vec![0; MAX_PACKET + 1].into_boxed_slice(),
            window,
        }
    }

    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub fn tell_gone(&mut self, gone: Gone) {
        if self.gone.len() >= MAX_GONE {
            if let Some(old) = self.gone.pop_front() {
                warn!(
                    "user={}: tracker unreachable; its notice that a connection is gone is lost",
                    old.user
                );
            }
        }
        self.gone.push_back(gone);
    }

    /// Last chance for queued notices before exit: one non-blocking try.
    pub fn flush_before_exit(&mut self) {
        if let Link::Ready(sock) = &self.link {
            while let Some(g) = self.gone.pop_front() {
                if native::send(sock, &Message::Gone(g), None).is_err() {
                    break;
                }
            }
        }
        if !self.gone.is_empty() {
            warn!(
                "{} notices of gone connections not delivered to the tracker",
                self.gone.len()
            );
        }
    }

    fn sock(&self) -> Option<&SeqPacket> {
        match &self.link {
            Link::Down => None,
            Link::Greeting(s) | Link::Ready(s) => Some(s),
        }
    }

    /// Connect if there is something to send, then send what fits.
    pub fn pump(&mut self, core: &mut IdleCore, reg: &Registry, now: Instant) {
        if matches!(self.link, Link::Down) {
            if !core.has_queued() && self.gone.is_empty() && core.is_empty() {
                // Nothing to deliver: no reason to wake up for a retry
                // (a past deadline here would make the loop spin).
                self.retry_at = self.retry_at.filter(|&at| at > now);
                return;
            }
            if self.retry_at.is_some_and(|at| at > now) {
                return;
            }
            self.connect(core, reg, now);
        }
        let Link::Ready(_) = self.link else {
            return;
        };
        while self.writable {
            if let Some(part) = self.report.pop_front() {
                match self.send(&part) {
                    Ok(true) => continue,
                    Ok(false) => return self.report.push_front(part),
                    Err(e) => return self.down(core, reg, now, &format!("sending: {e}")),
                }
            }
            if let Some(g) = self.gone.front() {
                match self.send(&Message::Gone(g.clone())) {
                    Ok(true) => {
                        self.gone.pop_front();
                        continue;
                    }
                    Ok(false) => return,
                    Err(e) => return self.down(core, reg, now, &format!("sending: {e}")),
                }
            }
            if core.in_flight() >= self.window {
                return;
            }
            let Some(id) = core.pop_return() else {
                return;
            };
            let now_secs = (core.millis(now) / 1000) as u32;
            let Some(r) = core.returning(id) else {
                continue;
            };
            let msg = Message::Return(r.message(id, now_secs));
            let sent = match &self.link {
                Link::Ready(sock) => native::send(sock, &msg, Some(r.fd.as_fd())),
                _ => return,
            };
            match sent {
                Ok(()) => {
                    core.sending(id);
                    core.sent(id, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    core.not_sent(id);
                    self.writable = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => core.not_sent(id),
                Err(e) => {
                    core.not_sent(id);
                    return self.down(core, reg, now, &format!("sending: {e}"));
                }
            }
        }
    }

    /// Ok(false): the link is full for now.
    fn send(&mut self, msg: &Message) -> io::Result<bool> {
        let Some(sock) = self.sock() else {
            return Ok(false);
        };
        match native::send(sock, msg, None) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn connect(&mut self, core: &IdleCore, reg: &Registry, now: Instant) {
        let sock = match SeqPacket::connect(&self.path, true) {
            Ok(s) => s,
            Err(e) => {
                if !self.outage_logged {
                    warn!(
                        "tracker at {} unreachable ({e}); {} connections waiting, retrying",
                        self.path.display(),
                        core.queued(),
                    );
                    self.outage_logged = true;
                }
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        let fd = sock.as_raw_fd();
        if let Err(e) = reg.register(
            &mut SourceFd(&fd),
            token(Source::TrackerLink),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("registering the tracker link: {e}");
            self.retry_at = Some(now + self.backoff);
            return;
        }
        let hello = Message::Hello {
            role: Role::Idle,
            pid: std::process::id(),
        };
        if let Err(e) = native::send(&sock, &hello, None) {
            let _ = reg.deregister(&mut SourceFd(&fd));
            warn!("greeting the tracker: {e}");
            self.retry_at = Some(now + self.backoff);
            return;
        }
        self.link = Link::Greeting(sock);
        self.writable = true;
        self.retry_at = None;
    }

    /// The link failed: everything in flight goes back to the queue front.
    fn down(&mut self, core: &mut IdleCore, reg: &Registry, now: Instant, why: &str) {
        if let Some(sock) = self.sock() {
            let _ = reg.deregister(&mut SourceFd(&sock.as_raw_fd()));
        }
        self.link = Link::Down;
        self.writable = false;
        self.report.clear();
        core.link_lost();
        self.retry_at = Some(now + self.backoff);
        let waiting = core.queued() + self.gone.len();
        if waiting == 0 {
            info!("tracker link closed ({why})");
        } else if !self.outage_logged {
            warn!("tracker link lost ({why}); {waiting} connections and notices waiting, retrying");
            self.outage_logged = true;
        }
    }

    pub fn event(&mut self, core: &mut IdleCore, reg: &Registry, now: Instant) {
        self.writable = true;
        loop {
            let sock = match &self.link {
                Link::Down => return,
                Link::Greeting(s) | Link::Ready(s) => s,
            };
            let incoming = match native::recv(sock, &mut self.scratch) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.down(core, reg, now, &e.to_string()),
            };
            let greeting = matches!(self.link, Link::Greeting(_));
            match incoming.msg {
                Message::Hello {
                    role: Role::Tracker,
                    ..
                } if greeting => {
                    if let Link::Greeting(sock) = std::mem::replace(&mut self.link, Link::Down) {
                        self.link = Link::Ready(sock);
                    }
                    let held = core.held();
                    if self.outage_logged {
                        info!(
                            "tracker reachable again; reporting {} connections",
                            held.len()
                        );
                    }
                    let parts = native::chunks(held);
                    let n = parts.len();
                    self.report = (parts.into_iter().enumerate())
                        .map(|(i, held)| Message::Holding {
                            held,
                            last: i + 1 == n,
                        })
                        .collect();
                    self.outage_logged = false;
                    self.backoff = BACKOFF_MIN;
                }
                Message::Accepted { id } if !greeting => {
                    if !core.accepted(id, "the tracker") {
                        log::debug!("tracker accepted unknown connection {id:#x}; ignored");
                    }
                }
                Message::Rejected { id, reason } if !greeting => {
                    if !core.rejected(id, &reason, now) {
                        log::debug!("tracker rejected unknown connection {id:#x}; ignored");
                    }
                }
                Message::Error { reason } => {
                    let why = format!("tracker reported: {reason}");
                    return self.down(core, reg, now, &why);
                }
                other => {
                    let name = format!("{other:?}");
                    let name = name.split([' ', '(', '{']).next().unwrap_or("?").to_owned();
                    let why = format!("unexpected {name} from the tracker");
                    return self.down(core, reg, now, &why);
                }
            }
        }
    }
}
