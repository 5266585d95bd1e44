//! The OS layer: sockets, descriptor passing, limits, signals. Everything
//! that talks to the kernel in ways std does not cover lives here.

pub mod fdpass;
pub mod limits;
pub mod seqpacket;
pub mod signals;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};

pub use seqpacket::{Peer, SeqPacket};

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
