//! The successor's side of a hand-over (`imap-idle --take-over`): connect
//! to the running daemon's park socket as `Successor`, take its listening
//! sockets, then adopt every batch of parked connections it sends through
//! the same path as a park, and confirm each batch with the ids taken.
//! What could not be adopted (full, out of descriptors, a watch that
//! failed) is not confirmed, so the predecessor keeps it. Done before the
//! event loop starts: nothing else is served until the last batch is in.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::accept;
use super::config::Config;
use super::core::{Arrival, Carried, ConnId};
use super::park_socket::Held;
use crate::proto::native::{self, Handed, ListenerKind, Message, ProtoError, Role, MAX_PACKET};
use crate::setup::{setup, SetupError};
use crate::sys::activation::Activated;
use crate::sys::{notify, SeqPacket};

/// How long the successor waits for the predecessor's next packet.
const PATIENCE: Duration = Duration::from_secs(10);

pub struct Predecessor {
    sock: SeqPacket,
    pid: i32,
    listeners: Vec<(ListenerKind, OwnedFd)>,
    /// The predecessor's start, on our clock.
    epoch: Instant,
    scratch: Box<[u8]>,
}

/// With `--take-over`: reach the running daemon and take its listeners.
pub fn connect(cfg: &Config) -> Result<Option<Predecessor>, SetupError> {
    if !cfg.take_over {
        return Ok(None);
    }
    let path = &cfg.park_socket;
    let what = format_args!("taking over from the imap-idle on {}", path.display());
    let sock = setup(what, SeqPacket::connect(path, false))?;
    setup(what, sock.set_recv_timeout(Some(PATIENCE)))?;
    let hello = Message::Hello {
        role: Role::Successor,
        pid: std::process::id(),
    };
    setup(what, native::send_patiently(&sock, &hello, None))?;
    let mut scratch = vec![0; MAX_PACKET + 1].into_boxed_slice();
    let mut next = || match native::recv(&sock, &mut scratch) {
        Ok(i) => Ok(i),
        Err(e) => Err(SetupError(format!("{what}: {e}"))),
    };
    let pid = match next()?.msg {
        Message::Hello {
            role: Role::Idle,
            pid,
        } => pid as i32,
        Message::Error { reason } => return Err(SetupError(format!("{what}: refused: {reason}"))),
        other => return Err(SetupError(format!("{what}: unexpected {other:?}"))),
    };
    let got = next()?;
    let now = Instant::now();
    let Message::Listeners { kinds, age_ms } = got.msg else {
        return Err(SetupError(format!("{what}: expected its listeners")));
    };
    info!(
        "taking over from imap-idle pid {pid}: {} listeners",
        kinds.len()
    );
    Ok(Some(Predecessor {
        listeners: kinds.into_iter().zip(got.fds).collect(),
        sock,
        pid,
        epoch: now
            .checked_sub(Duration::from_millis(age_ms))
            .unwrap_or(now),
        scratch,
    }))
}

/// The park socket: the predecessor's, or bound as configured.
/// Whether the path is ours to remove at exit comes third.
pub fn park_listener(
    p: &mut Option<Predecessor>,
    cfg: &Config,
    shared: bool,
    activated: &mut Activated,
) -> Result<(SeqPacket, PathBuf, bool), SetupError> {
    match p.as_mut().and_then(|p| p.take(ListenerKind::Park)) {
        Some(fd) => Ok((SeqPacket::from(fd), cfg.park_socket.clone(), true)),
        None => accept::listen(cfg, shared, activated),
    }
}

/// Our clock's start: the predecessor's, so each user's keepalives keep
/// falling on the same instants; else now.
pub fn epoch(p: &Option<Predecessor>) -> Instant {
    p.as_ref().map_or_else(Instant::now, |p| p.epoch)
}

impl Predecessor {
    /// The predecessor's listening socket of `kind`, if it sent one.
    pub fn take(&mut self, kind: ListenerKind) -> Option<OwnedFd> {
        let i = self.listeners.iter().position(|(k, _)| *k == kind)?;
        Some(self.listeners.swap_remove(i).1)
    }

