//! One authenticated IMAP session of the reference mail process: commands
//! in, responses out, no I/O. The mail process's loop moves the bytes.
//! Commands are handled while fewer than [`MAX_QUEUED_OUTPUT`] bytes of
//! answers wait; the rest of the input waits for the loop to write them.

mod xstate;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use super::bounds::MAX_QUEUED_OUTPUT;
use super::imap::{in_set, list_items, quote, take_line, words};
use super::maildir::{Mailbox, MailboxError};
use crate::proto::native::{Activity, ConnInfo, Cookie};

pub const CAPABILITY: &str = "IMAP4rev1 IDLE CONDSTORE X-STATE";
/// Longest command line we take; longer ones end the session.
const MAX_LINE: usize = 8192;

pub struct Selected {
    pub mb: Mailbox,
    pub examined: bool,
    /// UIDs in the client's sequence order: message N is `view[N-1]`.
    pub view: Vec<u32>,
    /// Modseq up to which the client has been told everything.
    pub known: u64,
    pub recent: BTreeSet<u32>,
}

pub struct Session {
    pub conn: u64,
    pub user: String,
    pub cookie: Cookie,
    pub remote: String,
    /// The user's Maildir.
    pub root: PathBuf,
    pub keepalive_secs: u32,
    pub inbuf: Vec<u8>,
    pub out: Vec<u8>,
    pub selected: Option<Selected>,
    /// Tag of the running IDLE.
    pub idle: Option<String>,
    /// When the current activity (idle or not) began.
    pub since: Instant,
    /// The session ends once `out` is written.
    pub closing: bool,
}

impl Session {
    pub fn new(conn: u64, user: &str, cookie: Cookie, remote: &str, root: PathBuf) -> Session {
        Session {
            conn,
            user: user.to_owned(),
            cookie,
            remote: remote.to_owned(),
            root,
            keepalive_secs: 120,
            inbuf: Vec::new(),
            out: Vec::new(),
            selected: None,
            idle: None,
            since: Instant::now(),
            closing: false,
        }
    }

