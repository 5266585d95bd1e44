//! Parking a client: a blocking request that either transfers the client
//! to imap-idle or gives it back with the reason. Many parks in flight on
//! one link are in `pipelined.rs`.

use std::collections::{HashMap, VecDeque};
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

/// Why a park did not transfer the client.
#[derive(Debug)]
pub enum NotParked {
    /// imap-idle did not take it: keep serving it.
    Kept(Kept),
    /// Whether imap-idle took it is unknown (no answer in time, the link
    /// died after the request went out, or the answer was for another
    /// request). Our descriptor is closed and the client must be forgotten:
    /// serving it on could mean two processes serve one client. The link
    /// is closed too, so no late answer can be misread.
    Lost { reason: String },
}

impl NotParked {
    pub fn reason(&self) -> &str {
        match self {
            NotParked::Kept(k) => &k.reason,
            NotParked::Lost { reason } => reason,
        }
    }
}

impl std::fmt::Display for NotParked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotParked::Kept(k) => write!(f, "kept: {}", k.reason),
            NotParked::Lost { reason } => write!(f, "lost: {reason}"),
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

/// One park's outcome in the pipelined API: the request id and either
/// the daemon's id for the client or why it was not parked.
pub type Answer = (u64, Result<u64, NotParked>);

/// A connection to imap-idle's park socket, reusable for many parks:
/// one at a time with [`IdleLink::park`], or many in flight with
/// [`IdleLink::send_park`] and [`IdleLink::next_answer`].
pub struct IdleLink {
    /// `None` once closed after a failure.
    pub(super) link: Option<Link>,
    pub(super) next_req: u64,
    /// Pipelined parks sent and not answered yet: our copy of each client,
    /// kept until the daemon says whose it is.
    pub(super) in_flight: HashMap<u64, OwnedFd>,
    /// Answers already read (or settled by the link's end) but not yet
    /// taken by the caller.
    pub(super) ready: VecDeque<Answer>,
    /// The daemon's pid from its Hello, which the tracker knows it by.
    pub(super) pid: u32,
}

impl IdleLink {
    pub fn connect(path: &Path) -> Result<IdleLink, LinkError> {
        let link = Link::connect(path, Role::MailProcess)?;
        if link.peer_role() != Role::Idle {
            return Err(LinkError::Unexpected("the peer is not imap-idle"));
        }
        Ok(IdleLink {
            pid: link.peer_pid(),
            link: Some(link),
            next_req: 1,
            in_flight: HashMap::new(),
            ready: VecDeque::new(),
        })
    }

    /// The daemon's pid, as its Hello gave it: what `Release::Parked`
    /// names it by (several imap-idle daemons may serve one tracker).
    pub fn daemon_pid(&self) -> u32 {
        self.pid
    }

    /// Whether the link still works; after a lost park it is closed and a
    /// new one must be made.
    pub fn is_open(&self) -> bool {
        self.link.is_some()
    }

    /// Park `client`. On success imap-idle owns it and our descriptor is
    /// closed. `Kept` gives it back when imap-idle refused it or the
    /// request could not be sent; `Lost` when its fate is unknown.
    /// While pipelined parks are in flight it refuses (`Kept`): their
    /// answers would come first.
    pub fn park(&mut self, client: OwnedFd, park: &Park) -> Result<u64, NotParked> {
        if !self.in_flight.is_empty() || !self.ready.is_empty() {
            return Err(NotParked::Kept(Kept {
                client,
                kind: None,
                reason: "pipelined parks are in flight on this link".into(),
            }));
        }
        let req = self.next_req;
        self.next_req += 1;
        let Some(link) = &mut self.link else {
            return Err(NotParked::Kept(Kept {
                client,
                kind: None,
                reason: "the link to imap-idle is closed".into(),
            }));
        };
        let msg = Message::Park {
            req,
            park: park.clone(),
        };
        if let Err(e) = link.send(&msg, Some(client.as_fd())) {
            // A packet goes whole or not at all: imap-idle never saw it.
            self.link = None;
            return Err(NotParked::Kept(Kept {
                client,
                kind: None,
                reason: e.to_string(),
            }));
        }
        match link.next_message() {
            Ok(Message::Parked { req: r, id }) if r == req => Ok(id),
            Ok(Message::Refused {
                req: r,
                kind,
                reason,
            }) if r == req => Err(NotParked::Kept(Kept {
                client,
                kind: Some(kind),
                reason,
            })),
            Ok(other) => {
                self.link = None;
                let reason = format!("imap-idle answered another request ({other:?})");
                Err(NotParked::Lost { reason })
            }
            // imap-idle closes with Error before reading a park it rejects
            // as malformed, so the client is surely ours.
            Err(LinkError::Peer(reason)) => {
                self.link = None;
                Err(NotParked::Kept(Kept {
                    client,
                    kind: None,
                    reason,
                }))
            }
            Err(e) => {
                self.link = None;
                let reason = format!("no answer from imap-idle: {e}");
                Err(NotParked::Lost { reason })
            }
        }
    }
}
