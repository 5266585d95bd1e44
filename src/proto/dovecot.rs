//! Dovecot's hibernation protocols (2.3 and 2.4), as pure functions: the line an imap
//! process sends to `imap-hibernate`, and the line that returns a client
//! through `imap-master`. Lines are TAB-separated fields, each escaped
//! with byte 0x01 (Dovecot's strescape), ending in LF.

use std::fmt::Write as _;

use super::base64;

pub const HIBERNATE_SERVICE: &str = "imap-hibernate";
pub const MASTER_SERVICE: &str = "imap-master";

/// Longest line we accept from an imap process (the state and userdb
/// fields dominate; Dovecot's own limit is higher, but 64 KiB is plenty).
pub const MAX_LINE: usize = 64 * 1024;

/// Escape one field: 0x00 0x01 TAB CR LF become 0x01 + `0 1 t r n`.
pub fn escape(field: &[u8], out: &mut Vec<u8>) {
    for &b in field {
        let esc = match b {
            0 => b'0',
            1 => b'1',
            b'\t' => b't',
            b'\r' => b'r',
            b'\n' => b'n',
            _ => {
                out.push(b);
                continue;
            }
        };
        out.extend_from_slice(&[1, esc]);
    }
}

/// Undo [`escape`]. An unknown escape keeps the byte after 0x01, and a
/// trailing 0x01 is dropped, as Dovecot does.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut it = field.iter();
    while let Some(&b) = it.next() {
        if b != 1 {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'0') => out.push(0),
            Some(b'1') => out.push(1),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(&other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Split a line (without its LF) on raw TABs and unescape each field.
pub fn split(line: &[u8]) -> Vec<Vec<u8>> {
    line.split(|&b| b == b'\t').map(unescape).collect()
}

pub fn version_line(service: &str) -> Vec<u8> {
    format!("VERSION\t{service}\t1\t0\n").into_bytes()
}

/// Check a peer's `VERSION` line: right service, major version 1.
pub fn check_version(line: &[u8], service: &str) -> Result<(), String> {
    let f = split(line);
    let ok = f.len() == 4
        && f[0] == b"VERSION"
        && f[1] == service.as_bytes()
        && f[2] == b"1"
        && f[3].iter().all(u8::is_ascii_digit)
        && !f[3].is_empty();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected VERSION {service} 1.x, got {:?}",
            String::from_utf8_lossy(line)
        ))
    }
}

/// Keys of the hand-off that are for the hibernation process alone: what
/// it reads to serve the client (Dovecot's own imap-hibernate never sends
/// them back either), and the keys of the return line that we write
/// ourselves. Every other field, known or not, goes back to imap-master as
/// it came and in its place: 2.4's `multiplex_ostream`, logout statistics
/// and `auth_token`/`session_pid` (2.4.3) travel back without our knowing
/// them, and so will keys a later Dovecot adds.
const HAND_OFF_ONLY: [&str; 13] = [
    "tag",
    "idle-cmd",
    "notify_fd",
    "idle_notify_interval",
    "mailbox",
    "stats",
    "uid",
    "gid",
    "hibernation_started",
    "client_input",
    "client_output",
    "bad-done",
    "idle-continue",
];

/// What an imap process asks of imap-hibernate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hibernate {
    pub user: String,
    pub tag: String,
    /// The client is inside IDLE.
    pub idle_cmd: bool,
    /// A second descriptor (an inotify instance) follows on an empty line.
    pub notify_fd: bool,
    pub idle_notify_interval: u32,
    /// The opaque session state, decoded from base64.
    pub state: Vec<u8>,
    pub mailbox: String,
    /// 2.4: the client reads Dovecot's multiplexed stream format, so what
    /// we write to it is framed (see [`super::multiplex`]).
    pub multiplex: bool,
    /// The client's address (`rip`), for Dovecot's anvil.
    pub rip: Option<std::net::IpAddr>,
    /// The fields to send back, each TAB-prefixed and still escaped as
    /// they came, in their order: ready to append to the return line.
    pub passthrough: Vec<u8>,
}

fn text(field: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(field.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("Invalid {key} value: {value}"))
}

impl Hibernate {
    /// What a parked client keeps to build its return line: the fields
    /// that go back (the state among them), already escaped and encoded.
    pub fn return_tail(&self) -> Vec<u8> {
        self.passthrough.clone()
    }

