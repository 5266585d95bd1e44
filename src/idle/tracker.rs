//! Returning woken connections to the tracker over one SEQPACKET link.
//!
//! The daemon keeps its copy of a client descriptor until the tracker says
//! `Accepted`, so a link that dies mid-way loses nothing: whatever was in
//! flight is sent again on the next link. Refusals are retried with backoff
//! until the connection's give-up deadline.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::Interest;

use super::daemon::{Daemon, TRACKER};
use super::parked::Phase;
use super::timers::Millis;
use crate::proto::native::{self, Gone, Message, Park, RecvError, Return, Role};
use crate::sys::SeqPacket;

/// Returns sent and not yet answered, at most.
const WINDOW: usize = 64;
/// Gone notices kept while the tracker is unreachable, at most.
const MAX_GONE: usize = 4096;
const BACKOFF_MIN_MS: Millis = 100;
const BACKOFF_MAX_MS: Millis = 2000;

enum Link {
    Down,
    /// Connected, our Hello sent, waiting for the tracker's.
    Greeting(SeqPacket),
    Ready(SeqPacket),
}

pub(super) struct Tracker {
    link: Link,
    pub in_flight: usize,
    gone: VecDeque<Gone>,
    /// When to try connecting again.
    pub retry_at: Option<Millis>,
    backoff_ms: Millis,
    writable: bool,
    /// Unreachable since this outage began (logged once per outage).
    outage_logged: bool,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            link: Link::Down,
            in_flight: 0,
            gone: VecDeque::new(),
            retry_at: None,
            backoff_ms: BACKOFF_MIN_MS,
            writable: false,
            outage_logged: false,
        }
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
}

impl Daemon {
    /// Connect if there is something to send, then send what fits.
    pub(super) fn pump_tracker(&mut self) {
        let now = self.now();
        let queued = !self.return_queue.is_empty();
        let t = &mut self.tracker;
        if matches!(t.link, Link::Down) {
            let pending = queued || !t.gone.is_empty();
            if !pending {
                // Nothing to deliver: no reason to wake up for a retry
                // (a past deadline here would make the loop spin).
                t.retry_at = t.retry_at.filter(|&at| at > now);
                return;
            }
            if t.retry_at.is_some_and(|at| at > now) {
                return;
            }
            self.connect_tracker(now);
        }
        let Link::Ready(_) = self.tracker.link else {
            return;
        };
        while self.tracker.writable {
            if let Some(g) = self.tracker.gone.front() {
                match self.send_tracker(&Message::Gone(g.clone()), None) {
                    Ok(true) => {
                        self.tracker.gone.pop_front();
                        continue;
                    }
                    Ok(false) => return,
                    Err(e) => return self.tracker_down(&format!("sending: {e}")),
                }
            }
            if self.tracker.in_flight >= WINDOW {
                return;
            }
            let Some((key, serial)) = self.next_queued() else {
                return;
            };
            let conn = &self.conns[key as usize];
            let Some(w) = conn.waking() else {
                continue;
            };
            let msg = Message::Return(Return {
                id: conn.id(key),
                park: Park {
                    user: self.users.name(conn.user).to_owned(),
                    cookie: conn.cookie,
                    tag: conn.tag().to_owned(),
                    in_idle: conn.in_idle,
                    keepalive_secs: conn.keepalive_secs,
                    watch: w.watch.clone(),
                    state: conn.state().to_vec(),
                },
                reason: w.reason,
                input: w.input.clone(),
                idle_running: w.idle_running,
                parked_secs: ((now / 1000) as u32).saturating_sub(conn.parked_at),
            });
            let sent = match &self.tracker.link {
                Link::Ready(sock) => native::send(sock, &msg, Some(conn.fd.as_fd())),
                _ => return,
            };
            match sent {
                Ok(()) => {
                    self.sample_wake(key);
                    self.conns[key as usize].phase = Phase::InFlight;
                    self.tracker.in_flight += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.return_queue.push_front((key, serial));
                    self.tracker.writable = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.return_queue.push_front((key, serial));
                }
                Err(e) => {
                    self.return_queue.push_front((key, serial));
                    return self.tracker_down(&format!("sending: {e}"));
                }
            }
        }
    }

    /// Ok(false): the link is full for now.
    fn send_tracker(
        &mut self,
        msg: &Message,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<bool> {
        let Some(sock) = self.tracker.sock() else {
            return Ok(false);
        };
        match native::send(sock, msg, fd) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tracker.writable = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn connect_tracker(&mut self, now: Millis) {
        let path = &self.cfg.tracker_socket;
        let sock = match SeqPacket::connect(path, true) {
            Ok(s) => s,
            Err(e) => {
                let waiting = self.return_queue.len();
                let t = &mut self.tracker;
                if !t.outage_logged {
                    warn!(
                        "tracker at {} unreachable ({e}); {waiting} connections waiting, retrying",
                        path.display(),
                    );
                    t.outage_logged = true;
                }
                t.retry_at = Some(now + t.backoff_ms);
                t.backoff_ms = (t.backoff_ms * 2).min(BACKOFF_MAX_MS);
                return;
            }
        };
        let fd = sock.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            TRACKER,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("registering the tracker link: {e}");
            self.tracker.retry_at = Some(now + self.tracker.backoff_ms);
            return;
        }
        let hello = Message::Hello {
            role: Role::Idle,
            pid: std::process::id(),
        };
        if let Err(e) = native::send(&sock, &hello, None) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            warn!("greeting the tracker: {e}");
            self.tracker.retry_at = Some(now + self.tracker.backoff_ms);
            return;
        }
        self.tracker.link = Link::Greeting(sock);
        self.tracker.writable = true;
        self.tracker.retry_at = None;
    }

