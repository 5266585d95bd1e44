//! What imap-idle may say: return a parked client (with the user's
//! cookie) and report one gone. Only ids parked for that very user in
//! that very daemon (the pid of its Hello) are acted on; another user's id
//! is refused and logged as `SECURITY`, and another daemon's id is not
//! this one's to speak of. A
//! return we placed already, sent again after a lost link, is answered
//! `Accepted` and not placed twice (see `pending`).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::handler::Handler;
use super::parking::IdleRef;
use super::pending::Pending;
use crate::proto::native::{Gone, Return};

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