    /// Parse the command line (without its LF). Unknown keys are ignored.
    pub fn parse(line: &[u8]) -> Result<Hibernate, String> {
        // Fields go back still escaped as they came: a raw LF would end the
        // return line early (a line read up to its LF never has one).
        if line.contains(&b'\n') {
            return Err("LF inside the line".into());
        }
        let mut it = line.split(|&b| b == b'\t');
        let user = match it.next().map(unescape) {
            Some(u) if !u.is_empty() => text(&u, "username")?,
            _ => return Err("Missing username in input".into()),
        };
        if it.next().is_none() {
            return Err("Missing mail_log_prefix in input".into());
        }
        let mut h = Hibernate {
            user,
            tag: String::new(),
            idle_cmd: false,
            notify_fd: false,
            idle_notify_interval: 0,
            state: Vec::new(),
            mailbox: String::new(),
            multiplex: false,
            rip: None,
            passthrough: Vec::new(),
        };
        let mut have_tag = false;
        for raw in it {
            let field = text(&unescape(raw), "a field")?;
            let (key, value) = field.split_once('=').unwrap_or((field.as_str(), ""));
            match key {
                "tag" => {
                    if value.is_empty() || value.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                        return Err(format!("Invalid tag value: {value}"));
                    }
                    h.tag = value.to_owned();
                    have_tag = true;
                }
                "idle-cmd" => h.idle_cmd = true,
                "notify_fd" => h.notify_fd = true,
                "multiplex_ostream" => h.multiplex = true,
                "idle_notify_interval" => h.idle_notify_interval = number(key, value)?,
                "mailbox" => h.mailbox = value.to_owned(),
                "state" => {
                    h.state = base64::decode(value)
                        .map_err(|_| format!("Invalid state base64 value: {value}"))?
                }
                "lport" | "rport" => {
                    number::<u16>(key, value)?;
                }
                "session_created" | "peer_dev_major" | "peer_dev_minor" | "peer_ino" | "uid"
                | "gid" => {
                    number::<u64>(key, value)?;
                }
                "lip" | "rip" => {
                    let ip = value
                        .parse::<std::net::IpAddr>()
                        .map_err(|_| format!("Invalid {key} value: {value}"))?;
                    if key == "rip" {
                        h.rip = Some(ip);
                    }
                }
                _ => {}
            }
            if !HAND_OFF_ONLY.contains(&key) {
                h.passthrough.push(b'\t');
                h.passthrough.extend_from_slice(raw);
            }
        }
        if !have_tag {
            return Err("Missing tag".into());
        }
        Ok(h)
    }
}

/// How a hibernated client comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// IDLE ended with DONE (the imap process answers `OK`).
    Done,
    /// IDLE ended with something else (`client_input` holds it).
    BadDone,
    /// Woken by a change while IDLE still runs.
    IdleContinue,
    /// Not in IDLE when hibernated.
    NotIdle,
}

/// The line that returns a client through imap-master (LF included).
/// `started` is when hibernation began, as seconds and microseconds.
/// `tail` is [`Hibernate::return_tail`]: the fields that go back as they came.
pub fn master_line(
    user: &str,
    started: (u64, u32),
    tag: &str,
    tail: &[u8],
    client_input: &[u8],
    ending: Ending,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + tail.len() + client_input.len() * 4 / 3);
    escape(user.as_bytes(), &mut out);
    let mut s = String::new();
    let _ = write!(s, "\thibernation_started={}.{:06}", started.0, started.1);
    let _ = write!(s, "\ttag={tag}");
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(tail);
    if !client_input.is_empty() {
        out.extend_from_slice(b"\tclient_input=");
        out.extend_from_slice(base64::encode(client_input).as_bytes());
    }
    match ending {
        Ending::BadDone => out.extend_from_slice(b"\tbad-done"),
        Ending::IdleContinue => out.extend_from_slice(b"\tidle-continue"),
        Ending::Done | Ending::NotIdle => {}
    }
    out.push(b'\n');
    out
}

