//! The imap-master return adapter (Dovecot mode): a woken client goes back
//! through `imap-master`, one stream connection per client: VERSION both
//! ways, one line whose first byte carries the client socket, then `+`
//! (the imap process took it) or `-reason`. A connect that fails is
//! retried every 100 ms until the client's give-up deadline, as Dovecot
//! does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use slab::Slab;

use super::clients::IdleCore;
use super::core::{ConnId, Returning};
use super::tokens::{token, Source};
use crate::proto::dovecot::{self, Ending, MASTER_SERVICE};
use crate::proto::native::WakeReason;
use crate::sys::{self, fdpass};

const RETRY_MS: u64 = 100;

struct MasterConn {
    sock: OwnedFd,
    id: ConnId,
    greeted: bool,
    buf: Vec<u8>,
}

pub struct Masters {
    path: PathBuf,
    conns: Slab<MasterConn>,
    /// Returns under way at once, at most: each holds a descriptor and
    /// makes Dovecot start or wake an imap process.
    max: usize,
    /// Wall-clock time at the core's epoch, for `hibernation_started`.
    started_wall: SystemTime,
    scratch: Box<[u8]>,
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

impl Masters {
    pub fn new(path: PathBuf, started_wall: SystemTime, max: usize) -> Masters {
        Masters {
            path,
            conns: Slab::new(),
            max,
            started_wall,
            scratch: vec![0; 4096].into_boxed_slice(),
        }
    }

    /// Start returns for queued clients while there is room.
    pub fn pump(&mut self, core: &mut IdleCore, reg: &Registry, now: Instant) {
        while self.conns.len() < self.max {
            let Some(id) = core.pop_return() else {
                return;
            };
            let sock = match connect(&self.path) {
                Ok(s) => s,
                Err(e) => {
                    core.retry_later(id, RETRY_MS, now);
                    debug!(
                        "{}: connecting to {}: {e}; retrying",
                        core.who(id),
                        self.path.display()
                    );
                    continue;
                }
            };
            let entry = self.conns.vacant_entry();
            let registered = reg.register(
                &mut SourceFd(&sock.as_raw_fd()),
                token(Source::Master(entry.key())),
                Interest::READABLE,
            );
            let greeting = dovecot::version_line(MASTER_SERVICE);
            if let Err(e) = registered.and_then(|()| sys::write_now(sock.as_fd(), &greeting)) {
                warn!("{}: talking to imap-master: {e}", core.who(id));
                let _ = reg.deregister(&mut SourceFd(&sock.as_raw_fd()));
                core.retry_later(id, RETRY_MS, now);
                continue;
            }
            entry.insert(MasterConn {
                sock,
                id,
                greeted: false,
                buf: Vec::new(),
            });
            core.sending(id);
        }
    }

    pub fn event(&mut self, m: usize, core: &mut IdleCore, reg: &Registry, now: Instant) {
        loop {
            let Some(mc) = self.conns.get_mut(m) else {
                return;
            };
            let got = match fdpass::recv(mc.sock.as_fd(), &mut self.scratch) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.failed(m, core, reg, &format!("read failed: {e}")),
            };
            if got.len == 0 {
                return self.failed(m, core, reg, "imap-master closed the connection");
            }
            mc.buf.extend_from_slice(&self.scratch[..got.len]);
            if mc.buf.len() > 4096 {
                return self.failed(m, core, reg, "imap-master sent an overlong line");
            }
            while let Some(nl) = self
                .conns
                .get(m)
                .and_then(|mc| mc.buf.iter().position(|&b| b == b'\n'))
            {
                let mc = &mut self.conns[m];
                let line: Vec<u8> = mc.buf.drain(..=nl).collect();
                let line = &line[..line.len() - 1];
                if !mc.greeted {
                    if let Err(e) = dovecot::check_version(line, MASTER_SERVICE) {
                        return self.failed(m, core, reg, &e);
                    }
                    mc.greeted = true;
                    if let Err(e) = self.send_client(m, core, now) {
                        let why = format!("sending the client: {e}");
                        return self.failed(m, core, reg, &why);
                    }
                } else {
                    return match dovecot::parse_answer(line) {
                        Ok(()) => self.accepted(m, core, reg),
                        Err(reason) => self.failed(m, core, reg, &format!("imap-master: {reason}")),
                    };
                }
            }
        }
    }

    fn send_client(&mut self, m: usize, core: &mut IdleCore, now: Instant) -> io::Result<()> {
        let mc = &self.conns[m];
        let id = mc.id;
        let Some(r) = core.returning(id) else {
            return Err(io::Error::other("the client is gone"));
        };
        let started = self.started_wall + Duration::from_secs(r.parked_at as u64);
        let since = started.duration_since(UNIX_EPOCH).unwrap_or_default();
        let line = dovecot::master_line(
            r.user,
            (since.as_secs(), since.subsec_micros()),
            r.tag,
            r.state,
            &r.waking.input,
            ending(&r),
        );
        // The first byte carries the client; the rest follows plainly.
        fdpass::send(mc.sock.as_fd(), &line[..1], &[r.fd.as_fd()])?;
        sys::write_now(mc.sock.as_fd(), &line[1..])?;
        core.sent(id, now);
        Ok(())
    }

    fn close(&mut self, m: usize, reg: &Registry) -> Option<MasterConn> {
        let mc = self.conns.try_remove(m)?;
        let _ = reg.deregister(&mut SourceFd(&mc.sock.as_raw_fd()));
        Some(mc)
    }

    fn accepted(&mut self, m: usize, core: &mut IdleCore, reg: &Registry) {
        if let Some(mc) = self.close(m, reg) {
            core.accepted(mc.id, "imap-master");
        }
    }

    /// The imap side refused or broke: as Dovecot does, the client is not
    /// retried; unlike Dovecot, it is told before the connection closes.
    fn failed(&mut self, m: usize, core: &mut IdleCore, reg: &Registry, why: &str) {
        if let Some(mc) = self.close(m, reg) {
            if core.holds(mc.id) {
                core.give_up(mc.id, &format!("failed to unhibernate: {why}"));
            }
        }
    }

    /// The client left for another reason (deadline, shutdown): its
    /// return link goes too.
    pub fn abandon(&mut self, id: ConnId, reg: &Registry) {
        if let Some(m) = self
            .conns
            .iter()
            .find(|(_, mc)| mc.id == id)
            .map(|(m, _)| m)
        {
            self.close(m, reg);
        }
    }
}

fn ending<F>(r: &Returning<'_, F>) -> Ending {
    match (r.in_idle, r.waking.reason) {
        (false, _) => Ending::NotIdle,
        (true, WakeReason::BadDone) => Ending::BadDone,
        (true, _) if r.waking.idle_running => Ending::IdleContinue,
        (true, _) => Ending::Done,
    }
}
