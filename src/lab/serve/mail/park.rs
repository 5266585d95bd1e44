//! Parking: a client idle long enough goes to imap-idle, after a last
//! look at its mailbox; and the watched directories' times, by which the
//! mail process notices changes for the idle clients it keeps.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use log::{debug, info, warn};
use mio::unix::SourceFd;

use super::super::session::Session;
use super::{Client, Mail};
use crate::mail::{NotParked, ParkedIn, Parking};
use crate::proto::native::Release;

impl Mail {
    pub(super) fn remember_dirs(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key) {
            c.seen = watched(&c.session).iter().map(|p| mtime(p)).collect();
        }
    }

    pub(super) fn maybe_park(&mut self, key: usize) {
        let Some(after) = self.cfg.park_after else {
            return;
        };
        let Some(c) = self.clients.get(key) else {
            return;
        };
        let s = &c.session;
        let ready = s.idle.is_some()
            && s.inbuf.is_empty()
            && s.out.is_empty()
            && !s.closing
            && s.since.elapsed() >= after
            && c.park_refused_at.is_none_or(|at| at.elapsed() >= after);
        if !ready {
            return;
        }
        // Last look at the mailbox: a change the client has not been told
        // about yet would otherwise only be noticed at the next one. The
        // directories' times are taken first, to catch what lands after.
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let paths = watched(&c.session);
        let before: Vec<Option<SystemTime>> = paths.iter().map(|p| mtime(p)).collect();
        c.session.catch_up();
        if !c.session.out.is_empty() || c.session.closing {
            self.remember_dirs(key);
            return self.flush(key);
        }
        let s = &c.session;
        let Some(state) = s.state() else {
            return;
        };
        let Ok(dup) = c.stream.try_clone() else {
            return;
        };
        let park = Parking::idle(&s.user, s.cookie, &state);
        let (conn, user, mailbox) = (s.conn, s.user.clone(), state.mailbox.clone());
        match self.idle.park(OwnedFd::from(dup), &park) {
            Ok(into) => {
                // imap-idle owns the client now; our descriptor goes.
                if let Some(c) = self.clients.try_remove(key) {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
                }
                let ParkedIn {
                    idle_id, idle_pid, ..
                } = into;
                if into.passed_over > 0 {
                    info!(
                        "user={user} conn={conn}: parked in imap-idle pid={idle_pid} after {} \
                         refused or could not be reached",
                        into.passed_over
                    );
                }
                debug!("user={user} conn={conn}: parked in imap-idle pid={idle_pid} as {idle_id}");
                let how = Release::Parked {
                    idle_id,
                    idle_pid,
                    mailbox,
                };
                self.release(conn, &user, how);
                // imap-idle watches from before its answer. A change between
                // our last look and then would go unnoticed: poke a watched
                // directory so it wakes the client (at worst needlessly).
                let after: Vec<Option<SystemTime>> = paths.iter().map(|p| mtime(p)).collect();
                if after != before {
                    if let Some(dir) = paths.first() {
                        poke(dir);
                    }
                }
            }
            Err(NotParked::Kept(kept)) => {
                info!(
                    "user={user} conn={conn}: not parked ({}); keeping it",
                    kept.reason
                );
                self.park_refused(key);
            }
            Err(NotParked::Lost { reason }) => {
                // imap-idle may have it: serving it on could mean two
                // processes serve one client, so we let it go.
                warn!("user={user} conn={conn}: park {reason}; closing our copy");
                if let Some(c) = self.clients.try_remove(key) {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
                }
                self.release(conn, &user, Release::Closed);
            }
        }
    }

    fn park_refused(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key) {
            c.park_refused_at = Some(Instant::now());
        }
    }
}

fn watched(s: &Session) -> Vec<PathBuf> {
    s.selected
        .as_ref()
        .map(|sel| sel.mb.watch_paths())
        .unwrap_or_default()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Touch a directory's times: its watchers see IN_ATTRIB (setting both
/// times is what the kernel reports as an attribute change).
fn poke(dir: &Path) {
    let now = SystemTime::now();
    let times = std::fs::FileTimes::new()
        .set_accessed(now)
        .set_modified(now);
    let touched = std::fs::File::open(dir).and_then(|f| f.set_times(times));
    if let Err(e) = touched {
        warn!("touching {} to wake its watchers: {e}", dir.display());
    }
}

pub(super) fn dirs_changed(c: &Client) -> bool {
    let now: Vec<Option<SystemTime>> = watched(&c.session).iter().map(|p| mtime(p)).collect();
    now != c.seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poke_wakes_a_directory_watcher() {
        let t = tempfile::tempdir().unwrap();
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        ino.add_watch(t.path(), AddWatchFlags::IN_ATTRIB).unwrap();
        poke(t.path());
        let events = ino.read_events().unwrap();
        assert!(events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_ATTRIB)));
    }
}
