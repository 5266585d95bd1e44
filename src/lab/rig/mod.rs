//! Rigs that start whole systems for the bench and the tests: our native
//! stack, and a private Dovecot with either hibernation process.

pub mod dovecot;
pub mod dovecot_conf;
pub mod dovecot_root;
pub mod idles;
pub mod machine;
pub mod native;
pub mod procfs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A directory of our own under the system's temp dir, removed on drop.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    pub fn new(what: &str) -> Result<PrivateDir, String> {
        PrivateDir::new_in(&std::env::temp_dir(), what)
    }

    /// [`PrivateDir::new`] under `parent` (a chroot's `/tmp`, say).
    pub fn new_in(parent: &Path, what: &str) -> Result<PrivateDir, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut rnd = [0u8; 4];
        let _ = getrandom::fill(&mut rnd);
        let path = parent.join(format!(
            "imap-idle-lab-{what}-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            u32::from_le_bytes(rnd)
        ));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Dovecot's services run as other users and must reach in.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PrivateDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Poll `cond` every 20 ms until it holds, or fail after `timeout`.
pub fn wait_until(
    mut cond: impl FnMut() -> bool,
    what: &str,
    timeout: Duration,
) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > end {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
