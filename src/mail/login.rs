//! A login process's link to imap-tracker: hand authenticated clients
//! over and learn, per client, whether a mail process took it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use crate::link::{Link, LinkError};
use crate::proto::native::{self, Login, Message, RecvError, Role, MAX_PACKET};
use crate::sys::SeqPacket;

pub enum LoginAnswer {
    /// A mail process has the client: close ours, say nothing more to it.
    Accepted { seq: u64, conn: u64, pid: u32 },
    /// Nobody took it: tell the client `reason`.
    Refused { seq: u64, reason: String },
}

pub struct LoginLink {
    sock: SeqPacket,
    buf: Vec<u8>,
}

impl LoginLink {
    /// Connect and say who we are; non-blocking afterwards.
    pub fn connect(path: &Path) -> Result<LoginLink, LinkError> {
        let link = Link::connect(path, Role::Login)?;
        if link.peer_role() != Role::Tracker {
            return Err(LinkError::Unexpected("the peer is not imap-tracker"));
        }
        let sock = link.into_socket();
        sock.set_nonblocking(true)?;
        Ok(LoginLink {
            sock,
            buf: vec![0; MAX_PACKET + 1],
        })
    }

    /// Hand `client` over; keep it open until the answer for `login.seq`.
    /// Never waits: `WouldBlock` means the tracker is slow to read; try
    /// again when the link is writable (the client is still only yours).
    pub fn hand_over(&self, client: BorrowedFd<'_>, login: &Login) -> io::Result<()> {
        native::send(&self.sock, &Message::Login(login.clone()), Some(client))
    }

    /// The next answer, or `None` when there is none for now.
    pub fn answer(&mut self) -> Result<Option<LoginAnswer>, LinkError> {
        loop {
            let msg = match native::recv(&self.sock, &mut self.buf) {
                Ok(i) => i.msg,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LinkError::Recv(e)),
            };
            return match msg {
                Message::LoginAccepted { seq, conn, pid } => {
                    Ok(Some(LoginAnswer::Accepted { seq, conn, pid }))
                }
                Message::LoginRefused { seq, reason } => {
                    Ok(Some(LoginAnswer::Refused { seq, reason }))
                }
                Message::Error { reason } => Err(LinkError::Peer(reason)),
                _ => Err(LinkError::Unexpected(
                    "message not meant for a login process",
                )),
            };
        }
    }
}

impl AsRawFd for LoginLink {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
