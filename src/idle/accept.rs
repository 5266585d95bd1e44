//! The listeners: the park socket bound as configured (or passed by a
//! service manager), and one accept step for both it and Dovecot's
//! imap-hibernate: the same handling of a peer that left early, and of
//! running out of descriptors, which pauses accepting instead of spinning.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use log::info;
use nix::errno::Errno;
use nix::sys::socket::SockType;

use super::config::Config;
use crate::setup::{ensure_dir_mode, setup, SetupError};
use crate::sys::activation::{self, Activated};
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

/// The park socket: the one a service manager passed (named `park`, or the
/// first when it gave no names), else bound as configured; returns it, its
/// path, and whether it is ours to remove at exit (a passed one is not).
pub fn listen(
    cfg: &Config,
    shared: bool,
    activated: &mut Activated,
) -> Result<(SeqPacket, PathBuf, bool), SetupError> {
    let Some(fd) = activated.take("park", 0) else {
        let (listener, path) = bind(cfg, shared)?;
        return Ok((listener, path, true));
    };
    let path = setup(
        "taking the park socket from the service manager",
        activation::listener(&fd, SockType::SeqPacket, "the park socket"),
    )?;
    // Its mode and group are the socket unit's (SocketMode=, SocketGroup=).
    let path = path.unwrap_or_else(|| cfg.park_socket.clone());
    info!(
        "park socket {} passed by the service manager",
        path.display()
    );
    Ok((SeqPacket::from(fd), path, false))
}

/// Bind the park socket as configured: its directory checked (or made)
/// ours, its mode and group set. With `shared` (Dovecot's master may run
/// several of us with one runtime directory), a default path another live
/// imap-idle holds gives way to `park.PID` beside it. Returns the path
/// bound.
fn bind(cfg: &Config, shared: bool) -> Result<(SeqPacket, PathBuf), SetupError> {
    if let Some(dir) = cfg.park_socket.parent() {
        ensure_dir_mode(dir, cfg.runtime_dir_mode)?;
    }
    let mut path = cfg.park_socket.clone();
    let mut bound = SeqPacket::listen(&path, cfg.park_socket_mode);
    let default = cfg.park_socket == cfg.runtime_dir.join("park");
    if shared
        && default
        && bound
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse)
    {
        path = cfg.runtime_dir.join(format!("park.{}", std::process::id()));
        bound = SeqPacket::listen(&path, cfg.park_socket_mode);
    }
    let listener = setup(format_args!("listening on {}", path.display()), bound)?;
    if let Some(name) = &cfg.park_socket_group {
        let Ok(Some(g)) = nix::unistd::Group::from_name(name) else {
            return Err(SetupError(format!(
                "--park-socket-group: no group {name:?}"
            )));
        };
        setup(
            format_args!("giving {} to group {name}", path.display()),
            nix::unistd::chown(&path, None, Some(g.gid)).map_err(io::Error::from),
        )?;
    }
    Ok((listener, path))
}