    fn say(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn bye(&mut self, why: &str) {
        self.say(&format!("* BYE {why}"));
        self.closing = true;
    }

    /// Handle the complete lines in `inbuf`, as long as the answers
    /// waiting in `out` stay under MAX_QUEUED_OUTPUT (the loop then writes
    /// them before taking more).
    pub fn run(&mut self) {
        while !self.closing && self.out.len() < MAX_QUEUED_OUTPUT {
            let Some(line) = take_line(&mut self.inbuf) else {
                if self.inbuf.len() > MAX_LINE {
                    self.bye("Command line too long.");
                }
                return;
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(tag) = self.idle.take() {
                self.since = Instant::now();
                if line.eq_ignore_ascii_case("DONE") {
                    self.say(&format!("{tag} OK Idle completed."));
                } else {
                    self.say(&format!("{tag} BAD Expected DONE."));
                }
                continue;
            }
            self.command(&line);
        }
    }

    fn command(&mut self, line: &str) {
        let w = match words(line) {
            Ok(w) => w,
            Err(e) => {
                let tag = line.split(' ').next().unwrap_or("*");
                return self.say(&format!("{tag} BAD {e}"));
            }
        };
        let (Some(tag), Some(cmd)) = (w.first(), w.get(1)) else {
            return self.say("* BAD Empty command.");
        };
        let tag = tag.clone();
        let args = &w[2..];
        match cmd.to_ascii_uppercase().as_str() {
            "CAPABILITY" => {
                self.say(&format!("* CAPABILITY {CAPABILITY}"));
                self.say(&format!("{tag} OK Capability completed."));
            }
            "NOOP" => {
                self.catch_up();
                self.say(&format!("{tag} OK NOOP completed."));
            }
            "LOGOUT" => {
                self.say("* BYE Logging out.");
                self.say(&format!("{tag} OK Logout completed."));
                self.closing = true;
            }
            "LOGIN" | "AUTHENTICATE" => self.say(&format!("{tag} BAD Already logged in.")),
            "SELECT" | "EXAMINE" => match args.first() {
                Some(name) => self.select(&tag, name, cmd.eq_ignore_ascii_case("EXAMINE")),
                None => self.say(&format!("{tag} BAD Missing mailbox name.")),
            },
            "STATUS" => match (args.first(), args.get(1)) {
                (Some(name), Some(items)) => self.status(&tag, name, items),
                _ => self.say(&format!("{tag} BAD STATUS needs a mailbox and items.")),
            },
            "FETCH" => self.fetch(&tag, args, false),
            "UID"
                if args
                    .first()
                    .is_some_and(|a| a.eq_ignore_ascii_case("FETCH")) =>
            {
                self.fetch(&tag, &args[1..], true)
            }
            "IDLE" => {
                self.say("+ idling");
                self.idle = Some(tag);
                self.since = Instant::now();
            }
            "X-STATE" => match args.first() {
                None => self.export(&tag),
                Some(text) => self.import(&tag, text),
            },
            _ => self.say(&format!("{tag} BAD Unknown command.")),
        }
    }

    fn select(&mut self, tag: &str, name: &str, examined: bool) {
        self.selected = None;
        let (mb, moved) = match Mailbox::open(&self.root, name) {
            Ok(x) => x,
            Err(e) => return self.say(&format!("{tag} NO {e}")),
        };
        let view: Vec<u32> = mb.present().map(|r| r.uid).collect();
        let sel = Selected {
            known: mb.highest_modseq,
            recent: moved.into_iter().collect(),
            examined,
            view,
            mb,
        };
        self.say("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)");
        self.say(&format!("* {} EXISTS", sel.view.len()));
        self.say(&format!("* {} RECENT", sel.recent.len()));
        self.say(&format!(
            "* OK [UIDVALIDITY {}] UIDs valid.",
            sel.mb.uidvalidity
        ));
        self.say(&format!(
            "* OK [UIDNEXT {}] Predicted next UID.",
            sel.mb.uidnext
        ));
        self.say(&format!(
            "* OK [HIGHESTMODSEQ {}] Highest.",
            sel.mb.highest_modseq
        ));
        let mode = if examined { "READ-ONLY" } else { "READ-WRITE" };
        self.say(&format!("{tag} OK [{mode}] Select completed."));
        self.selected = Some(sel);
    }

    fn status(&mut self, tag: &str, name: &str, items: &str) {
        let mb = match Mailbox::open(&self.root, name) {
            Ok((mb, _)) => mb,
            Err(e) => return self.say(&format!("{tag} NO {e}")),
        };
        let mut parts = Vec::new();
        for item in list_items(items) {
            let value = match item.as_str() {
                "MESSAGES" => mb.present().count() as u64,
                "UIDNEXT" => mb.uidnext as u64,
                "UIDVALIDITY" => mb.uidvalidity as u64,
                "UNSEEN" => mb.present().filter(|r| !r.flags.contains('S')).count() as u64,
                "HIGHESTMODSEQ" => mb.highest_modseq,
                // New mail goes to cur/ at once here, and \Recent belongs to
                // the session that moved it.
                "RECENT" => 0,
                _ => return self.say(&format!("{tag} BAD Unknown STATUS item {item}.")),
            };
            parts.push(format!("{item} {value}"));
        }
        self.say(&format!(
            "* STATUS {} ({})",
            quote(&mb.name),
            parts.join(" ")
        ));
        self.say(&format!("{tag} OK Status completed."));
    }

    fn fetch(&mut self, tag: &str, args: &[String], by_uid: bool) {
        let Some(sel) = &self.selected else {
            return self.say(&format!("{tag} BAD No mailbox selected."));
        };
        let (Some(set), Some(items)) = (args.first(), args.get(1)) else {
            return self.say(&format!("{tag} BAD FETCH needs a set and items."));
        };
        let items = list_items(items);
        if items
            .iter()
            .any(|i| !matches!(i.as_str(), "FLAGS" | "UID" | "MODSEQ"))
        {
            return self.say(&format!(
                "{tag} BAD Only FLAGS, UID and MODSEQ can be fetched here."
            ));
        }
        let max = if by_uid {
            sel.view.last().copied().unwrap_or(0)
        } else {
            sel.view.len() as u32
        };
        let mut lines = Vec::new();
        for (i, &uid) in sel.view.iter().enumerate() {
            let seq = i as u32 + 1;
            let key = if by_uid { uid } else { seq };
            match in_set(set, key, max) {
                Some(true) => {}
                Some(false) => continue,
                None => return self.say(&format!("{tag} BAD Bad sequence set.")),
            }
            let Some(r) = sel.mb.record(uid) else {
                continue;
            };
            let mut parts = vec![format!("UID {uid}")];
            if items.iter().any(|i| i == "FLAGS") {
                parts.push(format!(
                    "FLAGS {}",
                    flags_with_recent(&r.imap_flags(), sel.recent.contains(&uid))
                ));
            }
            if items.iter().any(|i| i == "MODSEQ") {
                parts.push(format!("MODSEQ ({})", r.modseq));
            }
            lines.push(format!("* {seq} FETCH ({})", parts.join(" ")));
        }
        for l in lines {
            self.say(&l);
        }
        self.say(&format!("{tag} OK Fetch completed."));
    }

    /// Sync the selected mailbox and tell the client what changed since
    /// it last heard: EXPUNGE, FETCH of changed flags, EXISTS and RECENT.
    /// A mailbox that is gone ends the session.
    pub fn catch_up(&mut self) {
        let Some(sel) = &mut self.selected else {
            return;
        };
        let moved = match sel.mb.sync() {
            Ok(m) => m,
            Err(MailboxError::NotFound(_)) => {
                let name = sel.mb.name.clone();
                self.selected = None;
                return self.bye(&format!("Mailbox {name} was deleted."));
            }
            Err(e) => {
                self.selected = None;
                return self.bye(&format!("Mailbox error: {e}"));
            }
        };
        sel.recent.extend(moved);
        let mut lines = Vec::new();
        let known = sel.known;
        // Expunges first, each numbered as the client sees it at that moment.
        let mut i = 0;
        while i < sel.view.len() {
            let gone = sel.mb.record(sel.view[i]).is_none_or(|r| !r.present());
            if gone {
                sel.recent.remove(&sel.view[i]);
                sel.view.remove(i);
                lines.push(format!("* {} EXPUNGE", i + 1));
            } else {
                i += 1;
            }
        }
        for (i, &uid) in sel.view.iter().enumerate() {
            if let Some(r) = sel.mb.record(uid) {
                if r.modseq > known && r.added <= known {
                    let flags = flags_with_recent(&r.imap_flags(), sel.recent.contains(&uid));
                    lines.push(format!(
                        "* {} FETCH (UID {uid} FLAGS {flags} MODSEQ ({}))",
                        i + 1,
                        r.modseq
                    ));
                }
            }
        }
        let before = sel.view.len();
        let last = sel.view.last().copied().unwrap_or(0);
        let arrived: Vec<u32> = sel
            .mb
            .present()
            .map(|r| r.uid)
            .filter(|&u| u > last)
            .collect();
        sel.view.extend(arrived);
        if sel.view.len() != before {
            lines.push(format!("* {} EXISTS", sel.view.len()));
            let recent = sel.view.iter().filter(|u| sel.recent.contains(u)).count();
            lines.push(format!("* {recent} RECENT"));
        }
        sel.known = sel.mb.highest_modseq;
        for l in lines {
            self.say(&l);
        }
    }

    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            id: self.conn,
            user: self.user.clone(),
            mailbox: self
                .selected
                .as_ref()
                .map(|s| s.mb.name.clone())
                .unwrap_or_default(),
            activity: if self.idle.is_some() {
                Activity::Idle
            } else {
                Activity::Active
            },
            secs: self.since.elapsed().as_secs() as u32,
        }
    }
}

