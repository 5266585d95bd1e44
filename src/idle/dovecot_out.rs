//! Dovecot mode, second half: a woken client goes back through
//! `imap-master`, one stream connection per client: VERSION both ways,
//! one line whose first byte carries the client socket, then `+` (the
//! imap process took it) or `-reason`. A connect that fails is retried
//! every 100 ms until the client's give-up deadline, as Dovecot does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::daemon::{Daemon, FIRST_MASTER};
use super::parked::{Phase, Waking};
use super::timers::Millis;
use crate::proto::dovecot::{self, Ending, MASTER_SERVICE};
use crate::proto::native::WakeReason;
use crate::sys::{self, fdpass};

/// Returns under way at once, at most: each holds a descriptor and makes
/// Dovecot start or wake an imap process.
const MAX_MASTERS: usize = 64;
const RETRY_MS: Millis = 100;

pub(super) struct MasterConn {
    sock: OwnedFd,
    key: u32,
    serial: u32,
    greeted: bool,
    buf: Vec<u8>,
}

fn connect(path: &std::path::Path) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

impl Daemon {
    pub(super) fn pump_masters(&mut self) {
        let now = self.now();
        while self.masters.len() < MAX_MASTERS {
            let Some((key, serial)) = self.next_queued() else {
                return;
            };
            let path = self.master_socket.clone();
            let sock = match connect(&path) {
                Ok(s) => s,
                Err(e) => {
                    self.retry_later(key, RETRY_MS, now);
                    debug!(
                        "{}: connecting to {}: {e}; retrying",
                        self.who(key),
                        path.display()
                    );
                    continue;
                }
            };
            let entry = self.masters.vacant_entry();
            let registered = self.poll.registry().register(
                &mut SourceFd(&sock.as_raw_fd()),
                Token(FIRST_MASTER + entry.key()),
                Interest::READABLE,
            );
            let greeting = dovecot::version_line(MASTER_SERVICE);
            if let Err(e) = registered.and_then(|()| sys::write_now(sock.as_fd(), &greeting)) {
                warn!("{}: talking to imap-master: {e}", self.who(key));
                self.return_queue.push_back((key, serial));
                return;
            }
            let m = entry.key() as u32;
            entry.insert(MasterConn {
                sock,
                key,
                serial,
                greeted: false,
                buf: Vec::new(),
            });
            let conn = &mut self.conns[key as usize];
            conn.phase = Phase::InFlight;
            if let Some(w) = conn.waking_mut() {
                w.master = Some(m);
            }
        }
    }

    pub(super) fn master_event(&mut self, m: usize) {
        loop {
            let Some(mc) = self.masters.get_mut(m) else {
                return;
            };
            let got = match fdpass::recv(mc.sock.as_fd(), &mut self.scratch[..4096]) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.master_failed(m, &format!("read failed: {e}")),
            };
            if got.len == 0 {
                return self.master_failed(m, "imap-master closed the connection");
            }
            mc.buf.extend_from_slice(&self.scratch[..got.len]);
            if mc.buf.len() > 4096 {
                return self.master_failed(m, "imap-master sent an overlong line");
            }
            while let Some(nl) = self
                .masters
                .get(m)
                .and_then(|mc| mc.buf.iter().position(|&b| b == b'\n'))
            {
                let mc = &mut self.masters[m];
                let line: Vec<u8> = mc.buf.drain(..=nl).collect();
                let line = &line[..line.len() - 1];
                if !mc.greeted {
                    if let Err(e) = dovecot::check_version(line, MASTER_SERVICE) {
                        return self.master_failed(m, &e);
                    }
                    mc.greeted = true;
                    if let Err(e) = self.send_to_master(m) {
                        return self.master_failed(m, &format!("sending the client: {e}"));
                    }
                } else {
                    return match dovecot::parse_answer(line) {
                        Ok(()) => self.master_accepted(m),
                        Err(reason) => self.master_failed(m, &format!("imap-master: {reason}")),
                    };
                }
            }
        }
    }

    fn send_to_master(&mut self, m: usize) -> io::Result<()> {
        let mc = &self.masters[m];
        let Some(conn) = self
            .conns
            .get(mc.key as usize)
            .filter(|c| c.serial == mc.serial)
        else {
            return Err(io::Error::other("the client is gone"));
        };
        let Some(w) = conn.waking() else {
            return Err(io::Error::other("the client is not waking"));
        };
        let started = self.started_wall + Duration::from_secs(conn.parked_at as u64);
        let since = started.duration_since(UNIX_EPOCH).unwrap_or_default();
        let line = dovecot::master_line(
            self.users.name(conn.user),
            (since.as_secs(), since.subsec_micros()),
            conn.tag(),
            conn.state(),
            &w.input,
            ending(conn.in_idle, w),
        );
        // The first byte carries the client; the rest follows plainly.
        fdpass::send(mc.sock.as_fd(), &line[..1], &[conn.fd.as_fd()])?;
        sys::write_now(mc.sock.as_fd(), &line[1..])?;
        let key = mc.key;
        self.sample_wake(key);
        Ok(())
    }

    /// Close a return link; its client forgets it, so nothing later can
    /// close whatever reuses the slot.
    fn close_master(&mut self, m: usize) -> Option<MasterConn> {
        let mc = self.masters.try_remove(m)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&mc.sock.as_raw_fd()));
        if let Some(conn) = self.conns.get_mut(mc.key as usize) {
            if let Some(w) = conn.waking_mut().filter(|w| w.master == Some(m as u32)) {
                w.master = None;
            }
        }
        Some(mc)
    }

    fn master_accepted(&mut self, m: usize) {
        let Some(mc) = self.close_master(m) else {
            return;
        };
        if self
            .conns
            .get(mc.key as usize)
            .is_some_and(|c| c.serial == mc.serial)
        {
            self.finish_return(mc.key, "imap-master");
        }
    }

    /// The imap side refused or broke: as Dovecot does, the client is not
    /// retried; unlike Dovecot, it is told before the connection closes.
    fn master_failed(&mut self, m: usize, why: &str) {
        let Some(mc) = self.close_master(m) else {
            return;
        };
        if self
            .conns
            .get(mc.key as usize)
            .is_some_and(|c| c.serial == mc.serial)
        {
            self.give_up(mc.key, &format!("failed to unhibernate: {why}"));
        }
    }

    /// The client's own master connection, when it is dropped for another
    /// reason (deadline, shutdown).
    pub(super) fn forget_master(&mut self, w: &Waking) {
        if let Some(m) = w.master {
            self.close_master(m as usize);
        }
    }
}

fn ending(in_idle: bool, w: &Waking) -> Ending {
    match (in_idle, w.reason) {
        (false, _) => Ending::NotIdle,
        (true, WakeReason::BadDone) => Ending::BadDone,
        (true, _) if w.idle_running => Ending::IdleContinue,
        (true, _) => Ending::Done,
    }
}