    /// Adopt batch after batch until the predecessor has handed all, or
    /// the hand-over breaks off (whatever was not confirmed stays there).
    pub fn adopt_all(mut self, h: &mut Held<'_>) {
        let (mut taken, mut kept) = (0usize, 0usize);
        let end = loop {
            let incoming = match self.next() {
                Ok(i) => i,
                Err(e) => {
                    let reason = format!("cannot go on: {e}");
                    let _ = native::send(&self.sock, &Message::Error { reason }, None);
                    break format!("broken off: {e}");
                }
            };
            match incoming.msg {
                Message::Handing { batch, conns } => {
                    let n = conns.len();
                    let ids = self.adopt_batch(conns, incoming.fds, h);
                    taken += ids.len();
                    kept += n - ids.len();
                    if !self.confirm(batch, &ids, h) {
                        taken -= ids.len();
                        kept += ids.len();
                        break "broken off: the predecessor did not take our answer".into();
                    }
                }
                Message::HandedAll => break "over".into(),
                Message::Error { reason } => break format!("broken off by it: {reason}"),
                other => break format!("broken off: unexpected {other:?}"),
            }
        };
        info!(
            "take-over from pid {} {end}: {taken} connections taken, {kept} left with it",
            self.pid
        );
        let _ = notify::notify(&format!("MAINPID={}", std::process::id()));
    }

    /// The next packet. Unlike a park, a batch whose descriptors were cut
    /// short (our open-file limit) is still taken: the first ones arrived,
    /// and those are adopted; the predecessor keeps the others.
    fn next(&mut self) -> Result<native::Incoming, String> {
        let got = self
            .sock
            .recv(&mut self.scratch)
            .map_err(|e| e.to_string())?;
        if got.len == 0 && got.fds.is_empty() {
            return Err("the predecessor closed the connection".into());
        }
        if got.truncated || got.len > MAX_PACKET {
            return Err(ProtoError::TooLarge.to_string());
        }
        let msg = Message::decode(&self.scratch[..got.len]).map_err(|e| e.to_string())?;
        let (expected, n) = (msg.fds_expected(), got.fds.len());
        let cut_short = got.fds_truncated && n < expected;
        if n != expected && !cut_short {
            return Err(ProtoError::FdCount { expected, got: n }.to_string());
        }
        if cut_short {
            warn!("out of descriptors: {n} of a batch's {expected} arrived");
        }
        Ok(native::Incoming {
            msg,
            fd: None,
            fds: got.fds,
        })
    }

    /// Adopt what we can of one batch; the predecessor's ids of those
    /// taken, each with ours.
    fn adopt_batch(
        &self,
        conns: Vec<Handed>,
        fds: Vec<OwnedFd>,
        h: &mut Held<'_>,
    ) -> Vec<(u64, ConnId)> {
        let mut fds = fds.into_iter();
        let mut ids = Vec::with_capacity(conns.len());
        for c in conns {
            // Descriptors cut short: the rest stay with the predecessor.
            let Some(fd) = fds.next() else { break };
            let notify = match c.notify {
                true => match fds.next() {
                    Some(n) => Some(n),
                    None => break,
                },
                false => None,
            };
            // A copy of the predecessor's notify fd: shared, reopened or
            // kept here as at a hand-off.
            let who = format!("user={}", c.park.user);
            let watches = match notify {
                Some(n) => h.inotify.take_notify(n, h.reg, h.core, &who),
                None => Vec::new(),
            };
            let watches = watches.iter().map(|(w, p)| (*w, p.as_path())).collect();
            let arrival = Arrival {
                fd,
                multiplex: c.multiplex > 0,
                user: &c.park.user,
                cookie: c.park.cookie,
                tag: &c.park.tag,
                in_idle: c.park.in_idle,
                keepalive_secs: c.park.keepalive_secs,
                watches,
                state: &c.park.state,
                from_pid: self.pid,
                carried: Carried {
                    predecessor: true,
                    keepalive_at_ms: c.keepalive_at_ms,
                    partial: &c.partial,
                    parked_secs: c.parked_secs,
                    switched: c.multiplex == 2,
                },
            };
            match h
                .clients
                .adopt(h.core, h.inotify, h.reg, arrival, &c.park.watch, h.now)
            {
                Ok(id) => ids.push((c.id, id)),
                // Our copy closes; the predecessor keeps the client.
                Err(r) => warn!(
                    "user={}: not taken over ({}); the predecessor keeps it",
                    c.park.user, r.reason
                ),
            }
        }
        ids
    }

    /// Tell the predecessor which it may drop. If that cannot be said, it
    /// keeps them, so we must not.
    fn confirm(&self, batch: u64, ids: &[(u64, ConnId)], h: &mut Held<'_>) -> bool {
        let msg = Message::TookOver {
            batch,
            ids: ids.iter().map(|(theirs, _)| *theirs).collect(),
        };
        if let Err(e) = native::send_patiently(&self.sock, &msg, None) {
            warn!("confirming a take-over batch: {e}");
            for (_, ours) in ids {
                h.core.not_taken_over(*ours);
            }
            return false;
        }
        true
    }
}
