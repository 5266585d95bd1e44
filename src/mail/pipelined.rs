//! Pipelined parks: many `Park` requests in flight on one link, their
//! answers matched to them by request id, never by order. The caller picks
//! the window (how many wait for an answer at once); a few dozen to a few
//! hundred let imap-idle take a whole batch per loop turn instead of one
//! park per round trip.
//!
//! ```no_run
//! use std::os::fd::OwnedFd;
//! use imap_idle::mail::{Answer, IdleLink, NotParked, Parking};
//!
//! /// Park them all, 128 in flight at most; returns the clients to serve on.
//! fn park_all(idle: &mut IdleLink, clients: Vec<(OwnedFd, Parking)>) -> Vec<OwnedFd> {
//!     const WINDOW: usize = 128;
//!     let mut keep = Vec::new();
//!     for (client, park) in clients {
//!         while idle.in_flight() >= WINDOW {
//!             settle(idle.next_answer(), &mut keep);
//!         }
//!         if let Err(kept) = idle.send_park(client, &park) {
//!             keep.push(kept.client);
//!         }
//!     }
//!     while let Some(answer) = idle.next_answer() {
//!         settle(Some(answer), &mut keep);
//!     }
//!     keep
//! }
//!
//! fn settle(answer: Option<Answer>, keep: &mut Vec<OwnedFd>) {
//!     match answer {
//!         Some((_req, Err(NotParked::Kept(k)))) => keep.push(k.client), // serve it on
//!         Some((_req, Err(NotParked::Lost { .. }))) => {}  // fate unknown: forget it
//!         Some((_req, Ok(_id))) => {}                      // imap-idle has it
//!         None => {}                                       // nothing in flight
//!     }
//! }
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::park::{Answer, IdleLink, Kept, NotParked};
use crate::link::LinkError;
use crate::proto::native::{Message, Park};
use crate::sys::Ready;

/// Most parks [`IdleLink::send_park`] lets wait for an answer; beyond it,
/// it reads an answer first. imap-idle drops a peer that leaves thousands
/// of answers unread, and nothing is gained past a few hundred.
pub const MAX_WINDOW: usize = 1024;

impl IdleLink {
    /// Send a park without waiting for its answer; returns its request id,
    /// which [`IdleLink::next_answer`] names with the outcome. Until then
    /// the link holds our copy of `client`: a refusal gives it back. `Err`
    /// gives it back at once when the request did not go out (the link is
    /// closed, or broke while sending; parks already in flight then come
    /// back from `next_answer` as `Lost`).
    ///
    /// While imap-idle has no room for the request this reads answers,
    /// kept for `next_answer`, so that neither side waits on the other.
    /// Dropping the link with parks in flight closes our copies of those
    /// clients unanswered: treat them as `Lost`.
    pub fn send_park(&mut self, client: OwnedFd, park: &Park) -> Result<u64, Kept> {
        while self.in_flight.len() >= MAX_WINDOW && self.link.is_some() {
            self.receive_one();
        }
        let req = self.next_req;
        self.next_req += 1;
        let msg = Message::Park {
            req,
            park: park.clone(),
        };
        loop {
            let Some(link) = &mut self.link else {
                return Err(kept(client, "the link to imap-idle is closed".into()));
            };
            let failure = match link.try_send(&msg, Some(client.as_fd())) {
                Ok(()) => {
                    self.in_flight.insert(req, client);
                    return Ok(req);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match link.wait() {
                    Ok(Ready::Readable) => {
                        self.receive_one();
                        continue;
                    }
                    Ok(Ready::Room) => continue,
                    Ok(Ready::Neither) => "imap-idle took no request for too long".to_owned(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            // A packet goes whole or not at all: imap-idle never saw this
            // one, but what it did with those in flight is unknown.
            self.lose_all(&format!("the link to imap-idle broke: {failure}"));
            return Err(kept(client, failure));
        }
    }

    /// Parks sent with [`IdleLink::send_park`] whose outcome the caller
    /// has not taken yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.ready.len()
    }

    /// The next outcome of a pipelined park, waiting for it if need be;
    /// `None` when none is in flight. Outcomes come as the daemon answers,
    /// in any order, each named by its request id:
    /// - `Ok(id)`: imap-idle owns the client; our copy is closed;
    /// - `Kept`: imap-idle refused it, here is the client back;
    /// - `Lost`: the link died (or gave an answer for no request in
    ///   flight, and was closed) with the park unanswered: our copy is
    ///   closed and the client must be forgotten, as with
    ///   [`IdleLink::park`]. Every park in flight then comes back `Lost`.
    pub fn next_answer(&mut self) -> Option<Answer> {
        while self.ready.is_empty() && !self.in_flight.is_empty() {
            self.receive_one();
        }
        self.ready.pop_front()
    }

    /// Every outstanding outcome, waiting for each; ends when none is in
    /// flight.
    pub fn answers(&mut self) -> impl Iterator<Item = Answer> + '_ {
        std::iter::from_fn(|| self.next_answer())
    }

    /// Read one message from the daemon and settle what it answers.
    fn receive_one(&mut self) {
        let Some(link) = &mut self.link else {
            return self.lose_all("the link to imap-idle is closed");
        };
        match link.next_message() {
            Ok(Message::Parked { req, id }) if self.in_flight.contains_key(&req) => {
                // Our copy closes here: the client is imap-idle's.
                self.in_flight.remove(&req);
                self.ready.push_back((req, Ok(id)));
            }
            Ok(Message::Refused { req, kind, reason }) if self.in_flight.contains_key(&req) => {
                if let Some(client) = self.in_flight.remove(&req) {
                    let kept = Kept {
                        client,
                        kind: Some(kind),
                        reason,
                    };
                    self.ready.push_back((req, Err(NotParked::Kept(kept))));
                }
            }
            Ok(other) => {
                self.lose_all(&format!(
                    "imap-idle answered a request not in flight ({other:?})"
                ));
            }
            // imap-idle answers every park it read before it sends Error
            // and closes, and reads none after: what is still in flight
            // was never taken.
            Err(LinkError::Peer(reason)) => {
                self.link = None;
                for (req, client) in self.drain_in_flight() {
                    let back = NotParked::Kept(kept(client, reason.clone()));
                    self.ready.push_back((req, Err(back)));
                }
            }
            Err(e) => self.lose_all(&format!("no answer from imap-idle: {e}")),
        }
    }

    /// Close the link; every park in flight has an unknown fate.
    fn lose_all(&mut self, reason: &str) {
        self.link = None;
        // Our copies close here: imap-idle may hold these clients.
        for (req, _client) in self.drain_in_flight() {
            let lost = NotParked::Lost {
                reason: reason.to_owned(),
            };
            self.ready.push_back((req, Err(lost)));
        }
    }

    /// Every park in flight, oldest request first.
    fn drain_in_flight(&mut self) -> Vec<(u64, OwnedFd)> {
        let mut all: Vec<(u64, OwnedFd)> = self.in_flight.drain().collect();
        all.sort_unstable_by_key(|(req, _)| *req);
        all
    }
}

fn kept(client: OwnedFd, reason: String) -> Kept {
    Kept {
        client,
        kind: None,
        reason,
    }
}
