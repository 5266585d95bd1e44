//! A mail process's link to imap-tracker: register, receive clients
//! (fresh logins and clients back from imap-idle), report them leaving,
//! answer `who`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::link::{Link, LinkError};
use crate::proto::native::{
    self, chunks, Assign, ConnInfo, Message, RecvError, Release, Role, Served, MAX_PACKET,
};
use crate::sys::SeqPacket;

pub enum FromTracker {
    /// A client to serve, with its descriptor.
    Assigned(Box<Assign>, OwnedFd),
    /// List your connections (of `user`, or all) with [`TrackerLink::described`].
    Describe { query: u64, user: Option<String> },
}

pub struct TrackerLink {
    sock: SeqPacket,
    buf: Vec<u8>,
}

impl TrackerLink {
    /// Connect, say who we are, and register; the link is non-blocking
    /// afterwards, for the caller's event loop.
    pub fn register(path: &Path, uid: u32, capacity: u32) -> Result<TrackerLink, LinkError> {
        let mut link = Link::connect(path, Role::MailProcess)?;
        if link.peer_role() != Role::Tracker {
            return Err(LinkError::Unexpected("the peer is not imap-tracker"));
        }
        match link.request(&Message::Register { uid, capacity }, None)? {
            Message::Registered => {}
            _ => return Err(LinkError::Unexpected("expected Registered")),
        }
        let sock = link.into_socket();
        sock.set_nonblocking(true)?;
        Ok(TrackerLink {
            sock,
            buf: vec![0; MAX_PACKET + 1],
        })
    }

    /// Register again after the link was lost (the tracker restarted, or
    /// the link broke), and report every connection still served, so that
    /// the tracker knows them again: it takes each only with the user's
    /// cookie, and only users of our uid (unless we run as root).
    pub fn rejoin(
        path: &Path,
        uid: u32,
        capacity: u32,
        serving: Vec<Served>,
    ) -> Result<TrackerLink, LinkError> {
        let link = TrackerLink::register(path, uid, capacity)?;
        let pieces = chunks(serving);
        let n = pieces.len();
        for (i, conns) in pieces.into_iter().enumerate() {
            let last = i + 1 == n;
            native::send_patiently(&link.sock, &Message::Serving { conns, last }, None)?;
        }
        Ok(link)
    }

    /// The next message, or `None` when there is none for now.
    pub fn recv(&mut self) -> Result<Option<FromTracker>, LinkError> {
        loop {
            let incoming = match native::recv(&self.sock, &mut self.buf) {
                Ok(i) => i,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LinkError::Recv(e)),
            };
            return match (incoming.msg, incoming.fd) {
                (Message::Assign(a), Some(fd)) => Ok(Some(FromTracker::Assigned(Box::new(a), fd))),
                (Message::Describe { query, user }, _) => {
                    Ok(Some(FromTracker::Describe { query, user }))
                }
                (Message::Error { reason }, _) => Err(LinkError::Peer(reason)),
                _ => Err(LinkError::Unexpected(
                    "message not meant for a mail process",
                )),
            };
        }
    }

    pub fn released(&self, conn: u64, how: Release) -> io::Result<()> {
        native::send_patiently(&self.sock, &Message::Released { conn, how }, None)
    }

    pub fn described(&self, query: u64, conns: Vec<ConnInfo>) -> io::Result<()> {
        let pieces = chunks(conns);
        let n = pieces.len();
        for (i, conns) in pieces.into_iter().enumerate() {
            let last = i + 1 == n;
            native::send_patiently(&self.sock, &Message::Described { query, conns, last }, None)?;
        }
        Ok(())
    }
}

impl AsRawFd for TrackerLink {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
