//! What the core asks the event loop to do. The core never touches a
//! socket: it says what to write, what to close and whom to tell, and the
//! loop carries it out in order.

use std::borrow::Cow;
use std::os::fd::RawFd;

use super::conn::ConnId;
use crate::proto::native::{Cookie, Gone};

/// A connection as Dovecot's anvil hears of it (Dovecot mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub id: ConnId,
    pub user: String,
    /// What the hand-off adapter kept in the cookie (Dovecot mode has no
    /// cookies): the client's remote address.
    pub cookie: Cookie,
}

#[derive(Debug)]
pub enum Action<F, W> {
    /// Stop polling this client descriptor (still open at this point).
    Unpoll(RawFd),
    /// Write `bytes` to the client of `id`, whole and without blocking;
    /// if that fails the loop calls [`super::Core::write_failed`].
    Write {
        id: ConnId,
        bytes: Cow<'static, [u8]>,
        what: &'static str,
    },
    /// The connection left us: close its descriptor.
    Close(F),
    /// The connection is given up: write `bye` (a `* BYE`, framed as the
    /// client reads), shut the socket down for every holder (it may sit in
    /// a peer's queue too), then close.
    Bye { fd: F, bye: Cow<'static, [u8]> },
    /// The last watcher of this watch left (a kernel watch, or a Dovecot
    /// notify fd we keep).
    Unwatch(W),
    /// Tell the tracker a parked client is gone (native mode).
    Gone(Gone),
    /// A connection left while its return was under way: drop that return.
    Abandon(ConnId),
    /// The number of connections held changed.
    Capacity,
    /// A connection came in (every way in: hand-off, predecessor), when
    /// presence is announced.
    Joined(Presence),
    /// A connection left (every way out: returned, gone, given up,
    /// kicked, handed to a successor), when presence is announced.
    Left(Presence),
}
