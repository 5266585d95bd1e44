//! What imap-idle may say: return a parked client (with the user's
//! cookie) and report one gone. Only ids parked for that very user in
//! that very daemon (the pid of its Hello) are acted on; another user's id
//! is refused and logged as `SECURITY`, and another daemon's id is not
//! this one's to speak of. A
//! return we placed already, sent again after a lost link, is answered
//! `Accepted` and not placed twice (see `pending`). Its report of what it
//! holds, on every new link, is checked and applied here (see `rejoin`).

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::handler::Handler;
use super::parking::IdleRef;
use super::pending::Pending;
use crate::proto::native::{Gone, Held, Return};

impl Handler<'_> {
    /// `Return`; false when the peer was closed.
    pub(super) fn returned(&mut self, key: usize, ret: Return, fd: OwnedFd) -> bool {
        let Some(p) = self.peers.get(key) else {
            return false;
        };
        let wait = Duration::from_secs(self.cfg.wait_secs);
        let back = Pending::returned(key, p.pid(), p.uid(), ret, fd, self.routing, wait);
        self.take(key, back);
        self.peers.contains(key)
    }

    pub(super) fn gone(&mut self, key: usize, g: Gone) {
        let (pid, uid) = self.peers.get(key).map_or((0, 0), |p| (p.pid(), p.uid()));
        if !self.routing.cookie_ok(&g.user, &g.cookie) {
            warn!(
                "SECURITY: user={}: imap-idle pid={pid} uid={uid} reports a gone connection \
                 (id {}) with a wrong or unknown cookie; ignored",
                g.user, g.id
            );
            return;
        }
        let idle = IdleRef { pid, id: g.id };
        match self.routing.gone(idle, &g.user, Instant::now()) {
            Ok(conn) => info!(
                "user={} conn={}: parked client gone ({:?}: {})",
                g.user,
                conn.map_or("?".into(), |c| c.to_string()),
                g.reason,
                g.detail
            ),
            Err(e) => warn!(
                "SECURITY: user={}: imap-idle pid={pid} uid={uid} reports id {} gone: {e}; \
                 refused",
                g.user, g.id
            ),
        }
    }
}

impl Handler<'_> {
    /// Part of imap-idle's report of what it holds (see `rejoin`).
    pub(super) fn holding(&mut self, key: usize, held: Vec<Held>, last: bool) {
        let (pid, uid) = self.peers.get(key).map_or((0, 0), |p| (p.pid(), p.uid()));
        let now = Instant::now();
        let mut known = 0;
        for h in &held {
            match self.routing.held(key, h, now) {
                Ok(new) => known += usize::from(new),
                Err(e) => warn!(
                    "SECURITY: user={}: imap-idle pid={pid} uid={uid} reports id {} held: {e}; \
                     refused",
                    h.user, h.id
                ),
            }
        }
        if known > 0 {
            info!("imap-idle pid={pid}: {known} parked connections known again from its report");
        }
        if !last {
            return;
        }
        let stale = self.routing.report_done(key);
        log_stale(&format!("imap-idle pid={pid} no longer holds them"), &stale);
        self.drop_dead_daemons();
    }

    /// What is parked in daemons that died (no link, no process) is gone.
    pub(super) fn drop_dead_daemons(&mut self) {
        let linked: HashSet<u32> = self.peers.idle_pids();
        let stale = self.routing.drop_dead_daemons(&linked, daemon_alive);
        log_stale("their imap-idle is gone", &stale);
    }
}

fn log_stale(why: &str, stale: &[(u64, String)]) {
    for (conn, user) in stale {
        info!("user={user} conn={conn}: parked entry dropped: {why}");
    }
    if !stale.is_empty() {
        warn!("{} stale parked entries dropped: {why}", stale.len());
    }
}

/// Is process `pid` running (a zombie is not: it holds nothing)?
fn daemon_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends with the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}
