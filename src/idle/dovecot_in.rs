//! Dovecot mode, first half: imap processes hand clients over on the
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
use mio::{Interest, Token};

use super::control::Adopt;
use super::daemon::{Daemon, FIRST_HIBERNATE, MAX_CONTROLS};
use crate::proto::dovecot::{self, Hibernate, HIBERNATE_SERVICE, MAX_LINE};
use crate::sys::{self, fdpass};

const BYE_FULL: &[u8] = b"* BYE [UNAVAILABLE] Server is busy, please reconnect.\r\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Version,
    Command,
    Notify,
    /// Answered `+`; waiting for the imap process to close.
    Closing,
}

pub(super) struct HibernateConn {
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
}

impl Daemon {
    pub(super) fn accept_hibernate(&mut self, sock: OwnedFd, pid: i32) {
        let entry = self.hibernating.vacant_entry();
        let key = entry.key();
        let registered = self.poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            Token(FIRST_HIBERNATE + key),
            Interest::READABLE,
        );
        if let Err(e) = registered {
            warn!("registering an imap-hibernate connection: {e}");
            return;
        }
        // Our handshake goes first; a fresh socket has room for it.
        let _ = sys::write_now(sock.as_fd(), &dovecot::version_line(HIBERNATE_SERVICE));
        entry.insert(HibernateConn {
            sock,
            pid,
            step: Step::Version,
            buf: Vec::new(),
            offset: 0,
            fds: VecDeque::new(),
            cmd: None,
            notify: None,
        });
        self.report_capacity();
        self.hibernate_event(key);
    }

    fn close_hibernate(&mut self, key: usize) {
        if let Some(h) = self.hibernating.try_remove(key) {
            self.forget_hibernate(&h);
        }
    }

    /// A hand-off connection is gone: stop polling it, and resume
    /// accepting if the cap had stopped us (edges are not repeated).
    fn forget_hibernate(&mut self, h: &HibernateConn) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&h.sock.as_raw_fd()));
        if self.hibernating.len() + 1 == MAX_CONTROLS * 9 / 10 {
            self.accept_hibernates();
        }
        self.report_capacity();
    }

    /// Answer `-reason`, log it, close: every descriptor received goes too.
    fn fail_hibernate(&mut self, key: usize, reason: &str) {
        if let Some(h) = self.hibernating.get(key) {
            warn!("imap-hibernate connection from pid {}: {reason}", h.pid);
            let line = format!("-{reason}\n");
            let _ = sys::write_now(h.sock.as_fd(), line.as_bytes());
        }
        self.close_hibernate(key);
    }

    pub(super) fn hibernate_event(&mut self, key: usize) {
        loop {
            let Some(h) = self.hibernating.get_mut(key) else {
                return;
            };
            let got = match fdpass::recv(h.sock.as_fd(), &mut self.scratch[..8192]) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail_hibernate(key, &format!("read failed: {e}")),
            };
            if got.fds_truncated {
                return self.fail_hibernate(key, "descriptors truncated in transit");
            }
            if got.len == 0 {
                return self.hibernate_closed(key);
            }
            let end = h.offset + h.buf.len() as u64 + got.len as u64;
            for fd in got.fds {
                h.fds.push_back((end - 1, fd));
            }
            h.buf.extend_from_slice(&self.scratch[..got.len]);
            if h.buf.len() > MAX_LINE {
                return self.fail_hibernate(key, "line too long");
            }
            while let Some(h) = self.hibernating.get_mut(key) {
                let Some(nl) = h.buf.iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line: Vec<u8> = h.buf.drain(..=nl).collect();
                let (start, stop) = (h.offset, h.offset + line.len() as u64);
                h.offset = stop;
                let mut fds = Vec::new();
                while h.fds.front().is_some_and(|(at, _)| *at < stop) {
                    if let Some((at, fd)) = h.fds.pop_front() {
                        if at >= start {
                            fds.push(fd);
                        }
                    }
                }
                if let Err(e) = self.hibernate_line(key, &line[..line.len() - 1], fds) {
                    return self.fail_hibernate(key, &e);
                }
            }
        }
    }

    fn hibernate_line(
        &mut self,
        key: usize,
        line: &[u8],
        mut fds: Vec<OwnedFd>,
    ) -> Result<(), String> {
        let Some(h) = self.hibernating.get_mut(key) else {
            return Ok(());
        };
        match h.step {
            Step::Version => {
                if !fds.is_empty() {
                    return Err("unexpected descriptor with the handshake".into());
                }
                dovecot::check_version(line, HIBERNATE_SERVICE)?;
                h.step = Step::Command;
            }
            Step::Command => {
                if fds.len() != 1 {
                    return Err(format!("expected the client fd, got {} fds", fds.len()));
                }
                let fd = fds.remove(0);
                let cmd = Hibernate::parse(line)
                    .map_err(|e| format!("Failed to parse client input: {e}"))?;
                sys::check_stream_socket(&fd).map_err(|e| format!("client fd: {e}"))?;
                let used = self.conns.len() + self.hibernating.len() - 1;
                if used >= self.max_parked {
                    return Err(format!("imap-idle is full ({used} clients)"));
                }
                let h = &mut self.hibernating[key];
                h.step = if cmd.notify_fd {
                    Step::Notify
                } else {
                    Step::Closing
                };
                debug!(
                    "user={}: hand-off from imap pid {} (tag {}, mailbox {:?})",
                    cmd.user, h.pid, cmd.tag, cmd.mailbox
                );
                h.cmd = Some((cmd, fd));
                sys::write_now(h.sock.as_fd(), b"+\n").map_err(|e| e.to_string())?;
            }
            Step::Notify => {
                if !line.is_empty() || fds.len() != 1 {
                    return Err("Expected empty notify fd line".into());
                }
                h.notify = fds.pop();
                h.step = Step::Closing;
                sys::write_now(h.sock.as_fd(), b"+\n").map_err(|e| e.to_string())?;
            }
            Step::Closing => return Err("Received unexpected line".into()),
        }
        Ok(())
    }

    /// The imap process closed: if it handed us a client, it is ours now.
    fn hibernate_closed(&mut self, key: usize) {
        let Some(mut h) = self.hibernating.try_remove(key) else {
            return;
        };
        self.forget_hibernate(&h);
        let (cmd, fd) = match (h.step, h.cmd.take()) {
            (Step::Closing, Some(c)) => c,
            (_, Some((cmd, _fd))) => {
                // It left mid-way: it still owns the client, we drop ours.
                warn!(
                    "user={}: imap pid {} closed before finishing the hand-off",
                    cmd.user, h.pid
                );
                return;
            }
            _ => return,
        };
        let tail = cmd.return_tail();
        let spare = fd.try_clone().ok();
        let adopted = self.adopt(Adopt {
            fd,
            notify: h.notify.take(),
            user: &cmd.user,
            cookie: [0; 16],
            tag: &cmd.tag,
            in_idle: cmd.idle_cmd,
            keepalive_secs: cmd.idle_notify_interval,
            watch: &[],
            state: &tail,
            from_pid: h.pid,
        });
        match adopted {
            // Input may have arrived during the hand-off.
            Ok(key) => self.client_event(key),
            Err((_, reason)) => {
                // We said `+` and the imap process is gone: nobody else
                // will ever answer this client, so tell it before closing.
                warn!(
                    "user={}: could not park after the hand-off: {reason}",
                    cmd.user
                );
                if let Some(fd) = spare {
                    let _ = sys::write_now(fd.as_fd(), BYE_FULL);
                }
            }
        }
        self.report_capacity();
    }
}
