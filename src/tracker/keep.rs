//! When the cookie file is read and written: read once at start, written
//! after cookies change, at most every [`SAVE_GAP`] so that a burst of new
//! users costs a few writes, not one each; and once more on the way out.
//! A user whose first login came less than that before a crash of the
//! tracker has no kept cookie: their parked clients are refused.

use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::cookie_file;
use super::routing::Routing;

/// Writes are this far apart at least.
pub const SAVE_GAP: Duration = Duration::from_millis(50);

pub fn load(path: &Path, routing: &mut Routing, claim_until: Instant) {
    match cookie_file::load(path) {
        Ok(None) => {}
        Ok(Some(saved)) => {
            info!(
                "{} users' cookies kept from before the restart ({}); their connections \
                 are known again as imap-idle and the mail processes report them",
                saved.users.len(),
                path.display()
            );
            routing.load(saved, claim_until);
        }
        Err(e) => warn!("SECURITY: not using the kept cookies: {e}; starting without"),
    }
}

/// Write the file if cookies changed and the last write is far enough back.
pub fn save_if_due(
    path: &Path,
    routing: &mut Routing,
    next_save: &mut Option<Instant>,
    now: Instant,
) {
    if let Some(at) = *next_save {
        if at > now {
            return;
        }
        *next_save = None;
    }
    // The first change after a quiet spell is written at once.
    if !routing.rejoin.changed {
        return;
    }
    routing.rejoin.changed = false;
    save_now(path, routing);
    *next_save = Some(now + SAVE_GAP);
}

pub fn save_now(path: &Path, routing: &Routing) {
    if let Err(e) = cookie_file::save(path, &routing.saved()) {
        warn!(
            "writing the cookies to {}: {e}; a restart would refuse parked clients",
            path.display()
        );
    }
}

/// After a restart, kept cookies nobody claimed in time go.
pub fn unclaimed(routing: &mut Routing, now: Instant) {
    let gone = routing.drop_unclaimed(now);
    if !gone.is_empty() {
        info!(
            "{} kept cookies dropped: no connection of theirs was reported in time",
            gone.len()
        );
    }
}
