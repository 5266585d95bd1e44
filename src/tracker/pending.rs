//! Clients on their way to a mail process: handed in by a login process or
//! returned by imap-idle, queued until a process takes them or their wait
//! runs out. Placing is one attempt at a time, so that the caller can
//! finish closing a process that failed one before the next try. A return
//! imap-idle sends again after its link dropped, though we placed it
//! already, is acknowledged here and not placed twice.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::Registry;

use super::parking::{IdleRef, ReturnKey};
use super::peers::Peers;
use super::routing::Routing;
use crate::proto::native::{Assign, Assignment, Login, Message, Return};
use crate::sys;

/// A client waiting for a mail process to take it.
pub struct Pending {
    user: String,
    uid: u32,
    fd: OwnedFd,
    from: From,
    deadline: Instant,
}

enum From {
    Login {
        peer: usize,
        login: Login,
    },
    Idle {
        peer: usize,
        ret: Return,
        key: ReturnKey,
    },
}

/// What came of one attempt to place a client.
pub enum Placed {
    /// Assigned, and whoever handed it in told so.
    Done,
    /// No process may take it now.
    Wait(Pending),
    /// The picked process could not take it (now blocked or closed): try
    /// again once that is settled.
    Retry(Pending),
}

impl Pending {
    /// A client from login process `peer`; Err is the refusal to send back.
    pub fn login(
        peer: usize,
        login: Login,
        fd: OwnedFd,
        wait: Duration,
    ) -> Result<Pending, Box<Message>> {
        if let Err(e) = sys::check_stream_socket(&fd) {
            return Err(Box::new(Message::LoginRefused {
                seq: login.seq,
                reason: format!("not a client connection: {e}"),
            }));
        }
        Ok(Pending {
            user: login.user.clone(),
            uid: login.uid,
            fd,
            from: From::Login { peer, login },
            deadline: Instant::now() + wait,
        })
    }

