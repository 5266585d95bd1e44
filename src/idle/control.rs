//! One control connection on the park socket: the peer's credentials and
//! role, and its answers not sent yet. Answers to the requests of one loop
//! turn are queued here and written out together at its end; a peer that
//! does not read is paced: its answers wait here, in order, and its next
//! requests are not read until it has taken them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::tokens::{token, Source};
use crate::proto::native::{Message, Role};
use crate::sys::{Peer, SeqPacket};

/// Answers kept for a peer that is slow to read, at most: enough for `who`
/// over a few hundred thousand connections.
const MAX_OUTBOX: usize = 4096;

/// Answers handed to the kernel per system call, at most.
pub const WRITE_BATCH: usize = 32;

pub struct Control {
    pub sock: SeqPacket,
    pub peer: Peer,
    pub role: Option<Role>,
    /// Until Hello: when the peer must have said it.
    pub hello_by: Option<Instant>,
    outbox: VecDeque<Message>,
    /// Whether we poll for room to write (answers wait).
    polls_writable: bool,
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
            polls_writable: false,
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

    /// Queue an answer for [`Control::flush`] at the end of the turn.
    pub fn queue(&mut self, msg: Message) -> Sent {
        if self.outbox.len() >= MAX_OUTBOX {
            return Sent::Failed(format!("{MAX_OUTBOX} answers unread"));
        }
        self.outbox.push_back(msg);
        Sent::Ok
    }

    /// Send what waits, as far as the peer takes it; poll for room while
    /// some is left.
    /// One system call per [`WRITE_BATCH`] answers.
    pub fn flush(&mut self, key: usize, reg: &Registry) -> Sent {
        while !self.outbox.is_empty() {
            let encoded: Vec<Vec<u8>> = self
                .outbox
                .iter()
                .take(WRITE_BATCH)
                .map(Message::encode)
                .collect();
            let packets: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            match self.sock.send_many_nowait(&packets) {
                Ok(n) => {
                    self.outbox.drain(..n.min(self.outbox.len()));
                    if n < packets.len() {
                        // Full: the rest waits for room.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Sent::Failed(format!("cannot answer ({e})")),
            }
        }
        self.interest(key, reg);
        Sent::Ok
    }

    /// The daemon's ids of the parks whose `Parked` did not go out: the
    /// mail process never heard it took them.
    pub fn unsent_parks(&mut self) -> Vec<u64> {
        self.outbox
            .drain(..)
            .filter_map(|m| match m {
                Message::Parked { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Readable always; writable while answers wait. Changed only when
    /// that changes: a turn that sent everything costs no system call.
    fn interest(&mut self, key: usize, reg: &Registry) {
        let writable = !self.outbox.is_empty();
        if writable == self.polls_writable {
            return;
        }
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let r = reg.reregister(
            &mut SourceFd(&self.sock.as_raw_fd()),
            token(Source::Control(key)),
            interest,
        );
        if r.is_ok() {
            self.polls_writable = writable;
        }
    }
}
