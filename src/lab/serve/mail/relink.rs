//! The reference mail process without its tracker: it keeps serving its
//! clients, tries the link again with backoff (the outage logged once,
//! not per attempt) and re-registers with every connection it serves.
//! It gives up, and exits with its clients, once the tracker has been
//! away [`GIVE_UP`], or at once when the tracker's directory is gone
//! (the whole system was taken down, not restarted).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::Interest;

use super::{Mail, TRACKER};
use crate::mail::TrackerLink;
use crate::proto::native::Served;

/// A tracker away this long is not coming back.
pub const GIVE_UP: Duration = Duration::from_secs(60);

impl Mail {
    /// The tracker link broke: forget it and try again from the next tick.
    pub(super) fn tracker_lost(&mut self, why: &str) {
        if let Some(t) = self.tracker.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&t.as_raw_fd()));
        }
        if self.redial.lost(Instant::now()) {
            warn!(
                "mail process pid={}: tracker link lost ({why}); keeping {} clients, \
                 registering again when the tracker is back",
                std::process::id(),
                self.clients.len()
            );
        }
    }

    /// If the link is down and an attempt is due: register again and
    /// report what we serve. Err: give up (see [`GIVE_UP`]).
    pub(super) fn relink(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if !self.redial.due(now) {
            return Ok(());
        }
        let path = &self.cfg.tracker_socket;
        let dir_gone = path.parent().is_some_and(|d| !d.exists());
        if dir_gone || self.redial.away_for(now) >= GIVE_UP {
            return Err(format!(
                "tracker at {} away for {} s{}; giving up",
                path.display(),
                self.redial.away_for(now).as_secs(),
                if dir_gone {
                    " and its directory gone"
                } else {
                    ""
                }
            ));
        }
        let serving: Vec<Served> = self
            .clients
            .iter()
            .map(|(_, c)| Served {
                conn: c.session.conn,
                user: c.session.user.clone(),
                uid: c.uid,
                cookie: c.session.cookie,
            })
            .collect();
        let n = serving.len();
        let link = match TrackerLink::rejoin(path, self.uid, self.cfg.capacity, serving) {
            Ok(l) => l,
            Err(_) => {
                self.redial.failed(now);
                return Ok(());
            }
        };
        let registered = self.poll.registry().register(
            &mut SourceFd(&link.as_raw_fd()),
            TRACKER,
            Interest::READABLE,
        );
        if let Err(e) = registered {
            warn!("registering the tracker link: {e}");
            self.redial.failed(now);
            return Ok(());
        }
        self.tracker = Some(link);
        self.redial.joined();
        info!(
            "mail process pid={}: registered again with {}, reporting {n} clients",
            std::process::id(),
            path.display()
        );
        // Messages that came before registration raise no new edge.
        self.tracker_event()
    }
}
