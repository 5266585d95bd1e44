//! UNIX `SOCK_SEQPACKET` sockets: one message per packet, descriptors
//! travelling with the packet they belong to.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

use super::fdpass::{self, Received};

/// A connected or listening SEQPACKET socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

/// What [`SeqPacket::wait_readable_or_room`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// A packet (or the peer's end) waits to be read.
    Readable,
    /// There is room to send.
    Room,
    /// Neither before the timeout.
    Neither,
}

/// SEQPACKET sends whole packets or nothing; anything else is a bug.
fn whole(sent: usize, data: &[u8]) -> io::Result<()> {
    if sent != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short packet send",
        ));
    }
    Ok(())
}

/// The credentials of the process at the other end (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

fn new_socket(ty: SockType, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    Ok(socket::socket(AddressFamily::Unix, ty, flags, None)?)
}

/// Connect a UNIX socket of type `ty` to `path`.
pub fn connect_unix(path: &Path, ty: SockType, nonblocking: bool) -> io::Result<OwnedFd> {
    let fd = new_socket(ty, nonblocking)?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// Bind and listen at `path` (non-blocking) with the given permission
/// bits. A socket file left by a dead process is replaced; one that a
/// live process still answers on is an error, so two daemons never share
/// a path by accident.
pub fn listen_unix(path: &Path, ty: SockType, mode: u32) -> io::Result<OwnedFd> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if connect_unix(path, ty, true).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process", path.display()),
            ));
        }
        fs::remove_file(path)?;
    }
    let fd = new_socket(ty, true)?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    socket::listen(&fd, Backlog::MAXCONN)?;
    Ok(fd)
}

impl SeqPacket {
    /// Bind and listen at `path`; see [`listen_unix`].
    pub fn listen(path: &Path, mode: u32) -> io::Result<SeqPacket> {
        Ok(SeqPacket {
            fd: listen_unix(path, SockType::SeqPacket, mode)?,
        })
    }

    /// Connect to `path`. A non-blocking connect fails with `WouldBlock`
    /// when the listener's backlog is full instead of waiting.
    pub fn connect(path: &Path, nonblocking: bool) -> io::Result<SeqPacket> {
        Ok(SeqPacket {
            fd: connect_unix(path, SockType::SeqPacket, nonblocking)?,
        })
    }

    /// A connected pair (blocking), for tests and in-process peers.
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((SeqPacket { fd: a }, SeqPacket { fd: b }))
    }

    pub fn accept(&self) -> io::Result<SeqPacket> {
        Ok(SeqPacket {
            fd: fdpass::accept(self.fd.as_fd())?,
        })
    }

    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        whole(fdpass::send(self.fd.as_fd(), data, fds)?, data)
    }

    /// `send` that never waits for room, even on a blocking socket.
    pub fn send_nowait(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        whole(fdpass::send_nowait(self.fd.as_fd(), data, fds)?, data)
    }

    /// Send several packets (no descriptors) in one call without waiting;
    /// how many went, from the first. `WouldBlock` when none fits.
    pub fn send_many_nowait(&self, packets: &[&[u8]]) -> io::Result<usize> {
        fdpass::send_many(self.fd.as_fd(), packets)
    }

    /// Wait up to `timeout` until a packet can be read or sent (or the
    /// peer is gone); returns whether one can be read.
    pub fn wait_readable_or_room(&self, timeout: std::time::Duration) -> io::Result<Ready> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(
            self.fd.as_fd(),
            PollFlags::POLLIN | PollFlags::POLLOUT,
        )];
        loop {
            match poll(&mut fds, ms) {
                Ok(0) => return Ok(Ready::Neither),
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let got = fds[0].revents().unwrap_or(PollFlags::empty());
        // A hang-up or error is seen by reading.
        if got.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            Ok(Ready::Readable)
        } else {
            Ok(Ready::Room)
        }
    }

    /// Like `send` on a non-blocking socket, but waits up to `patience`
    /// for room when the peer is slow to read, for peers whose messages
    /// must not be dropped (a release report, a hand-over).
    pub fn send_patiently(
        &self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        patience: std::time::Duration,
    ) -> io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let end = std::time::Instant::now() + patience;
        loop {
            match self.send(data, fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = end.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(e);
                    }
                    let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX);
                    let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, ms) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                other => return other,
            }
        }
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        fdpass::recv(self.fd.as_fd(), buf)
    }

    pub fn peer(&self) -> io::Result<Peer> {
        let cred = socket::getsockopt(&self.fd, sockopt::PeerCredentials)?;
        Ok(Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        })
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        super::set_nonblocking(self.fd.as_fd(), on)
    }

    pub fn set_recv_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(t) => nix::sys::time::TimeVal::new(t.as_secs() as _, t.subsec_micros() as _),
            None => nix::sys::time::TimeVal::new(0, 0),
        };
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv)?;
        Ok(())
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<OwnedFd> for SeqPacket {
    fn from(fd: OwnedFd) -> Self {
        SeqPacket { fd }
    }
}
