//! Errors while a daemon starts: the only errors that leave `main`.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
/// a missing parent above it is the operator's to create).
pub fn ensure_dir(dir: &Path) -> Result<(), SetupError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    setup(
        format_args!("creating {}", dir.display()),
        fs::DirBuilder::new().mode(0o750).create(dir),
    )?;
    setup(
        format_args!("setting permissions on {}", dir.display()),
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750)),
    )
}