/// An answer line: `+...` is success, `-reason` failure.
pub fn parse_answer(line: &[u8]) -> Result<(), String> {
    match line.split_first() {
        Some((b'+', _)) => Ok(()),
        Some((b'-', reason)) => Err(String::from_utf8_lossy(reason).into_owned()),
        _ => Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(line)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line from capture-2.3.19.1.txt (Dovecot 2.3.19.1).
    const CAPTURED: &[u8] = b"alice\t%s(%u)<%{pid}><%{session}>: \tidle_notify_interval=120\tpeer_dev_major=0\tpeer_dev_minor=9\tpeer_ino=201285\tsession=0OFp0tpg8sF/AAAB\tsession_created=1795342809\tlip=127.0.0.1\tlport=10143\trip=127.0.0.1\trport=49650\tuserdb_fields=uid=999\x01tgid=995\x01thome=/var/vmail/alice\x01tauth_mech=PLAIN\x01tauth_token=e99beefcda0c1594c010587abd71f59e974bfdc2\tuid=999\tgid=995\tmailbox=INBOX\ttag=c\tstats=in=24 out=744 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0\tidle-cmd\tnotify_fd\tstate=YmFzZQpCSU5CT1gAWvCbCKbAAmvdFgAAg+zDdQCmgYvYBgIBAgAA+fDizwkA";

    /// What Dovecot's own imap-hibernate sent back for it (same capture).
    const CAPTURED_RETURN: &[u8] = b"alice\thibernation_started=1795342812.633034\tsession=0OFp0tpg8sF/AAAB\tsession_created=1795342809\ttag=c\tlip=127.0.0.1\tlport=10143\trip=127.0.0.1\trport=49650\tuserdb_fields=uid=999\x01tgid=995\x01thome=/var/vmail/alice\x01tauth_mech=PLAIN\x01tauth_token=e99beefcda0c1594c010587abd71f59e974bfdc2\tpeer_dev_major=0\tpeer_dev_minor=9\tpeer_ino=201285\tstate=YmFzZQpCSU5CT1gAWvCbCKbAAmvdFgAAg+zDdQCmgYvYBgIBAgAA+fDizwkA\tidle-continue\n";

    fn fields(line: &[u8]) -> Vec<Vec<u8>> {
        let mut f = split(line.strip_suffix(b"\n").unwrap_or(line));
        f[1..].sort();
        f
    }

    #[test]
    fn parses_the_captured_command() {
        let h = Hibernate::parse(CAPTURED).unwrap();
        assert_eq!(h.user, "alice");
        assert_eq!(h.tag, "c");
        assert!(h.idle_cmd && h.notify_fd);
        assert_eq!(h.idle_notify_interval, 120);
        assert_eq!(h.mailbox, "INBOX");
        assert_eq!(h.rip, Some("127.0.0.1".parse().unwrap()));
        assert!(h.state.starts_with(b"base\nBINBOX\0"));
    }

    #[test]
    fn rebuilds_the_captured_return_field_for_field() {
        let h = Hibernate::parse(CAPTURED).unwrap();
        let line = master_line(
            &h.user,
            (1795342812, 633034),
            &h.tag,
            &h.return_tail(),
            b"",
            Ending::IdleContinue,
        );
        // Same fields; order is free in Dovecot's parser.
        assert_eq!(fields(&line), fields(CAPTURED_RETURN));
    }

    #[test]
    fn escaping_round_trips_and_matches_dovecot() {
        let raw = b"a\tb\x01c\rd\ne\0f";
        let mut esc = Vec::new();
        escape(raw, &mut esc);
        assert_eq!(esc, b"a\x01tb\x011c\x01rd\x01ne\x010f");
        assert_eq!(unescape(&esc), raw);
        assert_eq!(split(b"x\ty\x01tz"), vec![b"x".to_vec(), b"y\tz".to_vec()]);
    }

    #[test]
    fn versions() {
        assert_eq!(
            version_line(HIBERNATE_SERVICE),
            b"VERSION\timap-hibernate\t1\t0\n"
        );
        assert!(check_version(b"VERSION\timap-hibernate\t1\t0", HIBERNATE_SERVICE).is_ok());
        assert!(check_version(b"VERSION\timap-hibernate\t1\t3", HIBERNATE_SERVICE).is_ok());
        assert!(check_version(b"VERSION\timap-hibernate\t2\t0", HIBERNATE_SERVICE).is_err());
        assert!(check_version(b"VERSION\timap-master\t1\t0", HIBERNATE_SERVICE).is_err());
        assert!(check_version(b"HELLO", HIBERNATE_SERVICE).is_err());
    }

    #[test]
    fn malformed_commands_are_errors_with_dovecots_wording() {
        assert_eq!(
            Hibernate::parse(b"").unwrap_err(),
            "Missing username in input"
        );
        assert_eq!(
            Hibernate::parse(b"alice").unwrap_err(),
            "Missing mail_log_prefix in input"
        );
        assert_eq!(
            Hibernate::parse(b"alice\tp\tidle-cmd").unwrap_err(),
            "Missing tag"
        );
        assert!(Hibernate::parse(b"alice\tp\ttag=a\tlport=x").is_err());
        assert!(Hibernate::parse(b"alice\tp\ttag=a\trip=nope").is_err());
        assert!(Hibernate::parse(b"alice\tp\ttag=a\tstate=***").is_err());
        assert!(Hibernate::parse(b"alice\tp\ttag=a\tx=1\n2").is_err());
        // Unknown keys and bare words are not errors: they go back as
        // they came (still escaped), in their order.
        let h = Hibernate::parse(b"alice\tp\ttag=a\tfuture_key=1\x01t2\tfuture-flag").unwrap();
        assert_eq!(h.tag, "a");
        assert_eq!(h.passthrough, b"\tfuture_key=1\x01t2\tfuture-flag");
    }

    #[test]
    fn return_line_flags_and_input() {
        let line = master_line("bob", (1, 2), "t", b"", b"DONE", Ending::BadDone);
        assert_eq!(
            line,
            b"bob\thibernation_started=1.000002\ttag=t\tclient_input=RE9ORQ==\tbad-done\n"
        );
        assert!(parse_answer(b"+").is_ok());
        assert_eq!(
            parse_answer(b"-no imap process").unwrap_err(),
            "no imap process"
        );
        assert!(parse_answer(b"").is_err());
    }
}