    /// The link failed: everything in flight goes back to the queue front,
    /// in its original order.
    pub(super) fn tracker_down(&mut self, why: &str) {
        if let Some(sock) = self.tracker.sock() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&sock.as_raw_fd()));
        }
        self.tracker.link = Link::Down;
        self.tracker.writable = false;
        let mut back: Vec<(u32, u32)> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.phase == Phase::InFlight)
            .map(|(k, c)| {
                c.phase = Phase::Queued;
                (k as u32, c.serial)
            })
            .collect();
        back.sort_by_key(|&(_, serial)| serial);
        for entry in back.into_iter().rev() {
            self.return_queue.push_front(entry);
        }
        self.tracker.in_flight = 0;
        let now = self.now();
        self.tracker.retry_at = Some(now + self.tracker.backoff_ms);
        let waiting = self.return_queue.len() + self.tracker.gone.len();
        if waiting == 0 {
            info!("tracker link closed ({why})");
        } else if !self.tracker.outage_logged {
            warn!("tracker link lost ({why}); {waiting} connections and notices waiting, retrying");
            self.tracker.outage_logged = true;
        }
    }

    pub(super) fn tracker_event(&mut self) {
        self.tracker.writable = true;
        loop {
            let Some(sock) = self.tracker.sock() else {
                return;
            };
            let incoming = match native::recv(sock, &mut self.scratch) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.tracker_down(&e.to_string()),
            };
            let greeting = matches!(self.tracker.link, Link::Greeting(_));
            match incoming.msg {
                Message::Hello {
                    role: Role::Tracker,
                    ..
                } if greeting => {
                    if let Link::Greeting(sock) =
                        std::mem::replace(&mut self.tracker.link, Link::Down)
                    {
                        self.tracker.link = Link::Ready(sock);
                    }
                    if self.tracker.outage_logged {
                        info!("tracker reachable again");
                    }
                    self.tracker.outage_logged = false;
                    self.tracker.backoff_ms = BACKOFF_MIN_MS;
                }
                Message::Accepted { id } if !greeting => self.return_accepted(id),
                Message::Rejected { id, reason } if !greeting => {
                    let now = self.now();
                    self.return_rejected(id, &reason, now)
                }
                Message::Error { reason } => {
                    return self.tracker_down(&format!("tracker reported: {reason}"))
                }
                other => {
                    let name = format!("{other:?}");
                    let name = name.split([' ', '(', '{']).next().unwrap_or("?").to_owned();
                    return self.tracker_down(&format!("unexpected {name} from the tracker"));
                }
            }
        }
    }

    fn in_flight_key(&self, id: u64) -> Option<u32> {
        let key = id as u32;
        let conn = self.conns.get(key as usize)?;
        (conn.serial == (id >> 32) as u32 && conn.phase == Phase::InFlight).then_some(key)
    }

    fn return_accepted(&mut self, id: u64) {
        match self.in_flight_key(id) {
            Some(key) => self.finish_return(key, "the tracker"),
            None => debug!("tracker accepted unknown connection {id:#x}; ignored"),
        }
    }

    fn return_rejected(&mut self, id: u64, reason: &str, now: Millis) {
        let Some(key) = self.in_flight_key(id) else {
            debug!("tracker rejected unknown connection {id:#x}; ignored");
            return;
        };
        self.tracker.in_flight = self.tracker.in_flight.saturating_sub(1);
        let Some(w) = self.conns[key as usize].waking_mut() else {
            return;
        };
        w.attempts += 1;
        let attempts = w.attempts;
        let delay = (BACKOFF_MIN_MS << attempts.min(5)).min(BACKOFF_MAX_MS);
        self.retry_later(key, delay, now);
        if attempts == 1 {
            warn!(
                "{}: tracker refused the return ({reason}); retrying",
                self.who(key)
            );
        } else {
            debug!(
                "{}: tracker refused the return again ({reason})",
                self.who(key)
            );
        }
    }

    /// A refused return's retry time came.
    pub(super) fn retry_return(&mut self, key: u32, now: Millis) {
        let gen = self.timers.new_gen();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let Some(give_up_at) = conn.waking().map(|w| w.give_up_at) else {
            return;
        };
        if now >= give_up_at {
            return self.give_up(key, "the tracker did not take the connection back in time");
        }
        conn.phase = Phase::Queued;
        conn.timer_gen = gen;
        let serial = conn.serial;
        self.timers.schedule(give_up_at, key, gen);
        self.return_queue.push_back((key, serial));
    }
}