    /// A client back from imap-idle `peer` (pid `pid`, uid `peer_uid`). One
    /// with a wrong cookie is told off and closed here, one placed already
    /// just closed; Err is the answer to imap-idle.
    pub fn returned(
        peer: usize,
        pid: u32,
        peer_uid: u32,
        ret: Return,
        fd: OwnedFd,
        routing: &Routing,
        wait: Duration,
    ) -> Result<Pending, Box<Message>> {
        let user = ret.park.user.clone();
        let socket = nix::sys::stat::fstat(&fd).map_or(0, |st| st.st_ino);
        let idle = IdleRef { pid, id: ret.id };
        let key = ReturnKey { idle, socket };
        if routing.parking.was_placed(&key) {
            // Placed already: our `Accepted` was lost with the link. The
            // client is with its mail process; this is only another copy.
            info!(
                "user={user}: imap-idle pid={pid} sent return id {} again after we placed it; \
                 acknowledged, not placed twice",
                ret.id
            );
            drop(fd);
            return Err(Box::new(Message::Accepted { id: ret.id }));
        }
        if !routing.cookie_ok(&user, &ret.park.cookie) {
            warn!(
                "SECURITY: user={user}: a connection returned by imap-idle pid={pid} \
                 uid={peer_uid} (id {}) carries a wrong or unknown cookie; refused and closed",
                ret.id
            );
            // Tell the client, close it, and tell imap-idle we took it so it
            // is not offered again.
            let _ = sys::write_now(fd.as_fd(), b"* BYE Session not recognised.\r\n");
            drop(fd);
            return Err(Box::new(Message::Accepted { id: ret.id }));
        }
        if let Err(e) = routing.check_idle_id(idle, &user) {
            // Leave that entry alone; the client itself, with the user's
            // right cookie, is placed as a connection we did not know of.
            warn!(
                "SECURITY: user={user}: imap-idle pid={pid} uid={peer_uid} returns id {}: {e}; that \
                 connection is left alone and this one taken as new",
                ret.id
            );
        }
        let uid = routing.users.get(&user).map_or(0, |u| u.uid);
        Ok(Pending {
            user,
            uid,
            fd,
            from: From::Idle { peer, ret, key },
            deadline: Instant::now() + wait,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Try once to give the client to a mail process.
    pub fn place(self, routing: &mut Routing, peers: &mut Peers, registry: &Registry) -> Placed {
        let wait = self;
        let Some(proc_key) = routing.pick(&wait.user, wait.uid) else {
            return Placed::Wait(wait);
        };
        let now = Instant::now();
        let pid = routing.procs.get(&proc_key).map_or(0, |p| p.pid);
        let (was, idle) = match &wait.from {
            From::Idle { key, .. } => (routing.parked_place(key.idle, &wait.user), Some(key.idle)),
            From::Login { .. } => (None, None),
        };
        let (conn, cookie, remote, how) = match &wait.from {
            From::Login { login, .. } => {
                match routing.login(proc_key, &wait.user, wait.uid, &login.remote, now) {
                    Ok((conn, cookie)) => {
                        let how = Assignment::Login {
                            tag: login.tag.clone(),
                            input: login.input.clone(),
                        };
                        (conn, cookie, login.remote.clone(), how)
                    }
                    Err(e) => {
                        warn!("user={}: cannot make a cookie: {e:?}", wait.user);
                        return Placed::Wait(wait);
                    }
                }
            }
            From::Idle { ret, key, .. } => {
                let restored =
                    routing.restore(key.idle, proc_key, &wait.user, ret.park.cookie, now);
                let conn = match restored {
                    Ok(conn) => conn,
                    Err(e) => {
                        warn!("user={}: cannot make a connection id: {e:?}", wait.user);
                        return Placed::Wait(wait);
                    }
                };
                let remote = routing
                    .conns
                    .get(&conn)
                    .map(|c| c.remote.clone())
                    .unwrap_or_default();
                (
                    conn,
                    ret.park.cookie,
                    remote,
                    Assignment::Restore(ret.clone()),
                )
            }
        };
        let msg = Message::Assign(Assign {
            conn,
            user: wait.user.clone(),
            uid: wait.uid,
            cookie,
            remote,
            how,
        });
        let sent = match peers.get(proc_key) {
            Some(p) => p.send_now(&msg, Some(wait.fd.as_fd())),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = sent {
            routing.unassign(proc_key, conn, was, idle);
            if e.kind() == io::ErrorKind::WouldBlock {
                // Busy reading: skip it until its socket drains.
                debug!("mail process pid={pid} is busy; waiting for it to drain");
                if let Some(p) = routing.procs.get_mut(&proc_key) {
                    p.blocked = true;
                }
                peers.update_interest(registry, proc_key, routing.blocked(proc_key));
            } else {
                // A process that cannot take an assignment is of no use.
                warn!(
                    "mail process pid={pid}: cannot assign user={}: {e}",
                    wait.user
                );
                peers.close(registry, proc_key);
            }
            return Placed::Retry(wait);
        }
        match wait.from {
            From::Login { peer, login } => {
                info!(
                    "user={} conn={conn}: login from {} assigned to mail process pid={pid}",
                    wait.user, login.remote
                );
                let msg = Message::LoginAccepted {
                    seq: login.seq,
                    conn,
                    pid,
                };
                peers.send(registry, peer, &msg, routing.blocked(peer));
            }
            From::Idle { peer, ret, key } => {
                routing.parking.placed(key, now);
                info!(
                    "user={} conn={conn}: back from imap-idle ({:?} after {} s) to mail process pid={pid}",
                    wait.user, ret.reason, ret.parked_secs
                );
                let msg = Message::Accepted { id: ret.id };
                peers.send(registry, peer, &msg, routing.blocked(peer));
            }
        }
        Placed::Done
    }

    /// Not placed: tell whoever handed it in why (the caller logs it).
    pub fn refuse(self, reason: String, peers: &mut Peers, routing: &Routing, registry: &Registry) {
        let (peer, msg) = match self.from {
            From::Login { peer, login } => (
                peer,
                Message::LoginRefused {
                    seq: login.seq,
                    reason,
                },
            ),
            From::Idle { peer, ret, .. } => (peer, Message::Rejected { id: ret.id, reason }),
        };
        peers.send(registry, peer, &msg, routing.blocked(peer));
    }

    fn peer(&self) -> usize {
        match &self.from {
            From::Login { peer, .. } | From::Idle { peer, .. } => *peer,
        }
    }
}

/// The clients waiting, oldest first.
#[derive(Default)]
pub struct Waiting {
    queue: VecDeque<Pending>,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn push(&mut self, wait: Pending) {
        self.queue.push_back(wait);
    }

    pub fn pop(&mut self) -> Option<Pending> {
        self.queue.pop_front()
    }

    /// `peer` is gone: whatever it handed us and nobody took yet stays with
    /// it (it keeps its copy until we confirm).
    pub fn forget_peer(&mut self, peer: usize) {
        self.queue.retain(|w| w.peer() != peer);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().map(|w| w.deadline).min()
    }

    /// The first client whose wait ran out by `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Pending> {
        let i = self.queue.iter().position(|w| w.deadline <= now)?;
        self.queue.remove(i)
    }
}
