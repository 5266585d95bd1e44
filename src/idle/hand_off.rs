//! The Dovecot hand-off adapter: imap processes hand clients over on the
//! `imap-hibernate` socket. One stream connection per client: VERSION
//! both ways, then one TAB-separated line whose first byte carries the
//! client socket, optionally an empty line carrying an inotify instance,
//! then the imap process closes; only then is the client ours to serve
//! (so no new imap process can race the old one).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use slab::Slab;

use super::accept::{self, Next};
use super::core::{Arrival, BYE, MAX_KEPT_TAG};
use super::park_socket::Held;
use super::tokens::{token, Source};
use crate::proto::dovecot::{self, Hibernate, HIBERNATE_SERVICE, MAX_LINE};
use crate::proto::multiplex;
use crate::sys::{self, fdpass};

/// A hand-off brings the client and at most its notify fd.
const MAX_FDS: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Version,
    Command,
    Notify,
    /// Answered `+`; waiting for the imap process to close.
    Closing,
}

struct HandOffConn {
    sock: OwnedFd,
    pid: i32,
    step: Step,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// Descriptors received, with the stream offset of the last byte that
    /// came with them: they belong to the line holding that byte.
    fds: VecDeque<(u64, OwnedFd)>,
    cmd: Option<(Hibernate, OwnedFd)>,
    notify: Option<OwnedFd>,
    /// Descriptors received so far on this connection.
    received: usize,
}

pub struct HandOff {
    /// `None` once Dovecot's master no longer sends us clients.
    listener: Option<OwnedFd>,
    conns: Slab<HandOffConn>,
    /// Hand-offs in progress at most (each holds up to 3 descriptors).
    max: usize,
    scratch: Box<[u8]>,
}

impl HandOff {
    pub fn new(listener: OwnedFd, max: usize) -> HandOff {
        HandOff {
            listener: Some(listener),
            conns: Slab::new(),
            max,
            scratch: vec![0; 8192].into_boxed_slice(),
        }
    }

    /// Take no new hand-offs: the master has a new generation of
    /// processes for them (after a reload), or is gone. Hand-offs already
    /// accepted still complete.
    pub fn close_listener(&mut self, reg: &mio::Registry) {
        if let Some(l) = self.listener.take() {
            let _ = reg.deregister(&mut SourceFd(&l.as_raw_fd()));
        }
    }

    /// The imap-hibernate listener, for a successor.
    pub fn listener(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.listener.as_ref().map(|l| l.as_fd())
    }

    /// Hand-offs in progress: each has been promised room.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Accept what waits, while parked clients and hand-offs stay under
    /// `cap` (Dovecot's master gives what is left to another process).
    /// `Err` carries the error that should pause accepting (out of
    /// descriptors).
    pub fn accept(&mut self, h: &mut Held<'_>, cap: usize) -> Result<(), io::Error> {
        loop {
            if h.core.len() + self.conns.len() >= cap {
                return Ok(());
            }
            if self.conns.len() >= self.max {
                let max = self.max;
                warn!("{max} hand-offs in progress; not accepting more for now");
                return Ok(());
            }
            let Some(listener) = &self.listener else {
                return Ok(());
            };
            match accept::next(listener.as_fd()) {
                Next::Conn(sock) => {
                    let pid = sys::peer_pid(sock.as_fd());
                    self.add(sock, pid, h);
                }
                Next::Retry => continue,
                Next::Empty => return Ok(()),
                Next::Pause(e) => return Err(e),
                Next::Failed(e) => {
                    warn!("accepting on imap-hibernate: {e}");
                    return Ok(());
                }
            }
        }
    }

