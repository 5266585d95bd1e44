//! The library for mail processes: hand an idle client to imap-idle.
//!
//! ```no_run
//! use std::os::fd::OwnedFd;
//! use imap_idle::mail::{IdleLink, Parking};
//! use imap_idle::proto::state::SessionState;
//!
//! fn park(client: OwnedFd, user: &str, cookie: [u8; 16], state: &SessionState) -> Option<OwnedFd> {
//!     let mut idle = IdleLink::connect("/run/imap-idle/park".as_ref()).ok()?;
//!     match idle.park(client, &Parking::idle(user, cookie, state)) {
//!         Ok(_id) => None,                  // imap-idle owns the client now
//!         Err(kept) => Some(kept.client),   // keep serving it; kept.reason says why
//!     }
//! }
//! ```

mod park;

pub use park::{IdleLink, Kept, Parking};
