//! The login process's side of the hand-over: a client that passed LOGIN
//! goes to imap-tracker with its socket, and the tracker's answer decides
//! whether our copy is dropped (accepted) or the client is told NO.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::Interest;

use super::{LoginServer, TRACKER};
use crate::mail::{LoginAnswer, LoginLink};
use crate::proto::native::Login;

impl LoginServer {
    pub(super) fn login(&mut self, key: usize, tag: &str, user: &str, pass: &str) {
        let account = self
            .accounts
            .get(user)
            .filter(|a| a.password == pass)
            .map(|a| a.uid);
        let Some(uid) = account else {
            info!("user={user}: authentication failed");
            return self.reply(
                key,
                &format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
            );
        };
        if self.tracker.is_none() {
            match LoginLink::connect(&self.cfg.tracker_socket) {
                Ok(link) => {
                    let fd = link.as_raw_fd();
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd),
                        TRACKER,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("registering the tracker link: {e}");
                    }
                    self.tracker = Some(link);
                }
                Err(e) => {
                    warn!("user={user}: tracker unavailable: {e}");
                    return self.reply(
                        key,
                        &format!("{tag} NO [UNAVAILABLE] Mail service unavailable, try later.\r\n"),
                    );
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let local = c
            .stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        c.unsent = Some(Login {
            seq,
            user: user.to_owned(),
            uid,
            tag: tag.to_owned(),
            local,
            remote: c.remote.to_string(),
            input: std::mem::take(&mut c.inbuf),
        });
        c.waiting = Some(seq);
        c.tag = tag.to_owned();
        self.by_seq.insert(seq, key);
        self.queue.push_back(key);
        self.send_queued();
    }

    /// Hand over queued clients in order, while the tracker link has room.
    /// Never waits: a slow tracker must not stop us accepting and greeting.
    pub(super) fn send_queued(&mut self) {
        while let Some(&key) = self.queue.front() {
            let Some(link) = &self.tracker else {
                return;
            };
            let Some(c) = self.clients.get_mut(key) else {
                self.queue.pop_front();
                continue;
            };
            let Some(login) = c.unsent.take() else {
                self.queue.pop_front();
                continue;
            };
            match link.hand_over(c.stream.as_fd(), &login) {
                Ok(()) => {
                    self.queue.pop_front();
                    debug!(
                        "user={}: handed to the tracker (seq {})",
                        login.user, login.seq
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.unsent = Some(login);
                    return;
                }
                Err(e) => {
                    warn!("user={}: cannot hand over to the tracker: {e}", login.user);
                    c.unsent = Some(login);
                    return self.drop_tracker();
                }
            }
        }
    }

    pub(super) fn tracker_event(&mut self) {
        loop {
            let Some(link) = &mut self.tracker else {
                return;
            };
            match link.answer() {
                Ok(Some(LoginAnswer::Accepted { seq, conn, pid })) => {
                    if let Some(key) = self.by_seq.remove(&seq) {
                        debug!("seq {seq}: conn={conn} in mail process pid={pid}");
                        // The mail process owns the client: drop ours quietly.
                        if let Some(mut c) = self.clients.try_remove(key) {
                            let _ = self.poll.registry().deregister(&mut c.stream);
                        }
                    }
                }
                Ok(Some(LoginAnswer::Refused { seq, reason })) => {
                    if let Some(key) = self.by_seq.remove(&seq) {
                        let tag = match self.clients.get_mut(key) {
                            Some(c) => {
                                c.waiting = None;
                                c.tag.clone()
                            }
                            None => continue,
                        };
                        warn!("seq {seq}: login refused by the tracker: {reason}");
                        self.reply(key, &format!("{tag} NO [UNAVAILABLE] {reason}\r\n"));
                        self.client_event(key);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    warn!("tracker link: {e}");
                    return self.drop_tracker();
                }
            }
        }
    }

    /// The tracker is gone. A client handed over may or may not have been
    /// given to a mail process already: closing our copy is the only safe
    /// move (a client served twice is worse than one that reconnects). One
    /// not yet sent is told to try later. The next login reconnects.
    fn drop_tracker(&mut self) {
        if let Some(link) = self.tracker.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&link.as_raw_fd()));
        }
        self.queue.clear();
        let waiting: Vec<(u64, usize)> = self.by_seq.drain().collect();
        let mut closed = 0;
        for (_, key) in waiting {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            c.waiting = None;
            if let Some(login) = c.unsent.take() {
                // Never sent: still only ours, and the client can be told.
                c.inbuf = login.input;
                let tag = c.tag.clone();
                self.reply(
                    key,
                    &format!("{tag} NO [UNAVAILABLE] Mail service unavailable, try later.\r\n"),
                );
            } else if let Some(mut c) = self.clients.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut c.stream);
                closed += 1;
            }
        }
        if closed > 0 {
            warn!("tracker link lost with {closed} logins unanswered; closed our copies");
        }
    }
}
