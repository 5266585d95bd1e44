//! Socket activation: listeners a service manager opened for us and
//! passed as descriptors 3, 4, ... (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`, as `sd_listen_fds` reads them). The variables are
//! removed once read, so nothing we start believes the listeners are its.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};

use super::fdpass;

/// `SD_LISTEN_FDS_START`.
const FIRST_FD: i32 = 3;
/// More than any unit of ours passes; a bigger count is a mistake.
const MAX_FDS: usize = 64;

/// The descriptors passed to us, each with its name when the manager gave
/// names (`FileDescriptorName=` in a socket unit).
#[derive(Debug, Default)]
pub struct Activated {
    fds: Vec<Option<(String, OwnedFd)>>,
    named: bool,
}

impl Activated {
    /// Read and remove the variables, and own what they describe. Empty
    /// when they are unset or meant for another process.
    pub fn from_env() -> Result<Activated, String> {
        let vars = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].map(std::env::var);
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(name);
        }
        let [pid, count, names] = vars;
        let (Ok(pid), Ok(count)) = (pid, count) else {
            return Ok(Activated::default());
        };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            // Inherited from a parent that was activated itself.
            return Ok(Activated::default());
        }
        let count: usize = count
            .parse()
            .ok()
            .filter(|n| *n <= MAX_FDS)
            .ok_or_else(|| format!("LISTEN_FDS={count:?} is not a count of descriptors"))?;
        let names: Option<Vec<String>> =
            names.ok().map(|n| n.split(':').map(String::from).collect());
        let mut fds = Vec::with_capacity(count);
        for i in 0..count {
            let fd = fdpass::inherited(FIRST_FD + i as i32).ok_or_else(|| {
                format!(
                    "LISTEN_FDS={count} but descriptor {} is not open",
                    FIRST_FD + i as i32
                )
            })?;
            let name = names
                .as_ref()
                .and_then(|n| n.get(i).cloned())
                .unwrap_or_else(|| "unknown".into());
            fds.push(Some((name, fd)));
        }
        Ok(Activated {
            fds,
            named: names.is_some(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.fds.iter().all(Option::is_none)
    }

    /// The descriptor named `name`; without names, the one at `index`
    /// (the order of the socket unit's `Listen...=` lines).
    pub fn take(&mut self, name: &str, index: usize) -> Option<OwnedFd> {
        let slot = if self.named {
            self.fds
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|(n, _)| n == name))?
        } else {
            self.fds.get_mut(index)?
        };
        slot.take().map(|(_, fd)| fd)
    }

    /// Names of the descriptors nobody took; dropping `self` closes them.
    pub fn unused(&self) -> Vec<String> {
        self.fds.iter().flatten().map(|(n, _)| n.clone()).collect()
    }
}

/// Check that an activated descriptor is a listening UNIX socket of type
/// `ty`, and make it non-blocking; the path it is bound to, if any.
pub fn listener(fd: &OwnedFd, ty: SockType, what: &str) -> io::Result<Option<std::path::PathBuf>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {why}"));
    if getsockopt(&fd.as_fd(), sockopt::SockType)? != ty {
        return Err(bad(&format!("the passed socket is not of type {ty:?}")));
    }
    if !getsockopt(&fd.as_fd(), sockopt::AcceptConn)? {
        return Err(bad("the passed socket is not listening"));
    }
    let addr: UnixAddr =
        getsockname(fd.as_raw_fd()).map_err(|_| bad("the passed socket is not a UNIX socket"))?;
    super::set_nonblocking(fd.as_fd(), true)?;
    Ok(addr.path().map(std::path::Path::to_path_buf))
}
