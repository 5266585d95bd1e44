//! Running as Dovecot's own imap-hibernate service: the descriptors the
//! master leaves open, the status record it expects, its death pipe, and
//! the imap-hibernate listener (the master's, or our own standalone).

use std::io::Write;
use std::os::fd::OwnedFd;

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use log::warn;

use super::config::Config;
use crate::setup::{setup, SetupError};
use crate::sys::fdpass;

/// `MASTER_LISTEN_FD_FIRST` (master-interface.h) moved between releases:
/// 7 in 2.3, 8 in 2.4.0 and 2.4.1 (7 became the config fd), 9 from 2.4.2
/// (8 a connection the master accepted itself, for client_limit = 1).
/// The first of these that listens is the imap-hibernate listener.
const LISTEN_FDS: [i32; 3] = [7, 8, 9];
/// Status and death pipes, the same in every release.
const STATUS_FD: i32 = 5;
const MASTER_DEAD_FD: i32 = 6;

pub(super) struct Service {
    status: std::fs::File,
    pub master_dead: OwnedFd,
    generation: u32,
    client_limit: usize,
    last_available: Option<u32>,
    /// At the limit: we stopped accepting, and the master (seeing 0
    /// available) listens itself and starts another process.
    full: bool,
    last_sent: Option<std::time::Instant>,
    /// A change not yet sent because the last record went out < 1 s ago.
    pub pending_until: Option<std::time::Instant>,
}

/// Started by Dovecot's master (with a listener to serve)?
pub(super) fn started_by_master() -> bool {
    let count = std::env::var("SOCKET_COUNT")
        .ok()
        .and_then(|c| c.parse::<u32>().ok());
    count.is_some_and(|c| c > 0) && std::env::var_os("DOVECOT_CHILD_PROCESS").is_some()
}

/// Started by Dovecot's master? Then take its descriptors.
pub(super) fn from_master() -> Option<(Service, OwnedFd)> {
    if !started_by_master() {
        return None;
    }
    let listen_fd = LISTEN_FDS
        .into_iter()
        .find(|&fd| fdpass::inherited_is_listening(fd))?;
    let listener = fdpass::inherited(listen_fd)?;
    refuse_pre_accepted();
    let status = fdpass::inherited(STATUS_FD)?;
    let master_dead = fdpass::inherited(MASTER_DEAD_FD)?;
    let env_num = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Some((
        Service {
            status: std::fs::File::from(status),
            master_dead,
            generation: env_num("GENERATION").unwrap_or(0) as u32,
            client_limit: env_num("CLIENT_LIMIT").map_or(usize::MAX, |n| n as usize),
            last_available: None,
            full: false,
            last_sent: None,
            pending_until: None,
        },
        listener,
    ))
}

/// From 2.4.2, a service with `client_limit = 1` gets a connection the
/// master accepted for it on fd 8. We do not serve it: closing it makes
/// that imap process keep its client at once, instead of waiting on us.
fn refuse_pre_accepted() {
    const ACCEPTED_FD: i32 = 8;
    if std::env::var_os("DOVECOT_ACCEPTED_CLIENT_LISTENER_FD").is_none() {
        return;
    }
    if fdpass::inherited_is_listening(ACCEPTED_FD) {
        return;
    }
    drop(fdpass::inherited(ACCEPTED_FD));
    warn!(
        "Dovecot's master accepted a hand-off for us (client_limit = 1); it is refused: \
         give the imap-hibernate service a client_limit above 1"
    );
}

impl Service {
    /// Clients this process holds at most: the master's `client_limit`,
    /// or fewer when our descriptors allow fewer.
    pub fn limit(&self, max_parked: usize) -> usize {
        self.client_limit.min(max_parked)
    }

    /// Tell the master how many more clients we take, when that changes.
    /// `used` counts parked clients and open hand-off connections, as
    /// Dovecot's own service does. Returns whether room opened up after
    /// being full: accepting must resume then, since connections that
    /// queued meanwhile raise no new edge.
    pub fn report(&mut self, used: usize, max_parked: usize) -> bool {
        let limit = self.limit(max_parked);
        let reopened = self.full && used < limit;
        self.full = used >= limit;
        self.send(limit.saturating_sub(used));
        reopened
    }

    fn send(&mut self, available: usize) {
        let available = available.min(u32::MAX as usize) as u32;
        if self.last_available == Some(available) {
            self.pending_until = None;
            return;
        }
        // As Dovecot's own services: at most one record a second, unless
        // the process becomes full or stops being full (the master uses
        // those to decide whether to start another process).
        let important = available == 0 || self.last_available.is_none_or(|a| a == 0);
        let now = std::time::Instant::now();
        let next = self
            .last_sent
            .map(|t| t + std::time::Duration::from_secs(1));
        if !important && next.is_some_and(|n| n > now) {
            self.pending_until = next;
            return;
        }
        let mut record = [0u8; 12];
        record[..4].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
        record[4..8].copy_from_slice(&self.generation.to_ne_bytes());
        record[8..].copy_from_slice(&available.to_ne_bytes());
        match self.status.write(&record) {
            Ok(12) => {
                self.last_available = Some(available);
                self.last_sent = Some(now);
                self.pending_until = None;
            }
            // A full pipe means the master is busy: try again in a second.
            Ok(_) | Err(_) => {
                warn!("could not write the status record to Dovecot's master");
                self.pending_until = Some(now + std::time::Duration::from_secs(1));
            }
        }
    }
}

