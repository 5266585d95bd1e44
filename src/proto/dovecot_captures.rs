//! The Dovecot hand-off parser and return line checked against real bytes
//! of Dovecot 2.4.1, 2.4.4 and 2.4.5 (tests/captures/, read from a live Dovecot
//! with its own imap-hibernate): what imap-idle sends back to imap-master
//! must be what Dovecot's own hibernation process sent, field for field.

use super::dovecot::{master_line, split, Ending, Hibernate};

/// One capture file: its `cmd:` lines, `return:` lines, and the bytes the
/// client read after the first return.
struct Capture {
    cmds: Vec<Vec<u8>>,
    returns: Vec<Vec<u8>>,
    client: Vec<u8>,
}

/// Python's repr() of a bytes object, undone (the escapes it uses).
fn unrepr(s: &str) -> Vec<u8> {
    let body = &s[2..s.len() - 1];
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match b[i + 1] {
            b't' => (b'\t', 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b'x' => (u8::from_str_radix(&body[i + 2..i + 4], 16).unwrap(), 4),
            other => (other, 2),
        };
        out.push(byte);
        i += used;
    }
    out
}

fn capture(text: &str) -> Capture {
    let mut c = Capture {
        cmds: Vec::new(),
        returns: Vec::new(),
        client: Vec::new(),
    };
    for line in text.lines() {
        let Some((what, bytes)) = line.split_once(": b") else {
            continue;
        };
        let bytes = unrepr(&format!("b{bytes}"));
        match what {
            "cmd" => c.cmds.push(bytes),
            "return" => c.returns.push(bytes),
            "client after the first return" => c.client = bytes,
            _ => {}
        }
    }
    c
}

const CAPTURES: [(&str, &str); 3] = [
    (
        "2.4.1",
        include_str!("../../tests/captures/dovecot-2.4.1.txt"),
    ),
    (
        "2.4.4",
        include_str!("../../tests/captures/dovecot-2.4.4.txt"),
    ),
    (
        "2.4.5",
        include_str!("../../tests/captures/dovecot-2.4.5.txt"),
    ),
];

/// Dovecot's own hibernation adds the bytes it read and wrote while it
/// held the client to these two; we send back the imap process's counts.
const COUNTED_BY_THE_HOLDER: [&str; 2] = ["input_bytes_extra", "output_bytes_extra"];

fn key(field: &[u8]) -> &[u8] {
    field.split(|&b| b == b'=').next().unwrap_or(field)
}

/// Fields after the user, sorted (Dovecot's parser takes them in any
/// order), without the two byte counts.
fn comparable(line: &[u8]) -> Vec<Vec<u8>> {
    let mut f = split(line.strip_suffix(b"\n").unwrap_or(line));
    f.retain(|x| !COUNTED_BY_THE_HOLDER.iter().any(|k| key(x) == k.as_bytes()));
    f[1..].sort();
    f
}

fn started(ret: &[u8]) -> (u64, u32) {
    let f = split(ret.strip_suffix(b"\n").unwrap());
    let v = f
        .iter()
        .find_map(|x| x.strip_prefix(b"hibernation_started="))
        .unwrap();
    let (s, us) = std::str::from_utf8(v).unwrap().split_once('.').unwrap();
    (s.parse().unwrap(), us.parse().unwrap())
}

#[test]
fn our_returns_carry_what_dovecots_own_carried() {
    for (version, text) in CAPTURES {
        let c = capture(text);
        assert_eq!(c.cmds.len(), 2, "{version}");
        assert_eq!(c.cmds.len(), c.returns.len(), "{version}");
        // First woken by new mail inside IDLE, then by the client's DONE.
        let endings = [Ending::IdleContinue, Ending::Done];
        for ((cmd, ret), ending) in c.cmds.iter().zip(&c.returns).zip(endings) {
            let h = Hibernate::parse(cmd.strip_suffix(b"\n").unwrap()).unwrap();
            assert!(h.multiplex, "{version}: the client asked for multiplexing");
            let ours = master_line(&h.user, started(ret), &h.tag, &h.return_tail(), b"", ending);
            assert_eq!(comparable(&ours), comparable(ret), "{version}");
            // The two counts are there, as the imap process gave them.
            for k in COUNTED_BY_THE_HOLDER {
                let find = |line: &[u8]| {
                    let line = line.strip_suffix(b"\n").unwrap_or(line);
                    split(line).into_iter().find(|f| key(f) == k.as_bytes())
                };
                let (given, sent) = (find(cmd), find(&ours));
                assert!(given.is_some() && given == sent, "{version}: {k}");
            }
        }
    }
}

#[test]
fn tokens_and_statistics_go_back_in_the_order_they_came() {
    // 2.4.4 and 2.4.5: the releases with 2.4.3's DOVECOT-TOKEN.
    for (version, text) in &CAPTURES[1..] {
        tokens_and_statistics_in_order(version, text);
    }
}

fn tokens_and_statistics_in_order(version: &str, text: &str) {
    let c = capture(text);
    let h = Hibernate::parse(c.cmds[0].strip_suffix(b"\n").unwrap()).unwrap();
    let keys: Vec<Vec<u8>> = split(&h.return_tail())
        .iter()
        .map(|f| key(f).to_vec())
        .collect();
    let pos = |k: &str| {
        keys.iter()
            .position(|x| x == k.as_bytes())
            .unwrap_or_else(|| panic!("{version}: no {k}"))
    };
    // 2.4.3's DOVECOT-TOKEN unhibernation: imap-master refuses a return
    // without them.
    assert!(pos("multiplex_ostream") < pos("auth_token"));
    assert!(pos("auth_token") < pos("session_pid"));
    assert!(pos("session_pid") < pos("state"));
    assert!(pos("state") < pos("fetch_hdr_count"));
    assert!(pos("fetch_hdr_count") < pos("output_bytes_extra"));
    // What only the hibernation process reads does not go back.
    for k in [
        "tag",
        "idle-cmd",
        "notify_fd",
        "stats",
        "mailbox",
        "uid",
        "gid",
    ] {
        assert!(
            !keys.iter().any(|x| x == k.as_bytes()),
            "{version}: {k} went back"
        );
    }
}

#[test]
fn the_restored_imap_process_writes_in_the_framing_we_use() {
    // After the return Dovecot's imap process starts on channel 0 with
    // the same switch our first write makes.
    for (version, text) in CAPTURES {
        let client = capture(text).client;
        let ours = super::multiplex::frame(b"* 1 EXISTS\r\n", true);
        assert!(client.starts_with(&ours), "{version}: {client:?}");
    }
}
