//! X-STATE and parking: a session's state out, and a session rebuilt from
//! one. A state from a client is untrusted: it is checked against the
//! mailbox it names before anything of it is used, and nothing in it is
//! expanded beyond the mailbox's own size (see `bounds`).

use std::collections::BTreeSet;

use log::warn;

use super::super::maildir::{canonical, Mailbox};
use super::{Selected, Session};
use crate::proto::state::{SessionState, UidSet};

impl Session {
    /// The state to park with or to export: everything needed to reopen
    /// this exact mailbox and tell what changed later.
    pub fn state(&self) -> Option<SessionState> {
        let sel = self.selected.as_ref()?;
        Some(SessionState {
            user: self.user.clone(),
            mailbox: sel.mb.name.clone(),
            mailbox_guid: sel.mb.guid,
            uidvalidity: sel.mb.uidvalidity,
            examined: sel.examined,
            highest_modseq: sel.known,
            recent_uids: ranges(&sel.recent),
            searchres: None,
            keywords_md5: [0; 16],
            watch: sel.mb.watch_paths(),
            tag: self.idle.clone().unwrap_or_default(),
            keepalive_secs: self.keepalive_secs,
        })
    }

    /// Reopen the mailbox of `state` as the client last saw it, then tell
    /// the client what changed since. Err: the mailbox is gone or another,
    /// or the state cannot be of this mailbox.
    pub fn restore(&mut self, state: &SessionState) -> Result<(), String> {
        let (mut mb, moved) =
            Mailbox::open(&self.root, &state.mailbox).map_err(|e| e.to_string())?;
        if mb.guid != state.mailbox_guid || mb.uidvalidity != state.uidvalidity {
            return Err(format!(
                "mailbox {} was deleted and created again",
                canonical(&state.mailbox)
            ));
        }
        let saved = state.highest_modseq;
        if saved > mb.highest_modseq {
            return Err("the state is newer than the mailbox".into());
        }
        // The client's view at `saved`: what existed then and not
        // expunged before it.
        let view: Vec<u32> = mb
            .records
            .iter()
            .filter(|r| r.added <= saved && (r.expunged == 0 || r.expunged > saved))
            .map(|r| r.uid)
            .collect();
        // UIDs below UIDNEXT are all this mailbox ever gave out (it is the
        // same mailbox: GUID and UIDVALIDITY match), so an honest state
        // names no other. The ranges are sorted: the last ends highest.
        if let Some(&(_, hi)) = state.recent_uids.last() {
            if hi >= mb.uidnext {
                return Err(format!(
                    "its \\Recent UIDs go up to {hi}, past this mailbox's UIDNEXT {}",
                    mb.uidnext
                ));
            }
        }
        // Built from the mailbox's records, not by expanding the ranges: the
        // work is bounded by the mailbox's size whatever the state says.
        let mut recent: BTreeSet<u32> = mb
            .records
            .iter()
            .map(|r| r.uid)
            .filter(|&uid| in_ranges(&state.recent_uids, uid))
            .collect();
        recent.extend(moved);
        // Already synced by open; catch_up syncs again, cheaply.
        mb.name = canonical(&state.mailbox);
        self.selected = Some(Selected {
            mb,
            examined: state.examined,
            view,
            known: saved,
            recent,
        });
        self.catch_up();
        Ok(())
    }

    pub(super) fn export(&mut self, tag: &str) {
        match self.state() {
            Some(state) => {
                self.say(&format!("* STATE {}", state.to_text()));
                self.say(&format!("{tag} OK State exported."));
            }
            None => self.say(&format!("{tag} NO Select a mailbox first.")),
        }
    }

    pub(super) fn import(&mut self, tag: &str, text: &str) {
        let state = match SessionState::from_text(text) {
            Ok(s) => s,
            Err(e) => return self.refuse(tag, &format!("Bad state: {e}")),
        };
        if state.user != self.user {
            return self.refuse(tag, "That state belongs to another user");
        }
        match self.restore(&state) {
            Ok(()) if self.closing => {}
            Ok(()) => self.say(&format!("{tag} OK State imported.")),
            Err(e) => {
                self.selected = None;
                self.refuse(tag, &format!("Cannot restore: {e}"));
            }
        }
    }

    /// An X-STATE refused: the client is told why, and so is the log (a
    /// state that does not fit is a broken or a hostile client).
    fn refuse(&mut self, tag: &str, why: &str) {
        warn!(
            "user={} conn={} ({}): X-STATE refused: {why}",
            self.user, self.conn, self.remote
        );
        self.say(&format!("{tag} NO {why}."));
    }
}

/// Whether `uid` is in `set` (sorted, disjoint ranges, as decoding checks).
fn in_ranges(set: &UidSet, uid: u32) -> bool {
    set.binary_search_by(|&(lo, hi)| {
        if hi < uid {
            std::cmp::Ordering::Less
        } else if lo > uid {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    })
    .is_ok()
}

fn ranges(set: &BTreeSet<u32>) -> UidSet {
    let mut out: UidSet = Vec::new();
    for &u in set {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == u => *hi = u,
            _ => out.push((u, u)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::super::maildir::deliver;
    use super::*;

    #[test]
    fn recent_ranges_are_bounded_by_the_mailbox() {
        let t = tempfile::tempdir().unwrap();
        for body in [&b"a"[..], b"b", b"c"] {
            deliver(t.path(), "INBOX", body).unwrap();
        }
        let mut s = Session::new(1, "alice", [0; 16], "", t.path().to_path_buf());
        s.inbuf.extend_from_slice(b"a SELECT INBOX\r\n");
        s.run();
        let mut state = s.state().unwrap();
        // UIDNEXT is 4: 1:4294967295 names UIDs it never gave out.
        state.recent_uids = vec![(1, u32::MAX)];
        let err = Session::new(2, "alice", [0; 16], "", t.path().to_path_buf())
            .restore(&state)
            .err()
            .unwrap();
        assert!(err.contains("UIDNEXT 4"), "{err}");
        // Within UIDNEXT: only the UIDs that exist count.
        state.recent_uids = vec![(2, 3)];
        let mut back = Session::new(3, "alice", [0; 16], "", t.path().to_path_buf());
        back.restore(&state).unwrap();
        let recent: Vec<u32> = back.selected.unwrap().recent.into_iter().collect();
        assert_eq!(recent, [2, 3]);
        assert!(in_ranges(&vec![(1, 1), (5, 9)], 7));
        assert!(!in_ranges(&vec![(1, 1), (5, 9)], 3));
        assert!(!in_ranges(&Vec::new(), 3));
    }
}
