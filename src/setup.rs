//! Errors while a daemon starts: the only errors that leave `main`.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

pub fn setup<T>(what: impl fmt::Display, r: io::Result<T>) -> Result<T, SetupError> {
    r.map_err(|e| SetupError(format!("{what}: {e}")))
}

/// Create the socket's directory if missing (only the last component:
/// a missing parent above it is the operator's to create), mode 0750.
/// A secret from the OS (for unguessable connection serials).
pub fn random_key() -> Result<u64, SetupError> {
    let mut key = [0u8; 8];
    getrandom::fill(&mut key).map_err(|e| SetupError(format!("reading random bytes: {e}")))?;
    Ok(u64::from_ne_bytes(key))
}

pub fn ensure_dir(dir: &Path) -> Result<(), SetupError> {
    ensure_dir_mode(dir, 0o750)
}

/// Same, with the mode the operator meant. An existing directory must be
/// ours, not a symlink, and writable by nobody else unless `mode` says so:
/// whoever can write there could put their own socket in our place and be
/// handed parked clients, their state and their cookies.
pub fn ensure_dir_mode(dir: &Path, mode: u32) -> Result<(), SetupError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let me = nix::unistd::geteuid().as_raw();
    match fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.file_type().is_dir() {
                return Err(SetupError(format!(
                    "{} exists and is not a directory; refusing to use it",
                    dir.display()
                )));
            }
            if meta.uid() != me {
                return Err(SetupError(format!(
                    "{} is owned by uid {}, not by us (uid {me}): refusing to put our \
                     sockets where another user controls them; remove it or choose another \
                     directory",
                    dir.display(),
                    meta.uid()
                )));
            }
            let extra = meta.mode() & 0o022 & !mode;
            if extra != 0 {
                return Err(SetupError(format!(
                    "{} is writable by {} (mode {:04o}): refusing to put our sockets where \
                     others may replace them; chmod go-w it, or say the mode is meant with \
                     --runtime-dir-mode",
                    dir.display(),
                    if extra & 0o002 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    },
                    meta.mode() & 0o7777
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            setup(
                format_args!("creating {}", dir.display()),
                fs::DirBuilder::new().mode(mode).create(dir),
            )?;
            setup(
                format_args!("setting permissions on {}", dir.display()),
                fs::set_permissions(dir, fs::Permissions::from_mode(mode)),
            )
        }
        Err(e) => Err(SetupError(format!("looking at {}: {e}", dir.display()))),
    }
}
