//! The tracker's two listeners, each passed by a service manager (socket
//! activation) or bound at its configured path.

use std::path::{Path, PathBuf};

use log::info;
use nix::sys::socket::SockType;

use crate::setup::{ensure_dir, setup, SetupError};
use crate::sys::activation::{self, Activated};
use crate::sys::SeqPacket;

/// A listener, where it is, and its path again when we bound it (ours
/// to remove at exit).
pub struct Listener {
    pub sock: SeqPacket,
    pub path: PathBuf,
    pub bound: Option<PathBuf>,
}

/// The descriptor named `name` (or at `index` when the manager gave no
/// names) if one was passed, else a socket bound at `path` with `mode`.
pub fn listener(
    activated: &mut Activated,
    (name, index): (&str, usize),
    path: &Path,
    mode: u32,
) -> Result<Listener, SetupError> {
    if let Some(fd) = activated.take(name, index) {
        let what = format!("the {name} socket");
        let at = setup(
            format_args!("taking {what} from the service manager"),
            activation::listener(&fd, SockType::SeqPacket, &what),
        )?;
        let at = at.unwrap_or_else(|| path.to_path_buf());
        info!("{what} {} passed by the service manager", at.display());
        return Ok(Listener {
            sock: SeqPacket::from(fd),
            path: at,
            bound: None,
        });
    }
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    let sock = setup(
        format_args!("listening on {}", path.display()),
        SeqPacket::listen(path, mode),
    )?;
    Ok(Listener {
        sock,
        path: path.to_path_buf(),
        bound: Some(path.to_path_buf()),
    })
}
