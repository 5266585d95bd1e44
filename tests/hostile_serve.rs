//! Hostile clients against the reference login and mail processes: each
//! test first mounts the attack, then checks that it is bounded, that an
//! honest client of the same process is served meanwhile, and that the
//! process holds no more descriptors than before once it is over.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use imap_idle::lab::rig::procfs::{fds, pss_kb, settled_fds};
use imap_idle::lab::serve::maildir;
use imap_idle::proto::state::SessionState;
use util::imap::Imap;
use util::stack::{Options, Stack, PASSWORD};
use util::wait_for;

/// Most a process may grow (PSS) while one client attacks it: the cap is
/// 256 KiB, the rest is room for the allocator. The attacks below make
/// the unbounded code grow by tens of MB (or keep it busy for minutes).
const GROWTH_LIMIT_KB: u64 = 8 * 1024;

fn options() -> Options<'static> {
    Options {
        park_after: 0,
        ..Options::default()
    }
}

/// Write as much of `data` as the peer takes without reading our answers,
/// giving up once nothing more went in for `patience`. Bytes written. In
/// small pieces, as a client typing fast would: a server that reads all
/// it is sent gets to answer each piece.
fn pump(sock: &TcpStream, data: &[u8], patience: Duration) -> usize {
    sock.set_nonblocking(true).expect("nonblocking");
    let mut sent = 0;
    let mut moved = Instant::now();
    while sent < data.len() && moved.elapsed() < patience {
        let end = data.len().min(sent + 16 * 1024);
        match (&*sock).write(&data[sent..end]) {
            Ok(n) => {
                sent += n;
                moved = Instant::now();
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("pumping commands: {e}"),
        }
    }
    sock.set_nonblocking(false).expect("blocking");
    sent
}

/// CPU time `pid` has used, user + system, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat
        .get(stat.rfind(')').map_or(0, |i| i + 2)..)
        .unwrap_or("");
    let f: Vec<&str> = rest.split(' ').collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Watch `pid` until it has done what the attack made it do (it used
/// less than 5 ticks of CPU over the last second), for at most 20 s: the
/// most it grew above `base` kB meanwhile. Panics if it is still busy
/// then: bounded work ends.
fn growth_until_idle(pid: u32, base: u64) -> u64 {
    let start = Instant::now();
    let mut peak = 0;
    let mut ticks = std::collections::VecDeque::from([cpu_ticks(pid)]);
    loop {
        thread::sleep(Duration::from_millis(100));
        peak = peak.max(pss_kb(pid).saturating_sub(base));
        ticks.push_back(cpu_ticks(pid));
        if ticks.len() > 11 {
            ticks.pop_front();
            if ticks[10] - ticks[0] < 5 {
                return peak;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pid {pid} still busy after 20 s, grown {peak} kB"
        );
    }
}

/// Send the rest of a pipelined attack and `z LOGOUT` (from a thread: the
/// server reads it only as we read its answers), then read every answer;
/// how many tagged lines began with `done`.
fn drain(mut c: Imap, rest: Vec<u8>, done: &str) -> usize {
    let mut w = c.socket().try_clone().expect("clone");
    let writer = thread::spawn(move || {
        w.write_all(&rest).expect("rest of the commands");
        w.write_all(b"z LOGOUT\r\n").expect("logout");
    });
    let mut n = 0;
    loop {
        let l = c.line();
        if l.starts_with(done) {
            n += 1;
        } else if l.starts_with("z ") {
            assert_eq!(l, "z OK Logout completed.\r\n");
            break;
        }
    }
    writer.join().expect("writer");
    n
}

/// Whether one line of `log` has all of `parts`.
fn has_line(log: &str, parts: &[&str]) -> bool {
    log.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// Wait for `pid` to hold `n` descriptors again (closing is asynchronous
/// from here).
fn fds_back_to(pid: u32, n: usize) {
    wait_for(
        || fds(pid) == n,
        "the descriptor count to be back to baseline",
    );
}

/// A client that logs in, SELECTs and gets answers, in time.
fn honest_client(s: &Stack, user: &str) {
    let t = Instant::now();
    let mut c = Imap::login(s.port, user, PASSWORD);
    c.ok("c", "FETCH 1:* (UID FLAGS)");
    c.ok("d", "NOOP");
    c.ok("e", "LOGOUT");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn x_state_with_a_huge_recent_range_is_refused_and_memory_stays_flat() {
    let s = Stack::start(options());
    let mail = s.mails[0].id();
    for body in [&b"a"[..], b"b", b"c"] {
        maildir::deliver(&s.maildir("alice"), "INBOX", body).unwrap();
    }
    let fds_before = settled_fds(mail);
    let mut a = Imap::login(s.port, "alice", PASSWORD);
    let out = a.ok("c", "X-STATE");
    let text = out[0].strip_prefix("* STATE ").unwrap().trim();
    let honest = SessionState::from_text(text).unwrap();
    assert_eq!(honest.recent_uids, vec![(1, 3)]);

    // The attack: its own state, with every UID there could be \Recent.
    let mut forged = honest.clone();
    forged.recent_uids = vec![(1, u32::MAX)];
    let base = pss_kb(mail);
    a.send(&format!("d X-STATE {}\r\n", forged.to_text()));
    let reader = thread::spawn(move || {
        let l = a.line();
        (a, l)
    });
    let t = Instant::now();
    while !reader.is_finished() {
        let grown = pss_kb(mail).saturating_sub(base);
        assert!(grown < GROWTH_LIMIT_KB, "the mail process grew {grown} kB");
        assert!(t.elapsed() < Duration::from_secs(10), "no answer");
        thread::sleep(Duration::from_millis(20));
    }
    let (mut a, answer) = reader.join().unwrap();
    assert_eq!(
        answer,
        "d NO Cannot restore: its \\Recent UIDs go up to 4294967295, \
         past this mailbox's UIDNEXT 4.\r\n"
    );
    let log = s.log("mail-0.log");
    assert!(
        has_line(&log, &["user=alice", "X-STATE refused: Cannot restore"]),
        "{log}"
    );

    // Refused, not lied to and not thrown out: the honest state still
    // imports, and the session goes on.
    let out = a.ok("e", &format!("X-STATE {text}"));
    assert_eq!(out, ["e OK State imported.\r\n"]);
    let f = a.ok("f", "FETCH 1:* (FLAGS)");
    assert_eq!(f.len(), 4, "{f:?}");
    honest_client(&s, "bob");
    a.ok("g", "LOGOUT");
    fds_back_to(mail, fds_before);
}

#[test]
fn a_client_pipelining_without_reading_is_flow_controlled_by_the_mail_process() {
    let s = Stack::start(options());
    let mail = s.mails[0].id();
    let root = s.maildir("alice");
    for _ in 0..200 {
        maildir::deliver(&root, "INBOX", b"x").unwrap();
    }
    let fds_before = settled_fds(mail);
    let a = Imap::login(s.port, "alice", PASSWORD);
    let base = pss_kb(mail);

    // The attack: 6,000 FETCHes of 200 messages (about 56 MB of answers),
    // none of them read.
    let n = 6000;
    let attack = b"x FETCH 1:* (FLAGS UID MODSEQ)\r\n".repeat(n);
    let sent = pump(a.socket(), &attack, Duration::from_secs(2));
    let grown = growth_until_idle(mail, base);
    eprintln!("{sent} bytes of commands taken; the mail process grew {grown} kB");
    assert!(grown < GROWTH_LIMIT_KB, "the mail process grew {grown} kB");
    let log = s.log("mail-0.log");
    assert!(
        has_line(
            &log,
            &["user=alice", "bytes of answers unread; its input waits"]
        ),
        "{log}"
    );

    // Meanwhile an honest client of the same process is served.
    honest_client(&s, "bob");

    // Slow, not gone: once it reads, it gets every answer.
    let answered = drain(a, attack[sent..].to_vec(), "x OK Fetch completed.");
    assert_eq!(answered, n);
    fds_back_to(mail, fds_before);
}

#[test]
fn a_mail_client_that_stops_reading_is_disconnected_after_the_stall_timeout() {
    let s = Stack::start_with_args(options(), &[], &["--stall-timeout", "1"]);
    let mail = s.mails[0].id();
    for user in ["alice", "carol"] {
        for _ in 0..200 {
            maildir::deliver(&s.maildir(user), "INBOX", b"x").unwrap();
        }
    }
    let fds_before = settled_fds(mail);

    // A slow reader, not an attacker: it takes about 256 KiB every 100 ms,
    // all the time, so it is over the cap but never stalled.
    let slow_n = 1000;
    let mut slow = Imap::login(s.port, "carol", PASSWORD);
    slow.send(&"y FETCH 1:* (FLAGS UID MODSEQ)\r\n".repeat(slow_n));
    let sipping = thread::spawn(move || {
        let mut done = 0;
        for _ in 0..30 {
            let mut took = 0;
            while took < 256 * 1024 {
                let l = slow.line();
                took += l.len();
                done += usize::from(l.starts_with("y OK Fetch completed."));
            }
            thread::sleep(Duration::from_millis(100));
        }
        (slow, done)
    });

    // The attack: as before, but it never reads.
    let a = Imap::login(s.port, "alice", PASSWORD);
    let attack = b"x FETCH 1:* (FLAGS UID MODSEQ)\r\n".repeat(3000);
    pump(a.socket(), &attack, Duration::from_secs(1));
    let t = Instant::now();
    wait_for(
        || {
            s.log("mail-0.log")
                .contains("none taken for 1 s; disconnecting")
        },
        "the stalled client to be disconnected",
    );
    let log = s.log("mail-0.log");
    let line = log.lines().find(|l| l.contains("none taken")).unwrap();
    assert!(line.contains("user=alice"), "{line}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    honest_client(&s, "bob");
    let (slow, sipped) = sipping.join().unwrap();
    let log = s.log("mail-0.log");
    assert!(
        has_line(&log, &["user=carol", "its input waits"]),
        "the slow reader was over the cap: {log}"
    );
    // Never cut off: it gets every answer.
    let rest = drain(slow, Vec::new(), "y OK Fetch completed.");
    assert_eq!(sipped + rest, slow_n);
    let log = s.log("mail-0.log");
    assert_eq!(log.matches("disconnecting").count(), 1, "{log}");
    drop(a);
    fds_back_to(mail, fds_before);
}

#[test]
fn a_client_pipelining_without_reading_is_flow_controlled_by_the_login_process() {
    let s = Stack::start(options());
    let login = s.login_pid();
    // The login process links to the tracker at the first LOGIN: count its
    // descriptors from then on.
    honest_client(&s, "bob");
    let fds_before = settled_fds(login);
    let base = pss_kb(login);

    // The attack: 600,000 CAPABILITYs before logging in (about 44 MB of
    // answers), none of them read.
    let n = 600_000;
    let attack = b"a CAPABILITY\r\n".repeat(n);
    let a = Imap::connect(s.port);
    let sent = pump(a.socket(), &attack, Duration::from_secs(2));
    let grown = growth_until_idle(login, base);
    eprintln!("{sent} bytes of commands taken; the login process grew {grown} kB");
    assert!(grown < GROWTH_LIMIT_KB, "the login process grew {grown} kB");
    let log = s.log("login.log");
    assert!(
        has_line(
            &log,
            &["127.0.0.1:", "bytes of answers unread; its input waits"]
        ),
        "{log}"
    );

    honest_client(&s, "bob");
    let answered = drain(a, attack[sent..].to_vec(), "a OK Capability completed.");
    assert_eq!(answered, n);
    fds_back_to(login, fds_before);
}

#[test]
fn an_unauthenticated_client_is_closed_after_the_auth_timeout() {
    let s = Stack::start_with_args(options(), &["--auth-timeout", "1"], &[]);
    let login = s.login_pid();
    honest_client(&s, "bob");
    let fds_before = settled_fds(login);

    // The attack: clients that connect and say nothing, and one that
    // keeps talking without ever logging in.
    let t = Instant::now();
    let silent: Vec<Imap> = (0..20).map(|_| Imap::connect(s.port)).collect();
    let mut chatty = Imap::connect(s.port);
    let talker = thread::spawn(move || {
        // Talking until just before the deadline does not move it.
        for i in 0..5 {
            let tag = format!("n{i}");
            assert_eq!(chatty.ok(&tag, "NOOP").len(), 1);
            thread::sleep(Duration::from_millis(150));
        }
        (chatty.next_line(), chatty.next_line())
    });
    assert_eq!(fds(login), fds_before + 21, "the attackers hold slots");

    // An honest client logs in in time, and logged in it stays past the
    // timeout.
    let mut c = Imap::login(s.port, "carol", PASSWORD);
    for mut client in silent {
        assert_eq!(
            client.next_line().as_deref(),
            Some("* BYE Authentication timed out.\r\n")
        );
        assert_eq!(client.next_line(), None);
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    let (bye, then) = talker.join().unwrap();
    assert_eq!(bye.as_deref(), Some("* BYE Authentication timed out.\r\n"));
    assert_eq!(then, None);
    c.ok("c", "NOOP");
    c.ok("d", "LOGOUT");
    let log = s.log("login.log");
    assert_eq!(
        log.matches("authentication timed out after 1 s").count(),
        21,
        "{log}"
    );
    assert!(log.contains("127.0.0.1:"), "{log}");
    fds_back_to(login, fds_before);
}