    fn add(&mut self, sock: OwnedFd, pid: i32, h: &mut Held<'_>) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let registered = h.reg.register(
            &mut SourceFd(&sock.as_raw_fd()),
            token(Source::HandOff(key)),
            Interest::READABLE,
        );
        if let Err(e) = registered {
            warn!("registering an imap-hibernate connection: {e}");
            return;
        }
        // Our handshake goes first; a fresh socket has room for it.
        let _ = sys::write_now(sock.as_fd(), &dovecot::version_line(HIBERNATE_SERVICE));
        entry.insert(HandOffConn {
            sock,
            pid,
            step: Step::Version,
            buf: Vec::new(),
            offset: 0,
            fds: VecDeque::new(),
            cmd: None,
            notify: None,
            received: 0,
        });
        self.event(key, h);
    }

    /// Stop polling a finished hand-off connection. Returns whether
    /// accepting should resume (edges are not repeated).
    fn forget(&mut self, h: &HandOffConn, reg: &Registry) -> bool {
        let _ = reg.deregister(&mut SourceFd(&h.sock.as_raw_fd()));
        self.conns.len() + 1 == self.max * 9 / 10
    }

    /// Answer `-reason`, log it, close: every descriptor received goes too.
    fn fail(&mut self, key: usize, reason: &str, reg: &Registry) -> bool {
        let Some(c) = self.conns.try_remove(key) else {
            return false;
        };
        warn!("imap-hibernate connection from pid {}: {reason}", c.pid);
        let line = format!("-{reason}\n");
        let _ = sys::write_now(c.sock.as_fd(), line.as_bytes());
        self.forget(&c, reg)
    }

    /// A hand-off connection is readable. Returns whether accepting
    /// should resume.
    pub fn event(&mut self, key: usize, h: &mut Held<'_>) -> bool {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return false;
            };
            let got = match fdpass::recv(c.sock.as_fd(), &mut self.scratch) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(key, &format!("read failed: {e}"), h.reg),
            };
            if got.fds_truncated {
                return self.fail(key, "descriptors truncated in transit", h.reg);
            }
            if got.len == 0 {
                return self.closed(key, h);
            }
            let end = c.offset + c.buf.len() as u64 + got.len as u64;
            c.received += got.fds.len();
            if c.received > MAX_FDS {
                let n = c.received;
                return self.fail(
                    key,
                    &format!("{n} descriptors sent, at most {MAX_FDS}"),
                    h.reg,
                );
            }
            for fd in got.fds {
                c.fds.push_back((end - 1, fd));
            }
            c.buf.extend_from_slice(&self.scratch[..got.len]);
            if c.buf.len() > MAX_LINE {
                return self.fail(key, "line too long", h.reg);
            }
            let pending = self.conns.len() - 1;
            while let Some(c) = self.conns.get_mut(key) {
                let Some(nl) = c.buf.iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line: Vec<u8> = c.buf.drain(..=nl).collect();
                let (start, stop) = (c.offset, c.offset + line.len() as u64);
                c.offset = stop;
                let mut fds = Vec::new();
                while c.fds.front().is_some_and(|(at, _)| *at < stop) {
                    if let Some((at, fd)) = c.fds.pop_front() {
                        if at >= start {
                            fds.push(fd);
                        }
                    }
                }
                if let Err(e) = self.line(key, &line[..line.len() - 1], fds, pending, h) {
                    return self.fail(key, &e, h.reg);
                }
            }
        }
    }

    fn line(
        &mut self,
        key: usize,
        line: &[u8],
        mut fds: Vec<OwnedFd>,
        pending: usize,
        h: &mut Held<'_>,
    ) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(());
        };
        match c.step {
            Step::Version => {
                if !fds.is_empty() {
                    return Err("unexpected descriptor with the handshake".into());
                }
                dovecot::check_version(line, HIBERNATE_SERVICE)?;
                c.step = Step::Command;
            }
            Step::Command => {
                if fds.len() != 1 {
                    return Err(format!("expected the client fd, got {} fds", fds.len()));
                }
                let fd = fds.remove(0);
                let cmd = Hibernate::parse(line)
                    .map_err(|e| format!("Failed to parse client input: {e}"))?;
                // Refused here, so the imap process keeps the client.
                if cmd.tag.len() > MAX_KEPT_TAG {
                    let n = cmd.tag.len();
                    return Err(format!(
                        "IDLE tag of {n} bytes; at most {MAX_KEPT_TAG} are kept"
                    ));
                }
                sys::check_stream_socket(&fd).map_err(|e| format!("client fd: {e}"))?;
                h.core.admit(pending).map_err(|(_, why)| why)?;
                descriptors_left(h, pending)?;
                c.step = if cmd.notify_fd {
                    Step::Notify
                } else {
                    Step::Closing
                };
                debug!(
                    "user={}: hand-off from imap pid {} (tag {}, mailbox {:?})",
                    cmd.user, c.pid, cmd.tag, cmd.mailbox
                );
                c.cmd = Some((cmd, fd));
                sys::write_now(c.sock.as_fd(), b"+\n").map_err(|e| e.to_string())?;
            }
            Step::Notify => {
                if !line.is_empty() || fds.len() != 1 {
                    return Err("Expected empty notify fd line".into());
                }
                c.notify = fds.pop();
                c.step = Step::Closing;
                sys::write_now(c.sock.as_fd(), b"+\n").map_err(|e| e.to_string())?;
            }
            Step::Closing => return Err("Received unexpected line".into()),
        }
        Ok(())
    }

    /// The imap process closed: if it handed us a client, it is ours now;
    /// its notify fd becomes watches (see `notify_fds.rs`).
    fn closed(&mut self, key: usize, h: &mut Held<'_>) -> bool {
        let Some(mut c) = self.conns.try_remove(key) else {
            return false;
        };
        let resume = self.forget(&c, h.reg);
        let (cmd, fd) = match (c.step, c.cmd.take()) {
            (Step::Closing, Some(x)) => x,
            (_, Some((cmd, _fd))) => {
                // It left mid-way: it still owns the client, we drop ours.
                warn!(
                    "user={}: imap pid {} closed before finishing the hand-off",
                    cmd.user, c.pid
                );
                return resume;
            }
            _ => return resume,
        };
        let tail = cmd.return_tail();
        let who = format!("user={} imap pid {}", cmd.user, c.pid);
        let watches = match c.notify.take() {
            Some(n) => h.inotify.take_notify(n, h.reg, h.core, &who),
            None => Vec::new(),
        };
        let arrival = Arrival {
            fd,
            user: &cmd.user,
            // No cookies in Dovecot mode: the client's address rides
            // there, for anvil.
            cookie: crate::proto::anvil::pack_ip(cmd.rip),
            tag: &cmd.tag,
            in_idle: cmd.idle_cmd,
            multiplex: cmd.multiplex,
            keepalive_secs: cmd.idle_notify_interval,
            watches: watches.iter().map(|(w, p)| (*w, p.as_path())).collect(),
            state: &tail,
            from_pid: c.pid,
            carried: Default::default(),
        };
        match h
            .clients
            .adopt(h.core, h.inotify, h.reg, arrival, &[], h.now)
        {
            // Input may have arrived during the hand-off.
            Ok(id) => h
                .clients
                .readable(h.core, super::core::split_id(id).0, h.now),
            Err(r) => {
                // We said `+` and the imap process is gone: nobody else
                // will ever answer this client, so tell it before closing.
                warn!(
                    "user={}: could not park after the hand-off: {}",
                    cmd.user, r.reason
                );
                let bye = match cmd.multiplex {
                    true => multiplex::frame(BYE, true),
                    false => BYE.into(),
                };
                let _ = sys::write_now(r.fd.as_fd(), &bye);
            }
        }
        resume
    }
}

/// A parked client costs one descriptor of the budget, and one more while
/// its notify fd has to be kept: room for both is checked for this
/// hand-off and for every one in progress (`pending`), beside the notify
/// fds already kept.
fn descriptors_left(h: &Held<'_>, pending: usize) -> Result<(), String> {
    let kept = h.inotify.notify_fds();
    let used = h.core.len() + kept + 2 * (pending + 1);
    if used > h.core.max_parked() {
        let n = h.core.len();
        return Err(format!(
            "imap-idle is out of descriptors ({n} clients parked, {kept} notify fds kept)"
        ));
    }
    Ok(())
}
