//! Where the rig's Dovecot lives: the host's own install, or one inside a
//! chroot (`IMAP_IDLE_DOVECOT_ROOT`), so that another Dovecot version runs
//! beside the host's. Owns path mapping (host path = root + inner path),
//! commands run under the root, its users, and its Dovecot's version.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Names a chroot holding the Dovecot to test; unset or empty: the host's.
pub const ROOT_ENV: &str = "IMAP_IDLE_DOVECOT_ROOT";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DovecotRoot {
    /// `None`: the host's own file system.
    chroot: Option<PathBuf>,
}

/// A Dovecot release as `dovecot --version` names it: `2.3.19.1 (9b53102964)`
/// or `2.4.1-4 (7d8c0e5759)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let word = text.split_whitespace().next()?;
        // Debian's revision (`-4`) is not part of Dovecot's own number.
        let upstream = word.split('-').next()?;
        let mut parts = upstream.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }

    /// 2.4 renamed settings and wants `dovecot_config_version`.
    pub fn is_2_4_or_later(&self) -> bool {
        (self.major, self.minor) >= (2, 4)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl DovecotRoot {
    pub fn host() -> DovecotRoot {
        DovecotRoot::default()
    }

    pub fn chroot(path: impl Into<PathBuf>) -> DovecotRoot {
        DovecotRoot {
            chroot: Some(path.into()),
        }
    }

    /// The root `IMAP_IDLE_DOVECOT_ROOT` names, else the host.
    pub fn from_env() -> DovecotRoot {
        match std::env::var_os(ROOT_ENV) {
            Some(p) if !p.is_empty() => DovecotRoot::chroot(p),
            _ => DovecotRoot::host(),
        }
    }

    pub fn chroot_path(&self) -> Option<&Path> {
        self.chroot.as_deref()
    }

    /// Where a path Dovecot sees (absolute) is on the host.
    pub fn host_path(&self, inner: &Path) -> PathBuf {
        match &self.chroot {
            None => inner.to_path_buf(),
            Some(root) => root.join(inner.strip_prefix("/").unwrap_or(inner)),
        }
    }

    /// The path Dovecot sees for a host path under the root.
    pub fn inner_path(&self, host: &Path) -> PathBuf {
        match &self.chroot {
            None => host.to_path_buf(),
            Some(root) => match host.strip_prefix(root) {
                Ok(rest) => Path::new("/").join(rest),
                Err(_) => host.to_path_buf(),
            },
        }
    }

    /// The directory the rig's private directories go in (host path).
    pub fn temp_dir(&self) -> PathBuf {
        match &self.chroot {
            None => std::env::temp_dir(),
            Some(_) => self.host_path(Path::new("/tmp")),
        }
    }

    /// `program` run inside the root (by `chroot`), or on the host.
    pub fn command(&self, program: &str) -> Command {
        match &self.chroot {
            None => Command::new(program),
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(program);
                c
            }
        }
    }

    pub fn installed(&self) -> bool {
        self.host_path(Path::new("/usr/sbin/dovecot")).exists()
    }

    /// A chroot needs `/proc` mounted: Dovecot reads it, and so do we.
    pub fn check(&self) -> Result<(), String> {
        let Some(root) = &self.chroot else {
            return Ok(());
        };
        if !self.installed() {
            return Err(format!("no /usr/sbin/dovecot in {}", root.display()));
        }
        if !self.host_path(Path::new("/proc/self")).exists() {
            return Err(format!(
                "{}/proc is not mounted (mount -t proc proc {}/proc)",
                root.display(),
                root.display()
            ));
        }
        Ok(())
    }

    pub fn version(&self) -> Result<Version, String> {
        let out = self
            .command("dovecot")
            .arg("--version")
            .output()
            .map_err(|e| format!("running dovecot --version: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Version::parse(&text).ok_or_else(|| format!("dovecot --version said {text:?}"))
    }

    /// A user's uid and gid as the root's own passwd file has them (a
    /// chroot's system users differ from the host's).
    pub fn user(&self, name: &str) -> Result<(u32, u32), String> {
        if self.chroot.is_none() {
            let u = nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| format!("no user {name}"))?;
            return Ok((u.uid.as_raw(), u.gid.as_raw()));
        }
        let path = self.host_path(Path::new("/etc/passwd"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let ids = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
                (f.first() == Some(&name)).then_some(ids)
            })
            .next()
            .ok_or_else(|| format!("no user {name} in {}", path.display()))
    }

    pub fn chown(&self, path: &Path, user: &str) -> Result<(), String> {
        let (uid, gid) = self.user(user)?;
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(uid),
            nix::unistd::Gid::from_raw(gid),
        );
        nix::unistd::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_dovecot_prints_them() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(v("2.3.19.1 (9b53102964)").to_string(), "2.3.19");
        assert_eq!(v("2.4.1-4 (7d8c0e5759)").to_string(), "2.4.1");
        assert_eq!(v("2.4.5 (abc)").to_string(), "2.4.5");
        assert!(!v("2.3.19.1 (9b53102964)").is_2_4_or_later());
        assert!(v("2.4.1-4 (7d8c0e5759)").is_2_4_or_later());
        assert!(v("3.0.0").is_2_4_or_later());
        assert_eq!(Version::parse("dovecot: not found"), None);
    }

    #[test]
    fn paths_map_between_host_and_root() {
        let r = DovecotRoot::chroot("/srv/root");
        let host = r.host_path(Path::new("/tmp/x/base"));
        assert_eq!(host, Path::new("/srv/root/tmp/x/base"));
        assert_eq!(r.inner_path(&host), Path::new("/tmp/x/base"));
        let h = DovecotRoot::host();
        assert_eq!(h.host_path(Path::new("/tmp/x")), Path::new("/tmp/x"));
        assert_eq!(h.inner_path(Path::new("/tmp/x")), Path::new("/tmp/x"));
    }
}
