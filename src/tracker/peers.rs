//! The tracker's peer connections: login processes, mail processes,
//! imap-idle, admins, and our own connections to imap-idle for `who`.
//! Owns their sockets, their place in the poll and the answers a slow
//! reader has not taken yet (bounded in bytes per peer); knows nothing of
//! routing, so the caller says when a mail process waits for room.
//!
//! Closing is two steps: [`Peers::close`] takes the peer off the poll and
//! out of sight at once, while its slot stays taken (its key is not reused)
//! until the daemon collects it with [`Peers::take_closed`] and undoes what
//! the peer left behind elsewhere.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use log::warn;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::proto::native::{self, Incoming, Message, RecvError, Role, MAX_PACKET};
use crate::sys::{Peer, SeqPacket};

/// Tokens from here on are peers (slab key + `FIRST_PEER`); the daemon
/// keeps the ones below for its own sockets.
pub const FIRST_PEER: usize = 16;

/// The poll token of peer `key`.
fn token(key: usize) -> Token {
    Token(FIRST_PEER + key)
}

/// The peer a poll token stands for, if it is a peer's.
pub fn key_of(token: Token) -> Option<usize> {
    token.0.checked_sub(FIRST_PEER)
}

pub struct PeerConn {
    sock: SeqPacket,
    cred: Peer,
    role: Option<Role>,
    /// Pid from the peer's Hello (SO_PEERCRED's when it said nothing).
    pid: u32,
    /// Came in on the control socket: only admin requests are taken.
    control: bool,
    /// We connected to imap-idle for this `who` query.
    query: Option<u64>,
    /// Answers that did not fit in the socket yet, encoded, in order.
    outbox: VecDeque<Vec<u8>>,
    /// Their size in bytes.
    outbox_bytes: usize,
    /// False once closed: then only `take_closed` sees it.
    open: bool,
}

impl PeerConn {
    pub fn who(&self) -> String {
        let role = self.role.map_or("peer".into(), |r| format!("{r:?}"));
        format!("{role} pid={} uid={}", self.pid, self.cred.uid)
    }

    pub fn role(&self) -> Option<Role> {
        self.role
    }

    pub fn set_role(&mut self, role: Role) {
        self.role = Some(role);
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn set_pid(&mut self, pid: u32) {
        self.pid = pid;
    }

    /// The uid the kernel vouches for (SO_PEERCRED).
    pub fn uid(&self) -> u32 {
        self.cred.uid
    }

    pub fn query(&self) -> Option<u64> {
        self.query
    }

    /// What the kernel says of the peer (SO_PEERCRED).
    pub fn cred(&self) -> &Peer {
        &self.cred
    }

    /// Came in on the control socket.
    pub fn control(&self) -> bool {
        self.control
    }

    /// Send at once, bypassing the outbox: for a last word before closing,
    /// or a descriptor the caller handles the failure of.
    pub fn send_now(&self, msg: &Message, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        native::send(&self.sock, msg, fd)
    }
}

pub struct Peers {
    slab: Slab<PeerConn>,
    /// Keys closed and not yet collected, in order.
    closed: VecDeque<usize>,
    buf: Vec<u8>,
    /// Bytes of answers one peer may leave unread before it is closed.
    max_outbox: usize,
    /// Peers that came in on the main socket and the control socket, open
    /// or not yet collected.
    main: usize,
    admins: usize,
}

impl Peers {
    pub fn new(max_outbox: usize) -> Peers {
        Peers {
            slab: Slab::new(),
            closed: VecDeque::new(),
            buf: vec![0; MAX_PACKET + 1],
            max_outbox,
            main: 0,
            admins: 0,
        }
    }

    /// Connections from the main socket, and from the control socket.
    pub fn counts(&self) -> (usize, usize) {
        (self.main, self.admins)
    }

    /// Take a connection on, readable; None (logged) if the poll refuses.
    /// The caller reads it once: packets that came before registration
    /// raise no new edge.
    pub fn insert(
        &mut self,
        registry: &Registry,
        sock: SeqPacket,
        cred: Peer,
        control: bool,
        query: Option<u64>,
    ) -> Option<usize> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(
            &mut SourceFd(&sock.as_raw_fd()),
            token(key),
            Interest::READABLE,
        ) {
            warn!("registering a connection: {e}");
            return None;
        }
        entry.insert(PeerConn {
            sock,
            pid: cred.pid as u32,
            cred,
            role: None,
            control,
            query,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            open: true,
        });
        match (control, query) {
            (true, _) => self.admins += 1,
            (false, None) => self.main += 1,
            (false, Some(_)) => {}
        }
        Some(key)
    }

