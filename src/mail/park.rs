//! Parking a client: a blocking request that either transfers the client
//! to imap-idle or gives it back with the reason.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::link::{Link, LinkError};
use crate::proto::native::{Cookie, Message, Park, RefuseKind, Role};
use crate::proto::state::SessionState;

/// What to park a client with.
pub type Parking = Park;

impl Park {
    /// A client inside IDLE, described by its session state.
    pub fn idle(user: &str, cookie: Cookie, state: &SessionState) -> Park {
        Park {
            user: user.to_owned(),
            cookie,
            tag: state.tag.clone(),
            in_idle: true,
            keepalive_secs: state.keepalive_secs,
            watch: state.watch.clone(),
            state: state.park_blob(),
        }
    }
}

/// The client was not parked: it is handed back to keep serving.
#[derive(Debug)]
pub struct Kept {
    pub client: OwnedFd,
    /// The daemon's refusal kind; `None` when the daemon could not be asked.
    pub kind: Option<RefuseKind>,
    pub reason: String,
}

/// A connection to imap-idle's park socket, reusable for many parks.
pub struct IdleLink {
    link: Link,
}

impl IdleLink {
    pub fn connect(path: &Path) -> Result<IdleLink, LinkError> {
        let link = Link::connect(path, Role::MailProcess)?;
        if link.peer_role() != Role::Idle {
            return Err(LinkError::Unexpected("the peer is not imap-idle"));
        }
        Ok(IdleLink { link })
    }

    /// Park `client`. On success imap-idle owns it and our descriptor is
    /// closed; otherwise it comes back in `Kept`. When the answer is lost
    /// (daemon died mid-request) the client is kept: the daemon drops a
    /// park it could not confirm, so exactly one side ever serves it.
    pub fn park(&mut self, client: OwnedFd, park: &Park) -> Result<u64, Kept> {
        let answer = self
            .link
            .request(&Message::Park(park.clone()), Some(client.as_fd()));
        match answer {
            Ok(Message::Parked { id }) => Ok(id),
            Ok(Message::Refused { kind, reason }) => Err(Kept {
                client,
                kind: Some(kind),
                reason,
            }),
            Ok(_) => Err(Kept {
                client,
                kind: None,
                reason: "unexpected answer from imap-idle".into(),
            }),
            Err(e) => Err(Kept {
                client,
                kind: None,
                reason: e.to_string(),
            }),
        }
    }
}
