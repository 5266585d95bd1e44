//! Users' cookies on disk, so that clients parked in imap-idle are still
//! taken back after the tracker restarts (even after `kill -9`). Only the
//! cookies and the user's uid are kept: which connections exist is learnt
//! again from imap-idle and the mail processes re-reporting them, checked
//! against these cookies. The file is the tracker's own, mode 0600, and
//! replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory), so a crash leaves the old table or the new one, never half.
//! A file that another user owns, or that others may read or write, is
//! refused: it could hand out (or leak) the key to every parked session.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proto::native::Cookie;

/// Leads the file, so a stray file is not taken for ours.
const MAGIC: &[u8; 5] = b"IMTC1";
/// Larger is not ours (a million users of 256-byte names is 280 MB).
const MAX_FILE: u64 = 512 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SavedUser {
    pub name: String,
    pub uid: u32,
    pub cookie: Cookie,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The counted part of the next connection id, so ids stay unique.
    pub next_conn: u32,
    pub users: Vec<SavedUser>,
}

/// What is on disk, or `Ok(None)` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me || meta.mode() & 0o077 != 0 || !meta.is_file() {
        return Err(format!(
            "{} is owned by uid {} with mode {:o}: only a file of ours (uid {me}) \
             that nobody else may read or write is trusted",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    if meta.len() > MAX_FILE {
        return Err(format!("{} is too large to be ours", path.display()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    decode(&bytes)
        .map(Some)
        .ok_or_else(|| format!("{} is not a cookie file of ours", path.display()))
}

fn decode(bytes: &[u8]) -> Option<Saved> {
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    let (saved, rest): (Saved, _) = postcard::take_from_bytes(body).ok()?;
    rest.is_empty().then_some(saved)
}

/// Replace the file with `saved`, atomically.
pub fn save(path: &Path, saved: &Saved) -> io::Result<()> {
    let tmp = temp_path(path);
    let _ = fs::remove_file(&tmp);
    let mut bytes = MAGIC.to_vec();
    bytes.extend(postcard::to_stdvec(saved).map_err(|e| io::Error::other(e.to_string()))?);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // The rename itself survives a crash only once the directory is synced.
    if let Some(dir) = path.parent() {
        File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?
        .sync_all()?;
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Saved {
        Saved {
            next_conn: 42,
            users: vec![SavedUser {
                name: "alice".into(),
                uid: 1000,
                cookie: [9; 16],
            }],
        }
    }

    #[test]
    fn saved_cookies_come_back_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies");
        assert_eq!(load(&path), Ok(None));
        save(&path, &sample()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path), Ok(Some(sample())));
        assert!(!temp_path(&path).exists(), "no temporary file left");
        // Replaced whole: the old content is gone.
        save(&path, &Saved::default()).unwrap();
        assert_eq!(load(&path), Ok(Some(Saved::default())));
    }

    #[test]
    fn a_file_others_may_read_or_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies");
        save(&path, &sample()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&path).unwrap_err().contains("nobody else"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(load(&path).unwrap_err().contains("not a cookie file"));
        bytes[0] ^= 1;
        bytes.push(0);
        fs::write(&path, &bytes).unwrap();
        assert!(load(&path).is_err(), "trailing bytes");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(load(&link).is_err(), "a symlink is not followed");
    }
}
