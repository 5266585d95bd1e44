//! A blocking native-protocol connection for peers that ask one thing at a
//! time: mail processes parking a client, operators' tools asking for stats.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::native::{self, Message, RecvError, Role, Stats, MAX_PACKET};
use crate::sys::{Ready, SeqPacket};

/// How long a request waits for its answer before giving up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Link {
    sock: SeqPacket,
    buf: Vec<u8>,
    peer_role: Role,
    /// The pid the peer gave in its Hello.
    peer_pid: u32,
}

#[derive(Debug)]
pub enum LinkError {
    Io(io::Error),
    Recv(RecvError),
    /// The peer sent `Error` and closed.
    Peer(String),
    Unexpected(&'static str),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Recv(e) => write!(f, "{e}"),
            LinkError::Peer(reason) => write!(f, "peer reported an error: {reason}"),
            LinkError::Unexpected(what) => write!(f, "unexpected answer: {what}"),
        }
    }
}

impl std::error::Error for LinkError {}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        LinkError::Io(e)
    }
}

impl Link {
    /// Connect to `path` and exchange hellos, announcing `role`.
    pub fn connect(path: &Path, role: Role) -> Result<Link, LinkError> {
        let sock = SeqPacket::connect(path, false)?;
        sock.set_recv_timeout(Some(ANSWER_TIMEOUT))?;
        let mut link = Link {
            sock,
            buf: vec![0; MAX_PACKET + 1],
            peer_role: role,
            peer_pid: 0,
        };
        let hello = Message::Hello {
            role,
            pid: std::process::id(),
        };
        match link.request(&hello, None)? {
            Message::Hello { role, pid } => {
                link.peer_role = role;
                link.peer_pid = pid;
            }
            _ => return Err(LinkError::Unexpected("expected Hello")),
        }
        Ok(link)
    }

    pub fn peer_role(&self) -> Role {
        self.peer_role
    }

    /// The pid the peer gave in its Hello: how the tracker tells several
    /// imap-idle daemons apart.
    pub fn peer_pid(&self) -> u32 {
        self.peer_pid
    }

    /// The socket, for peers that go on without blocking after the hellos.
    pub fn into_socket(self) -> SeqPacket {
        self.sock
    }

    /// Send one message without waiting.
    pub fn send(&mut self, msg: &Message, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        native::send(&self.sock, msg, fd)
    }

    /// Send one message if there is room now; `WouldBlock` otherwise.
    pub fn try_send(&mut self, msg: &Message, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: &[BorrowedFd<'_>] = match &fd {
            Some(fd) => std::slice::from_ref(fd),
            None => &[],
        };
        self.sock.send_nowait(&msg.encode(), fds)
    }

    /// Wait up to [`ANSWER_TIMEOUT`] until a message waits or there is
    /// room to send.
    pub fn wait(&self) -> io::Result<Ready> {
        self.sock.wait_readable_or_room(ANSWER_TIMEOUT)
    }

    /// Send one message and wait for the one answer.
    pub fn request(
        &mut self,
        msg: &Message,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Message, LinkError> {
        native::send(&self.sock, msg, fd)?;
        self.next_message()
    }

    /// Wait for the next message (answers that span several messages).
    pub fn next_message(&mut self) -> Result<Message, LinkError> {
        let incoming = native::recv(&self.sock, &mut self.buf).map_err(LinkError::Recv)?;
        match incoming.msg {
            Message::Error { reason } => Err(LinkError::Peer(reason)),
            other => Ok(other),
        }
    }
}

/// Ask the daemon at `path` for its counters.
pub fn stats(path: &Path) -> Result<Stats, LinkError> {
    let mut link = Link::connect(path, Role::Admin)?;
    match link.request(&Message::StatsRequest, None)? {
        Message::Stats(s) => Ok(s),
        _ => Err(LinkError::Unexpected("expected Stats")),
    }
}

/// The park sockets in a runtime directory: `park`, and the `park.PID` of
/// each further imap-idle that Dovecot's master started there.
pub fn park_sockets(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == "park"
                || name
                    .strip_prefix("park.")
                    .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

/// The counters of every imap-idle answering in `dir`, with its socket.
/// A socket nobody listens on any more (its process died) is skipped;
/// any other failure is returned with the socket it concerns.
pub fn stats_in(dir: &Path) -> Result<Vec<(PathBuf, Stats)>, (PathBuf, LinkError)> {
    let sockets = park_sockets(dir).map_err(|e| (dir.to_path_buf(), LinkError::Io(e)))?;
    let mut all = Vec::new();
    for path in sockets {
        match stats(&path) {
            Ok(s) => all.push((path, s)),
            Err(LinkError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) => {}
            Err(e) => return Err((path, e)),
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn park_sockets_are_park_and_park_dot_pid() {
        let dir = std::env::temp_dir().join(format!("imap-idle-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["park", "park.12", "park.", "park.x1", "parked", "tracker"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let found = park_sockets(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [dir.join("park"), dir.join("park.12")]);
    }

    #[test]
    fn a_dead_socket_is_skipped_and_an_empty_directory_is_no_error() {
        let dir = std::env::temp_dir().join(format!("imap-idle-link-dead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(stats_in(&dir).unwrap().is_empty());
        // Bound, then its listener gone: what a crashed daemon leaves.
        drop(std::os::unix::net::UnixListener::bind(dir.join("park.99")).unwrap());
        let all = stats_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(all.unwrap().is_empty());
    }
}
