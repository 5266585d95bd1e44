//! How a placed connection moves, and who may move it: a mail process
//! releases one of its own (closed, or parked under an imap-idle id that
//! stands for nothing else), imap-idle returns or reports gone only ids
//! parked for that very user, and a failed assignment is undone. Every
//! other claim is a [`Refusal`]: the tables stay as they were. Methods of
//! [`Routing`], apart from the tables themselves to keep each file short.

use std::fmt;
use std::time::Instant;

use super::parking::IdleRef;
use super::routing::{ConnEntry, Place, RouteError, Routing, User};
use crate::proto::native::{Cookie, Release};

/// Why a peer's word about a connection is not acted on: it names an id
/// that is not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// We gave out no such connection.
    Unknown,
    /// Another mail process's connection, or a parked one.
    NotYours,
    /// That imap-idle id already stands for another connection.
    IdTaken,
    /// That imap-idle id is another user's.
    OtherUser,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "no such connection",
            Refusal::NotYours => "the connection is not this process's",
            Refusal::IdTaken => "that imap-idle id already stands for another connection",
            Refusal::OtherUser => "that imap-idle id is another user's",
        })
    }
}

impl Routing {
    /// A client back from imap-idle (its cookie already checked) goes to
    /// process `key`; returns our connection id for it.
    pub fn restore(
        &mut self,
        idle: IdleRef,
        key: usize,
        user: &str,
        cookie: Cookie,
        now: Instant,
    ) -> Result<u64, RouteError> {
        let uid = self.users.get(user).map_or(0, |u| u.uid);
        // Only an entry parked for this very user is taken back: an id
        // another user's entry stands under is not this return's.
        let mine = self.parked_conn(idle, user);
        let conn = match mine {
            Some(conn) => conn,
            None => self.new_conn()?,
        };
        // Normally present (a parked connection keeps its user); recreated
        // with the same cookie if an assignment failed half-way.
        if !self.users.contains_key(user) {
            let u = User {
                cookie,
                uid,
                conns: 0,
            };
            self.users.insert(user.to_owned(), u);
            self.rejoin.changed = true;
        }
        if mine.is_some() {
            self.parking.unpark(idle);
        } else {
            // Back before its mail process said it was parked: count it
            // now, and drop the old entry when that `Released` arrives.
            self.parking.early.insert(idle, user.to_owned(), now);
            if let Some(u) = self.users.get_mut(user) {
                u.conns += 1;
            }
        }
        let remote = self.conns.get(&conn).map(|c| c.remote.clone());
        self.conns.insert(
            conn,
            ConnEntry {
                user: user.to_owned(),
                remote: remote.unwrap_or_default(),
                place: Place::Mail(key),
                since: now,
                rejoined: false,
            },
        );
        self.place_on(key, conn, user, uid);
        Ok(conn)
    }

    /// Our connection parked in imap-idle as `idle`, if it is `user`'s.
    fn parked_conn(&self, idle: IdleRef, user: &str) -> Option<u64> {
        let conn = self.parking.conn_of(idle)?;
        self.conns
            .get(&conn)
            .is_some_and(|c| c.user == user)
            .then_some(conn)
    }

    /// May imap-idle speak of `idle` as `user`'s? Not when that id of that
    /// daemon stands for another user's parked connection.
    pub fn check_idle_id(&self, idle: IdleRef, user: &str) -> Result<(), Refusal> {
        match self.parking.conn_of(idle) {
            Some(_) if self.parked_conn(idle, user).is_none() => Err(Refusal::OtherUser),
            _ => Ok(()),
        }
    }

    /// Where `user`'s returning connection stands before
    /// [`Routing::restore`], to undo it if the assignment cannot be sent.
    pub fn parked_place(&self, idle: IdleRef, user: &str) -> Option<Place> {
        let conn = self.parked_conn(idle, user)?;
        self.conns.get(&conn).map(|c| c.place.clone())
    }

    /// Undo `login` (`was` None) or `restore` (`was` the place before)
    /// of `conn` on process `key`.
    pub fn unassign(&mut self, key: usize, conn: u64, was: Option<Place>, idle: Option<IdleRef>) {
        match was {
            Some(place @ Place::Parked { idle, .. }) => {
                let user = self.conns.get(&conn).map(|c| c.user.clone());
                if let Some(user) = user {
                    self.take_off(key, conn, &user);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.place = place;
                    self.parking.park(idle, conn);
                }
            }
            _ => {
                if let Some(idle) = idle {
                    self.parking.early.remove(&idle);
                }
                self.remove_conn(conn);
            }
        }
    }

    /// Mail process `key` says a connection left it. Only its own
    /// connections, and only to park them under an imap-idle id (of the
    /// daemon named) that stands for nothing else.
    pub fn released(
        &mut self,
        key: usize,
        conn: u64,
        how: Release,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(entry) = self.conns.get(&conn) else {
            return Err(Refusal::Unknown);
        };
        if entry.place != Place::Mail(key) {
            return Err(Refusal::NotYours);
        }
        let user = entry.user.clone();
        if let Release::Parked {
            idle_id, idle_pid, ..
        } = &how
        {
            let idle = IdleRef {
                pid: *idle_pid,
                id: *idle_id,
            };
            if let Some(holder) = self.parking.conn_of(idle) {
                // imap-idle re-reported it before this release arrived: the
                // entry made from its report is this very connection.
                let same = self
                    .conns
                    .get(&holder)
                    .is_some_and(|c| c.rejoined && c.user == user);
                if !same {
                    return Err(Refusal::IdTaken);
                }
                self.remove_conn(holder);
            }
            if self.parking.early.get(&idle).is_some_and(|u| *u != user) {
                return Err(Refusal::OtherUser);
            }
        }
        self.take_off(key, conn, &user);
        match how {
            Release::Closed => {
                self.remove_conn(conn);
            }
            Release::Parked {
                idle_id,
                idle_pid,
                mailbox,
            } => {
                let idle = IdleRef {
                    pid: idle_pid,
                    id: idle_id,
                };
                if self.parking.early.remove(&idle).is_some() {
                    // Already came back (or hung up) under a new entry.
                    self.remove_conn(conn);
                } else if let Some(e) = self.conns.get_mut(&conn) {
                    e.place = Place::Parked { idle, mailbox };
                    e.since = now;
                    self.parking.park(idle, conn);
                }
            }
        }
        Ok(())
    }

    /// imap-idle `idle.pid` says `user`'s parked client hung up (cookie
    /// already checked); our connection id, if we had it as parked.
    pub fn gone(
        &mut self,
        idle: IdleRef,
        user: &str,
        now: Instant,
    ) -> Result<Option<u64>, Refusal> {
        self.check_idle_id(idle, user)?;
        match self.parking.unpark(idle) {
            Some(conn) => {
                self.remove_conn(conn);
                Ok(Some(conn))
            }
            None => {
                self.parking.early.insert(idle, user.to_owned(), now);
                Ok(None)
            }
        }
    }
}
