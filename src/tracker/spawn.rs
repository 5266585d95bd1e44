//! Starting mail processes on demand (`--spawn CMD`), never more than
//! `--max-processes` alive or starting at once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use log::{info, warn};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

pub struct Spawner {
    cmd: Option<String>,
    max: usize,
    socket: PathBuf,
    /// Started and not yet registered.
    starting: HashSet<u32>,
}

impl Spawner {
    pub fn new(cmd: Option<String>, max: usize, socket: PathBuf) -> Spawner {
        Spawner {
            cmd,
            max,
            socket,
            starting: HashSet::new(),
        }
    }

    /// Start one more mail process for `user`'s connection, if allowed and
    /// none is starting already (it will take whoever waits when it
    /// registers).
    pub fn spawn_for(&mut self, user: &str, registered: usize) {
        let Some(cmd) = &self.cmd else {
            return;
        };
        if !self.starting.is_empty() {
            return;
        }
        if registered + self.starting.len() >= self.max {
            warn!(
                "user={user}: no mail process may take the connection and {} are running \
                 (--max-processes)",
                self.max
            );
            return;
        }
        let child = Command::new("/bin/sh")
            .arg("-c")
            // exec: the pid we record is the mail process's own.
            .arg(format!("exec {cmd}"))
            .env("IMAP_TRACKER_SOCKET", &self.socket)
            // A mail process is not the service systemd supervises: it
            // must not report readiness or ping the watchdog in our name.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                info!("user={user}: started mail process pid={}", c.id());
                self.starting.insert(c.id());
            }
            Err(e) => warn!("user={user}: cannot start mail process {cmd:?}: {e}"),
        }
    }

    pub fn registered(&mut self, pid: u32) {
        self.starting.remove(&pid);
    }

    /// Collect exited children; one that never registered frees its slot.
    pub fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.exited(pid.as_raw() as u32, &format!("exit code {code}"))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid.as_raw() as u32, &format!("signal {sig}"))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn exited(&mut self, pid: u32, how: &str) {
        if self.starting.remove(&pid) {
            warn!("mail process pid={pid} ended ({how}) before registering");
        } else {
            info!("mail process pid={pid} ended ({how})");
        }
    }
}
