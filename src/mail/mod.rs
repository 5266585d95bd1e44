//! The library for the processes around imap-idle: a mail process
//! registers with imap-tracker ([`TrackerLink`]), receives clients (fresh
//! logins and clients back from imap-idle, whose state it restores with
//! [`SessionState`](crate::proto::state::SessionState)), parks idle ones
//! ([`IdleLink`], or [`IdlePool`] over several imap-idle daemons) and
//! reports them leaving; a login process hands
//! authenticated clients to the tracker ([`LoginLink`]). When the tracker
//! restarts, a mail process keeps its clients, tries again ([`Redial`])
//! and re-registers with what it serves ([`TrackerLink::rejoin`]), so that
//! the new tracker knows those connections again.
//!
//! [`IdleLink::park`] parks one client and waits for the answer: enough
//! for a mail process that parks now and then. One that parks many at
//! once pipelines them with [`IdleLink::send_park`] and
//! [`IdleLink::next_answer`] (answers matched by request id, a window of
//! its choosing in flight; see `pipelined.rs`'s example), which lets
//! imap-idle take a batch per loop turn.
//!
//! ```no_run
//! use std::os::fd::OwnedFd;
//! use imap_idle::mail::{IdleLink, NotParked, Parking};
//! use imap_idle::proto::state::SessionState;
//!
//! fn park(client: OwnedFd, user: &str, cookie: [u8; 16], state: &SessionState) -> Option<OwnedFd> {
//!     let mut idle = IdleLink::connect("/run/imap-idle/park".as_ref()).ok()?;
//!     match idle.park(client, &Parking::idle(user, cookie, state)) {
//!         Ok(_id) => None,                          // imap-idle owns the client now
//!         Err(NotParked::Kept(kept)) => Some(kept.client), // keep serving it; kept.reason says why
//!         Err(NotParked::Lost { .. }) => None,      // fate unknown: forget it, never serve it twice
//!     }
//! }
//! ```

mod login;
mod park;
mod pipelined;
mod pool;
mod redial;
mod tracker;

pub use login::{LoginAnswer, LoginLink};
pub use park::{Answer, IdleLink, Kept, NotParked, Parking};
pub use pipelined::MAX_WINDOW;
pub use pool::{IdlePool, ParkedIn, FULL_BACKOFF};
pub use redial::Redial;
pub use tracker::{FromTracker, TrackerLink};
