//! The `imap-command` target: the reference server's IMAP syntax
//! (`take_line`, `words`, `list_items`, `in_set`) and a whole mail
//! session fed the bytes as its input buffer, as the mail process does
//! minus the sockets. The session runs on a scratch Maildir with two
//! messages, so SELECT, FETCH, STATUS and X-STATE reach real code.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::engine::Class;
use super::gen;
use super::rng::Rng;
use super::targets::class;
use crate::lab::serve::imap::{in_set, list_items, take_line, words};
use crate::lab::serve::maildir::{deliver, Mailbox};
use crate::lab::serve::session::Session;

const USER: &str = "alice";

pub const DICT: &[&[u8]] = &[
    b"\r\n",
    b" ",
    b"\"",
    b"\\",
    b"(",
    b")",
    b"{5}",
    b"*",
    b":",
    b",",
    b"1:*",
    b"SELECT",
    b"EXAMINE",
    b"INBOX",
    b"FETCH",
    b"UID",
    b"STATUS",
    b"IDLE",
    b"DONE",
    b"X-STATE",
    b"NOOP",
    b"LOGOUT",
    b"(FLAGS UID MODSEQ)",
    b"(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ RECENT)",
];

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// The scratch Maildir, made on first use: one per process, so runs
/// side by side do not share it.
fn root() -> &'static Path {
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("imap-idle-fuzz-{}", std::process::id()));
        // On failure the sessions answer NO, which is still worth fuzzing.
        let _ = deliver(&dir, "INBOX", b"Subject: one\r\n\r\n1\r\n");
        let _ = deliver(&dir, "INBOX", b"Subject: two\r\n\r\n2\r\n");
        for sub in ["cur", "new", "tmp"] {
            let _ = std::fs::create_dir_all(dir.join(".Archive").join(sub));
        }
        dir
    })
}

/// Remove the scratch Maildir, if this process made one.
pub fn cleanup() {
    if let Some(dir) = ROOT.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn imap_command(data: &[u8]) -> Class {
    let mut buf = data.to_vec();
    let mut lines = 0;
    let mut bad = false;
    while let Some(line) = take_line(&mut buf) {
        assert!(!line.contains(&b'\n'), "take_line left a LF in the line");
        lines += 1;
        match words(&String::from_utf8_lossy(&line)) {
            Ok(ws) => {
                for w in &ws {
                    let _ = list_items(w);
                    let _ = in_set(w, 1, 3);
                    let _ = in_set(w, u32::MAX, u32::MAX);
                }
            }
            Err(_) => bad = true,
        }
    }
    assert!(!buf.contains(&b'\n'), "take_line left a whole line behind");
    let mut s = Session::new(1, USER, [0; 16], "fuzz", root().to_path_buf());
    s.inbuf = data.to_vec();
    s.run();
    // The class: how many answers of each status, capped. Never the
    // text itself: it echoes the client's tags and names, which would
    // make nearly every input new.
    let out = String::from_utf8_lossy(&s.out);
    let count = |status: &str| out.matches(status).count().min(3);
    let shape = [
        lines.min(3),
        bad as usize,
        s.closing as usize,
        count(" OK "),
        count(" NO "),
        count(" BAD "),
        count("* BYE "),
        count("+ idling"),
    ];
    // As letters: `class` drops digits.
    let shape: String = shape.iter().map(|&n| (b'a' + n as u8) as char).collect();
    class("session", &shape)
}

const COMMANDS: &[&str] = &[
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "LOGIN alice secret",
    "SELECT INBOX",
    "SELECT inbox",
    "EXAMINE \"INBOX\"",
    "SELECT Archive",
    "SELECT ../etc",
    "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ RECENT)",
    "STATUS Archive (MESSAGES)",
    "FETCH 1:* (FLAGS UID MODSEQ)",
    "FETCH 2,1 FLAGS",
    "UID FETCH 1:* (UID)",
    "UID FETCH *:1 (FLAGS)",
    "FETCH 4294967295 (UID)",
    "IDLE",
    "X-STATE",
    "FETCH 1 (BODY[])",
    "SELECT {5}",
];

/// A few command lines, often after a SELECT, sometimes an X-STATE with a
/// state for the scratch INBOX itself (its GUID and UIDVALIDITY, random
/// everything else) so a restore goes all the way.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.below(4) > 0 {
        out.extend_from_slice(b"s SELECT INBOX\r\n");
    }
    for i in 0..1 + rng.below(3) {
        let line = match rng.below(6) {
            0 => format!("x{i} X-STATE {}", state_text(rng)),
            _ => format!("t{i} {}", rng.pick(COMMANDS)),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(if rng.one_in(4) { b"\n" } else { b"\r\n" });
        if line.ends_with("IDLE") && rng.one_in(2) {
            out.extend_from_slice(b"DONE\r\n");
        }
    }
    out
}

fn state_text(rng: &mut Rng) -> String {
    let mut s = gen::session_state(rng);
    if rng.below(4) > 0 {
        s.user = USER.into();
        s.mailbox = "INBOX".into();
        if let Ok((mb, _)) = Mailbox::open(root(), "INBOX") {
            s.mailbox_guid = mb.guid;
            s.uidvalidity = mb.uidvalidity;
            s.highest_modseq = rng.below(mb.highest_modseq as usize + 2) as u64;
        }
    }
    s.to_text()
}