fn flags_with_recent(flags: &str, recent: bool) -> String {
    if !recent {
        return flags.to_owned();
    }
    let inner = flags.trim_start_matches('(').trim_end_matches(')');
    let mut s = String::from("(");
    if !inner.is_empty() {
        let _ = write!(s, "{inner} ");
    }
    s.push_str("\\Recent)");
    s
}

#[cfg(test)]
mod tests {
    use super::super::maildir::deliver;
    use super::*;

    fn session(root: &std::path::Path, user: &str) -> Session {
        Session::new(1, user, [0; 16], "", root.to_path_buf())
    }

    fn said(s: &mut Session, input: &str) -> String {
        s.inbuf.extend_from_slice(input.as_bytes());
        s.run();
        String::from_utf8(std::mem::take(&mut s.out)).unwrap()
    }

    #[test]
    fn parked_state_restores_with_the_changes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        deliver(root, "INBOX", b"a").unwrap();
        deliver(root, "INBOX", b"b").unwrap();
        let mut s = session(root, "alice");
        let out = said(&mut s, "a SELECT INBOX\r\nb IDLE\r\n");
        assert!(
            out.contains("* 2 EXISTS") && out.contains("* 2 RECENT"),
            "{out}"
        );
        let state = s.state().unwrap();
        assert_eq!(state.recent_uids, vec![(1, 2)]);
        // While parked: message 1 expunged, one delivered.
        let base = s
            .selected
            .as_ref()
            .unwrap()
            .mb
            .record(1)
            .unwrap()
            .base
            .clone();
        std::fs::remove_file(root.join("cur").join(format!("{base}:2,"))).unwrap();
        deliver(root, "INBOX", b"c").unwrap();
        let mut back = session(root, "alice");
        back.restore(&state).unwrap();
        let out = String::from_utf8(std::mem::take(&mut back.out)).unwrap();
        assert_eq!(out, "* 1 EXPUNGE\r\n* 2 EXISTS\r\n* 2 RECENT\r\n");
        // Nothing more happened: a second restore of a fresh state is silent.
        let again = back.state().unwrap();
        let mut third = session(root, "alice");
        third.restore(&again).unwrap();
        assert!(third.out.is_empty());
    }

    #[test]
    fn x_state_moves_a_session_and_refuses_strangers() {
        let t = tempfile::tempdir().unwrap();
        let mut s = session(t.path(), "alice");
        assert!(said(&mut s, "a X-STATE\r\n").contains("a NO"));
        said(&mut s, "b SELECT INBOX\r\n");
        let out = said(&mut s, "c X-STATE\r\n");
        let text = out
            .lines()
            .find_map(|l| l.strip_prefix("* STATE "))
            .unwrap()
            .to_owned();
        assert!(out.contains("c OK State exported."));
        let mut other = session(t.path(), "alice");
        let out = said(&mut other, &format!("d X-STATE {text}\r\n"));
        assert_eq!(out, "d OK State imported.\r\n");
        let mut bob = session(t.path(), "bob");
        assert!(said(&mut bob, &format!("e X-STATE {text}\r\n")).starts_with("e NO"));
        let mut damaged = text.clone();
        damaged.replace_range(4..8, "AAAA");
        assert!(said(&mut other, &format!("f X-STATE {damaged}\r\n")).starts_with("f NO"));
        assert!(said(&mut other, "g X-STATE !!\r\n").starts_with("g NO"));
    }

    /// Found by `imap-idle-lab fuzz --target imap-command`: a state naming
    /// every UID as recent made the restore build a four-billion-entry set.
    /// It is refused at once now: no UID past UIDNEXT can be recent.
    #[test]
    fn a_state_with_huge_recent_ranges_is_refused_at_once() {
        let t = tempfile::tempdir().unwrap();
        deliver(t.path(), "INBOX", b"a").unwrap();
        let mut s = session(t.path(), "alice");
        said(&mut s, "a SELECT INBOX\r\n");
        let mut state = s.state().unwrap();
        state.recent_uids = vec![(1, 1), (3, u32::MAX)];
        let started = Instant::now();
        let mut back = session(t.path(), "alice");
        let out = said(&mut back, &format!("b X-STATE {}\r\n", state.to_text()));
        assert!(out.starts_with("b NO Cannot restore"), "{out}");
        assert!(started.elapsed().as_secs() < 1);
    }

    #[test]
    fn idle_done_and_bad_done() {
        let t = tempfile::tempdir().unwrap();
        let mut s = session(t.path(), "alice");
        said(&mut s, "a SELECT INBOX\r\n");
        assert_eq!(said(&mut s, "b IDLE\r\n"), "+ idling\r\n");
        assert_eq!(said(&mut s, "DONE\r\n"), "b OK Idle completed.\r\n");
        said(&mut s, "c IDLE\r\n");
        assert_eq!(said(&mut s, "d NOOP\r\n"), "c BAD Expected DONE.\r\n");
        let out = said(&mut s, "e FETCH 1:* (FLAGS UID)\r\nf LOGOUT\r\n");
        assert!(out.contains("e OK") && out.contains("f OK") && s.closing);
    }
}
