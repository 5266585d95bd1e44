//! One accept step for both listeners (the park socket, Dovecot's
//! imap-hibernate): the same handling of a peer that left early, and of
//! running out of descriptors, which pauses accepting instead of spinning.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;

use crate::sys::fdpass;

/// How long accepting pauses after EMFILE/ENFILE.
pub const PAUSE_MS: u64 = 100;

pub enum Next {
    Conn(OwnedFd),
    /// Interrupted, or the peer left before we accepted: try again.
    Retry,
    /// Nothing more to accept for now.
    Empty,
    /// Out of descriptors: the caller pauses accepting.
    Pause(io::Error),
    Failed(io::Error),
}

pub fn next(listener: BorrowedFd<'_>) -> Next {
    match fdpass::accept(listener) {
        Ok(fd) => Next::Conn(fd),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock => Next::Empty,
            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => Next::Retry,
            _ => match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EMFILE | Errno::ENFILE => Next::Pause(e),
                _ => Next::Failed(e),
            },
        },
    }
}