/// The imap-hibernate listener: the master's, or our own bound in
/// `--dovecot-base-dir`. Returns it with the base_dir returns go to.
/// Call before anything opens a descriptor: 2.4's master leaves fd 7 free,
/// and a socket of ours there would pass for the master's listener.
pub(super) fn listener(cfg: &Config) -> Result<(OwnedFd, Option<Service>, PathBuf), SetupError> {
    if let Some((service, listener)) = from_master() {
        let base_dir = match &cfg.dovecot_base_dir {
            Some(d) => d.clone(),
            None => {
                let addr: nix::sys::socket::UnixAddr = setup(
                    "reading the listener's address",
                    nix::sys::socket::getsockname(listener.as_raw_fd()).map_err(io::Error::from),
                )?;
                addr.path()
                    .and_then(|p| p.parent())
                    .map(PathBuf::from)
                    .ok_or_else(|| {
                        SetupError(
                            "the listener from Dovecot's master has no path; \
                             give --dovecot-base-dir"
                                .into(),
                        )
                    })?
            }
        };
        return Ok((listener, Some(service), base_dir));
    }
    let Some(base_dir) = cfg.dovecot_base_dir.clone() else {
        return Err(SetupError(
            "--dovecot needs --dovecot-base-dir when not started by Dovecot's master".into(),
        ));
    };
    let path = base_dir.join("imap-hibernate");
    let listener = setup(
        format_args!("listening on {}", path.display()),
        crate::sys::listen_unix(&path, nix::sys::socket::SockType::Stream, 0o660),
    )?;
    // As Dovecot's own listener: 0660 with its internal group, which its
    // imap processes carry as an extra group.
    match nix::unistd::Group::from_name(&cfg.dovecot_group) {
        Ok(Some(g)) => {
            if let Err(e) = nix::unistd::chown(&path, None, Some(g.gid)) {
                // Not root and not in that group: say so and go on, as for
                // a missing group; an operator running as the imap user
                // needs no group at all.
                warn!(
                    "cannot give {} to group {}: {e}; imap processes may not reach it",
                    path.display(),
                    cfg.dovecot_group
                );
            }
        }
        _ => warn!(
            "group {} not found: {} keeps our group, so imap processes may not reach it",
            cfg.dovecot_group,
            path.display()
        ),
    }
    Ok((listener, None, base_dir))
}

/// Started by Dovecot's master, which execs its services as root and
/// leaves it to them to become the service's user (its `RESTRICT_*`
/// environment, as Dovecot's own imap-hibernate does). Done first, so that
/// everything we create belongs to that user.
pub(super) fn drop_privileges() -> Result<(), SetupError> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Group, Uid};
    if std::env::var_os("DOVECOT_CHILD_PROCESS").is_none() {
        return Ok(());
    }
    let num = |name: &str| -> Result<Option<u32>, SetupError> {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map(Some)
                .map_err(|_| SetupError(format!("{name}={v:?} from Dovecot's master"))),
            _ => Ok(None),
        }
    };
    let (Some(uid), gid) = (num("RESTRICT_SETUID")?, num("RESTRICT_SETGID")?) else {
        return Ok(());
    };
    if !Uid::effective().is_root() || uid == 0 {
        return Ok(());
    }
    let gid = Gid::from_raw(gid.unwrap_or(uid));
    let mut groups = vec![gid];
    for name in std::env::var("RESTRICT_SETEXTRAGROUPS")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|n| !n.is_empty())
    {
        match Group::from_name(name) {
            Ok(Some(g)) => groups.push(g.gid),
            _ => {
                return Err(SetupError(format!(
                    "extra group {name:?} from Dovecot's master"
                )))
            }
        }
    }
    let fail = |what: &str, e: nix::Error| SetupError(format!("dropping privileges ({what}): {e}"));
    setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    setgid(gid).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(uid)).map_err(|e| fail("setuid", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn service(client_limit: usize) -> (Service, std::fs::File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        let s = Service {
            status: std::fs::File::from(write),
            master_dead: read.try_clone().unwrap(),
            generation: 7,
            client_limit,
            last_available: None,
            full: false,
            last_sent: None,
            pending_until: None,
        };
        (s, std::fs::File::from(read))
    }

    /// The available counts of the records written so far.
    fn records(pipe: &mut std::fs::File, n: usize) -> Vec<u32> {
        let mut buf = vec![0u8; 12 * n];
        pipe.read_exact(&mut buf).unwrap();
        buf.chunks(12)
            .map(|r| {
                assert_eq!(r[..4], (std::process::id() as i32).to_ne_bytes());
                assert_eq!(r[4..8], 7u32.to_ne_bytes());
                u32::from_ne_bytes(r[8..].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn full_at_client_limit_and_reopened_below_it() {
        let (mut s, mut pipe) = service(3);
        assert_eq!(s.limit(100), 3);
        assert_eq!(s.limit(2), 2, "fewer descriptors than client_limit");
        assert!(!s.report(0, 100));
        // Becoming full is told at once, whatever the last record's age.
        assert!(!s.report(3, 100));
        assert_eq!(records(&mut pipe, 2), [3, 0]);
        assert!(!s.report(3, 100), "still full");
        assert!(s.report(2, 100), "room again: accepting resumes");
        assert!(!s.report(1, 100));
        // Leaving full is told at once too (1 available); the next change
        // waits out the second since.
        assert_eq!(records(&mut pipe, 1), [1]);
        assert!(s.pending_until.is_some());
    }
}
