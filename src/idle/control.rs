//! One control connection on the park socket: the peer's credentials and
//! role, and the answers it has not had room for yet. A peer that does not
//! read is paced: its answers wait here, in order, and its next requests
//! are not read until it has taken them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::tokens::{token, Source};
use crate::proto::native::{self, Message, Role};
use crate::sys::{Peer, SeqPacket};

/// Answers kept for a peer that is slow to read, at most: enough for `who`
/// over a few hundred thousand connections.
const MAX_OUTBOX: usize = 4096;

pub struct Control {
    pub sock: SeqPacket,
    pub peer: Peer,
    pub role: Option<Role>,
    /// Until Hello: when the peer must have said it.
    pub hello_by: Option<Instant>,
    outbox: VecDeque<Message>,
}

pub enum Sent {
    /// Sent, or queued until the peer reads.
    Ok,
    /// The peer is gone or will not read: close it.
    Failed(String),
}

impl Control {
    pub fn new(sock: SeqPacket, peer: Peer, hello_by: Instant) -> Control {
        Control {
            sock,
            peer,
            role: None,
            hello_by: Some(hello_by),
            outbox: VecDeque::new(),
        }
    }

    pub fn who(&self) -> String {
        let role = match self.role {
            Some(r) => format!("{r:?}"),
            None => "peer".into(),
        };
        format!("{role} pid={} uid={}", self.peer.pid, self.peer.uid)
    }

    /// Answers wait for the peer to read: take no new requests meanwhile.
    pub fn paced(&self) -> bool {
        !self.outbox.is_empty()
    }

    pub fn send(&mut self, msg: Message, key: usize, reg: &Registry) -> Sent {
        if self.outbox.is_empty() {
            match native::send(&self.sock, &msg, None) {
                Ok(()) => return Sent::Ok,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Sent::Failed(format!("cannot answer ({e})")),
            }
        }
        if self.outbox.len() >= MAX_OUTBOX {
            return Sent::Failed(format!("{MAX_OUTBOX} answers unread"));
        }
        self.outbox.push_back(msg);
        self.interest(key, reg);
        Sent::Ok
    }

    /// Send what waited, as far as the peer takes it.
    pub fn flush(&mut self, key: usize, reg: &Registry) -> Sent {
        while let Some(msg) = self.outbox.front() {
            match native::send(&self.sock, msg, None) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent::Ok,
                Err(e) => return Sent::Failed(format!("cannot answer ({e})")),
            }
        }
        self.interest(key, reg);
        Sent::Ok
    }

    /// Readable always; writable while answers wait.
    fn interest(&self, key: usize, reg: &Registry) {
        let interest = if self.outbox.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let _ = reg.reregister(
            &mut SourceFd(&self.sock.as_raw_fd()),
            token(Source::Control(key)),
            interest,
        );
    }
}
