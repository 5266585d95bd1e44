//! Dovecot 2.4's multiplexed client output through imap-idle, live: a
//! client that asks for it (`ID ("x-multiplex" "0")`, as a Dovecot proxy
//! does) is parked, gets keepalives and the in-place IDLE restart in the
//! ostream-multiplex framing, and comes back to an imap process that still
//! multiplexes (so `multiplex_ostream` went back to imap-master). Dovecot
//! 2.3 has no such output: there the test says it is skipped. Also the
//! other 2.4 novelty under the master: a hand-off it accepted for us.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use imap_idle::lab::rig::dovecot as rig;
use imap_idle::proto::multiplex::main_channel;
use util::dovecot::{available, Dovecot, Hibernation, PASSWORD};

/// A client reading the raw stream; `text()` is what channel 0 carries.
struct Multiplexed {
    s: TcpStream,
    /// Everything after `* MULTIPLEX 0`, as it came.
    raw: Vec<u8>,
}

impl Multiplexed {
    fn connect(port: u16) -> Multiplexed {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to IMAP");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut c = Multiplexed { s, raw: Vec::new() };
        c.send("a ID (\"x-multiplex\" \"0\")\r\n");
        let marker = b"* MULTIPLEX 0\r\n";
        c.read_until(|raw| raw.windows(marker.len()).any(|w| w == marker));
        let at = c
            .raw
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap();
        c.raw.drain(..at + marker.len());
        c.read_until(|raw| text(raw).contains("a OK"));
        c
    }

    fn send(&mut self, s: &str) {
        self.s.write_all(s.as_bytes()).expect("send");
    }

    fn read_until(&mut self, done: impl Fn(&[u8]) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !done(&self.raw) {
            assert!(Instant::now() < end, "timed out; got {:?}", text(&self.raw));
            match self.s.read(&mut buf) {
                Ok(0) => panic!("closed; got {:?}", text(&self.raw)),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Send a command (no tag: a bare line) and read until channel 0 holds `until`;
    /// returns the raw bytes that came since it was sent.
    fn command(&mut self, tag: &str, cmd: &str, until: &str) -> Vec<u8> {
        let from = self.raw.len();
        let line = if tag.is_empty() {
            format!("{cmd}\r\n")
        } else {
            format!("{tag} {cmd}\r\n")
        };
        self.send(&line);
        self.read_until(|raw| text(&raw[from..]).contains(until));
        self.raw[from..].to_vec()
    }
}

fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(&main_channel(raw)).into_owned()
}

const SWITCH_TO_0: &[u8] = b"\x03\xFE\x00\x00";

#[test]
fn a_multiplexed_client_is_parked_framed_and_returned_still_multiplexed() {
    if !available("dovecot_multiplex") {
        return;
    }
    let dc = Dovecot::start(&["alice".to_string()], Hibernation::ImapIdle);
    if !dc.version().is_2_4_or_later() {
        eprintln!(
            "SKIPPED dovecot_multiplex: Dovecot {} has no multiplexed output",
            dc.version()
        );
        return;
    }
    let mut c = Multiplexed::connect(dc.port);
    c.command("b", &format!("LOGIN alice {PASSWORD}"), "b OK");
    c.command("s", "SELECT INBOX", "s OK");
    c.command("c", "IDLE", "+ idling");
    dc.wait_for(
        || dc.hibernated() == 1,
        "the client to be parked by imap-idle",
        Duration::from_secs(10),
    );
    // Our first bytes switch to channel 0; later ones go as they are.
    let from = c.raw.len();
    c.read_until(|raw| text(&raw[from..]).contains("Still here"));
    assert_eq!(
        c.raw[from..],
        [SWITCH_TO_0, b"* OK Still here\r\n"].concat(),
        "the keepalive as Dovecot's own imap-hibernate frames it"
    );
    let restarted = c.command("DONE\r\nd", "IDLE", "+ idling");
    assert_eq!(restarted, b"c OK Idle completed.\r\n+ idling\r\n");
    let s = dc.stats();
    assert_eq!((s.parked, s.idle_restarted, s.returned), (1, 1, 0));

    // New mail: the restored imap process multiplexes too (it starts
    // with its own switch to channel 0), so multiplex_ostream came back.
    let from = c.raw.len();
    dc.deliver("alice", "1.msg");
    c.read_until(|raw| text(&raw[from..]).contains("* 1 EXISTS"));
    assert!(
        c.raw[from..].starts_with(SWITCH_TO_0),
        "{:?}",
        &c.raw[from..]
    );
    assert_eq!(dc.stats().returned, 1);
    let done = c.command("", "DONE", "d OK");
    assert!(
        text(&done).contains("d OK Idle completed"),
        "{:?}",
        text(&done)
    );
}

/// From 2.4.2 the master accepts the first hand-off itself for a service
/// with client_limit = 1 and passes it on fd 8: imap-idle refuses that one
/// (the imap process keeps its client, which still gets its mail) and
/// takes the next from its listener. Before 2.4.2 both are parked.
#[test]
fn a_hand_off_the_master_accepted_for_us_is_refused_cleanly() {
    if !available("dovecot_multiplex") {
        return;
    }
    let limits = util::dovecot::ServiceLimits {
        client_limit: Some(1),
        process_limit: Some(1),
        ..util::dovecot::ServiceLimits::default()
    };
    let dc = Dovecot::start_with(&["alice".to_string()], Hibernation::ImapIdle, limits);
    let v = dc.version();
    let pre_accepts = (v.major, v.minor, v.patch) >= (2, 4, 2);
    let mut first = util::imap::Imap::login(dc.port, "alice", PASSWORD);
    first.idle("c");
    let parked = if pre_accepts { 0 } else { 1 };
    dc.wait_for(
        // The rig's own stats(): an error (not a panic) until it listens.
        || rig::Dovecot::stats(&dc).is_ok_and(|s| s.parked == parked),
        "imap-idle to start and take what it should",
        Duration::from_secs(10),
    );
    if pre_accepts {
        dc.wait_for(
            || dc.log().contains("client_limit = 1); it is refused"),
            "the refusal in the log",
            Duration::from_secs(5),
        );
    }
    dc.deliver("alice", "1.msg");
    let (line, _) = first.expect("EXISTS");
    assert_eq!(line, "* 1 EXISTS\r\n", "Dovecot {v}");
}
