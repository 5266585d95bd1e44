//! The OS layer: sockets, descriptor passing, limits, signals. Everything
//! that talks to the kernel in ways std does not cover lives here.

pub mod fdpass;
pub mod limits;
pub mod notify;
pub mod seqpacket;
pub mod signals;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};

pub use seqpacket::{connect_unix, listen_unix, Peer, Ready, SeqPacket};

pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let new = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    if new != flags {
        fcntl(fd, FcntlArg::F_SETFL(new))?;
    }
    Ok(())
}

/// Whether `fd` is a connected stream socket, the only thing a parked IMAP
/// client can be. Anything else (a file, a pipe, a datagram socket) is
/// refused before we touch it.
pub fn check_stream_socket(fd: impl AsFd) -> Result<(), &'static str> {
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => Ok(()),
        Ok(_) => Err("the fd is a socket but not a stream socket"),
        Err(nix::errno::Errno::ENOTSOCK) => Err("the fd is not a socket"),
        Err(_) => Err("the fd cannot be inspected"),
    }
}

/// Write all of `bytes` now, without blocking, or fail: `WouldBlock` when
/// they do not fit whole. Parked clients get no output buffer, so a write
/// that does not fit is the caller's reason to disconnect.
pub fn write_now(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        return match send(fd.as_raw_fd(), bytes, flags) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// The process id at the other end of a UNIX socket, 0 when unknown.
pub fn peer_pid(fd: BorrowedFd<'_>) -> i32 {
    getsockopt(&fd, sockopt::PeerCredentials).map_or(0, |c| c.pid())
}
