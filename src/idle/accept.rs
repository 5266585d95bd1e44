//! The listeners: the park socket bound as configured, and one accept
//! step for both it and Dovecot's imap-hibernate: the same handling of a
//! peer that left early, and of running out of descriptors, which pauses
//! accepting instead of spinning.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::config::Config;
use crate::setup::{ensure_dir_mode, setup, SetupError};
use crate::sys::{fdpass, SeqPacket};

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

/// Bind the park socket as configured: its directory checked (or made)
/// ours, its mode and group set.
pub fn listen(cfg: &Config) -> Result<SeqPacket, SetupError> {
    if let Some(dir) = cfg.park_socket.parent() {
        ensure_dir_mode(dir, cfg.runtime_dir_mode)?;
    }
    let listener = setup(
        format_args!("listening on {}", cfg.park_socket.display()),
        SeqPacket::listen(&cfg.park_socket, cfg.park_socket_mode),
    )?;
    if let Some(name) = &cfg.park_socket_group {
        let Ok(Some(g)) = nix::unistd::Group::from_name(name) else {
            return Err(SetupError(format!(
                "--park-socket-group: no group {name:?}"
            )));
        };
        setup(
            format_args!("giving {} to group {name}", cfg.park_socket.display()),
            nix::unistd::chown(&cfg.park_socket, None, Some(g.gid)).map_err(io::Error::from),
        )?;
    }
    Ok(listener)
}
