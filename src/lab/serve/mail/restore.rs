//! A client imap-idle handed back: its session rebuilt from the parked
//! state, and then whatever woke it acted on.

use log::{debug, info, warn};

use super::super::session::Session;
use crate::proto::native::{Return, WakeReason};
use crate::proto::state::SessionState;

/// Rebuild a session from a client imap-idle handed back, and act on why
/// it woke.
pub(super) fn restore(session: &mut Session, ret: &Return) {
    let park = &ret.park;
    let state = SessionState::from_park_blob(
        &park.state,
        &park.user,
        &park.tag,
        &park.watch,
        park.keepalive_secs,
    );
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "user={} conn={}: damaged state: {e}",
                park.user, session.conn
            );
            return session.bye("Session state lost; please reconnect.");
        }
    };
    if let Err(e) = session.restore(&state) {
        info!(
            "user={} conn={}: cannot restore: {e}",
            park.user, session.conn
        );
        return session.bye(&format!("Cannot resume the session: {e}."));
    }
    if session.closing {
        return;
    }
    debug!(
        "user={} conn={}: restored after {} s parked ({:?})",
        park.user, session.conn, ret.parked_secs, ret.reason
    );
    let tag = &park.tag;
    match ret.reason {
        WakeReason::Done => {
            session
                .out
                .extend_from_slice(format!("{tag} OK Idle completed.\r\n").as_bytes());
            session.inbuf = ret.input.clone();
        }
        WakeReason::BadDone => {
            // The first line is the one that was not DONE: answered, dropped.
            session
                .out
                .extend_from_slice(format!("{tag} BAD Expected DONE.\r\n").as_bytes());
            let mut input = ret.input.clone();
            let cut = input
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |i| i + 1);
            input.drain(..cut);
            session.inbuf = input;
        }
        WakeReason::Input => session.inbuf = ret.input.clone(),
        WakeReason::Changed | WakeReason::Shutdown => {
            if ret.idle_running {
                session.idle = Some(tag.clone());
            }
            session.inbuf = ret.input.clone();
        }
    }
}