    /// Pids of the imap-idle daemons linked to us now.
    pub fn idle_pids(&self) -> std::collections::HashSet<u32> {
        self.slab
            .iter()
            .filter(|(_, p)| p.role() == Some(Role::Idle) && p.query().is_none())
            .map(|(_, p)| p.pid())
            .collect()
    }

    pub fn get(&self, key: usize) -> Option<&PeerConn> {
        self.slab.get(key).filter(|p| p.open)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut PeerConn> {
        self.slab.get_mut(key).filter(|p| p.open)
    }

    pub fn contains(&self, key: usize) -> bool {
        self.get(key).is_some()
    }

    /// The next packet from `key`; None when there is no such peer.
    pub fn recv(&mut self, key: usize) -> Option<Result<Incoming, RecvError>> {
        let p = self.slab.get(key).filter(|p| p.open)?;
        Some(native::recv(&p.sock, &mut self.buf))
    }

    /// Send without an fd. A peer slow to read gets it later, in order; a
    /// peer that does not read at all is closed. False when the peer is
    /// gone or was closed here. `blocked`: the peer is a mail process
    /// waiting for room (see [`Peers::update_interest`]).
    pub fn send(&mut self, registry: &Registry, key: usize, msg: &Message, blocked: bool) -> bool {
        let max = self.max_outbox;
        let Some(p) = self.get_mut(key) else {
            return false;
        };
        let bytes = msg.encode();
        if p.outbox.is_empty() {
            match p.sock.send(&bytes, &[]) {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    warn!("{}: cannot send ({e}); closing", p.who());
                    self.close(registry, key);
                    return false;
                }
            }
        }
        if p.outbox_bytes + bytes.len() > max {
            warn!(
                "{}: more than {max} bytes of answers unread (--max-outbox); closing",
                p.who()
            );
            self.close(registry, key);
            return false;
        }
        p.outbox_bytes += bytes.len();
        p.outbox.push_back(bytes);
        self.update_interest(registry, key, blocked);
        true
    }

    /// Send what waited, as far as the socket takes it.
    pub fn flush_outbox(&mut self, registry: &Registry, key: usize, blocked: bool) {
        loop {
            let Some(p) = self.get_mut(key) else {
                return;
            };
            let Some(bytes) = p.outbox.front() else {
                break;
            };
            match p.sock.send(bytes, &[]) {
                Ok(()) => {
                    p.outbox_bytes -= bytes.len();
                    p.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("{}: cannot send ({e}); closing", p.who());
                    return self.close(registry, key);
                }
            }
        }
        self.update_interest(registry, key, blocked);
    }

    /// Readable always; writable while something waits for room: our
    /// outbox, or (`blocked`) the assignments a full mail process skips.
    pub fn update_interest(&self, registry: &Registry, key: usize, blocked: bool) {
        let Some(p) = self.get(key) else {
            return;
        };
        let interest = if blocked || !p.outbox.is_empty() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = registry.reregister(&mut SourceFd(&p.sock.as_raw_fd()), token(key), interest);
    }

    /// Off the poll and out of sight; collected by [`Peers::take_closed`].
    pub fn close(&mut self, registry: &Registry, key: usize) {
        let Some(p) = self.get_mut(key) else {
            return;
        };
        p.open = false;
        let _ = registry.deregister(&mut SourceFd(&p.sock.as_raw_fd()));
        self.closed.push_back(key);
    }

    /// The next closed peer, oldest first; its key is free again after.
    pub fn take_closed(&mut self) -> Option<(usize, PeerConn)> {
        while let Some(key) = self.closed.pop_front() {
            if let Some(p) = self.slab.try_remove(key) {
                match (p.control, p.query) {
                    (true, _) => self.admins -= 1,
                    (false, None) => self.main -= 1,
                    (false, Some(_)) => {}
                }
                return Some((key, p));
            }
        }
        None
    }
}
