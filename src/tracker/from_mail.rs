//! What a mail process may say: register (as its own uid, unless it runs
//! as root), report that one of its connections left it, and describe its
//! connections for `who`. A connection id that is not the process's own is
//! refused and logged as `SECURITY`, never acted on. After a restart of
//! the tracker it re-reports what it serves (`Serving`, see `rejoin`).

use std::time::Instant;

use log::{debug, info, warn};

use super::handler::Handler;
use super::parking::IdleRef;
use crate::proto::native::{ConnInfo, Message, Release, Served};

impl Handler<'_> {
    pub(super) fn register(&mut self, key: usize, uid: u32, capacity: u32) -> bool {
        let Some(p) = self.peers.get(key) else {
            return false;
        };
        if self.routing.procs.contains_key(&key) {
            return self.fail_peer(key, "registered twice");
        }
        if capacity == 0 {
            return self.fail_peer(key, "capacity 0: such a process can take nothing");
        }
        if p.uid() != 0 && p.uid() != uid {
            let reason = format!("claims uid {uid} but runs as uid {}", p.uid());
            warn!("SECURITY: mail process pid={} {reason}; refused", p.pid());
            return self.fail_peer(key, &reason);
        }
        let pid = p.pid();
        self.spawner.registered(pid);
        self.routing.register(key, pid, uid, capacity);
        info!("mail process pid={pid} uid={uid} registered, capacity {capacity}");
        if !self.send(key, &Message::Registered) {
            return false;
        }
        self.place_pending();
        true
    }

    /// `Released`: acted on only for the process's own connections.
    pub(super) fn released(&mut self, key: usize, conn: u64, how: Release) -> bool {
        let Some(p) = self.peers.get(key) else {
            return false;
        };
        if !self.routing.procs.contains_key(&key) {
            return self.fail_peer(key, "Released before Register");
        }
        let parked_as = match &how {
            Release::Parked {
                idle_id, idle_pid, ..
            } => Some(IdleRef {
                pid: *idle_pid,
                id: *idle_id,
            }),
            Release::Closed => None,
        };
        let pid = p.pid();
        if let Err(e) = self.routing.released(key, conn, how, Instant::now()) {
            let under = parked_as.map_or(String::new(), |idle| {
                let holder = self
                    .routing
                    .parking
                    .conn_of(idle)
                    .and_then(|c| self.routing.conns.get(&c))
                    .map_or(String::new(), |c| format!(", which is user={}'s", c.user));
                format!(
                    " as parked under imap-idle pid={} id {}{holder}",
                    idle.pid, idle.id
                )
            });
            warn!(
                "SECURITY: mail process pid={} uid={}: release of conn={conn}{under}: {e}; \
                 refused",
                p.pid(),
                p.uid()
            );
        } else if let Some(idle) = parked_as {
            debug!(
                "mail process pid={pid} conn={conn}: parked in imap-idle pid={} as id {}",
                idle.pid, idle.id
            );
        } else {
            debug!("mail process pid={pid} conn={conn}: closed");
        }
        self.place_pending();
        true
    }

    /// `Described` for a `who` query: a mail process's rows count only
    /// for its own connections.
    pub(super) fn described(&mut self, key: usize, query: u64, conns: Vec<ConnInfo>, last: bool) {
        let mut conns = conns;
        let is_mail = self.routing.procs.contains_key(&key);
        if is_mail {
            let before = conns.len();
            conns.retain(|c| self.routing.owns(key, c.id));
            if conns.len() < before {
                if let Some(p) = self.peers.get(key) {
                    warn!(
                        "SECURITY: mail process pid={} uid={} describes {} connections that \
                         are not its own; those rows are ignored",
                        p.pid(),
                        p.uid(),
                        before - conns.len()
                    );
                }
            }
        }
        let answer = self.who.described(key, query, conns, last, self.peers);
        if answer.close {
            self.close_peer(key);
        }
        if answer.done {
            self.finish_who(query);
        }
    }
}

impl Handler<'_> {
    /// Part of a re-registered mail process's report of what it serves
    /// (see `rejoin`); false when the peer was closed.
    pub(super) fn serving(&mut self, key: usize, conns: Vec<Served>, last: bool) -> bool {
        let Some(p) = self.peers.get(key) else {
            return false;
        };
        if !self.routing.procs.contains_key(&key) {
            return self.fail_peer(key, "Serving before Register");
        }
        let (pid, uid) = (p.pid(), p.uid());
        let now = Instant::now();
        let mut known = 0;
        for s in &conns {
            match self.routing.served(key, uid, s, now) {
                Ok(new) => known += usize::from(new),
                Err(e) => warn!(
                    "SECURITY: mail process pid={pid} uid={uid}: serving user={} conn={}: {e}; \
                     refused",
                    s.user, s.conn
                ),
            }
        }
        if known > 0 {
            info!("mail process pid={pid}: {known} connections known again from its report");
        }
        if last {
            self.place_pending();
        }
        true
    }
}
