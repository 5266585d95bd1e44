//! Hostile local peers against imap-idle: each test makes the attack,
//! shows it refused, shows an honest peer unaffected, and checks that the
//! daemon holds no descriptor more than before.

mod util;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use imap_idle::mail::{IdleLink, NotParked};
use imap_idle::proto::native::{self, Message, Role, MAX_PACKET};
use imap_idle::sys::SeqPacket;
use util::fake_imap::{dovecot_daemon, FakeImap};
use util::*;

const NOBODY: u32 = 65534;

/// `imap-idle-lab probe` run as `uid`.
fn probe_as(uid: u32, d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imap-idle-lab"))
        .arg("probe")
        .arg("--socket")
        .arg(&d.park)
        .args(args)
        .uid(uid)
        .output()
        .expect("run probe")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// A socket everyone may reach, so that another uid can try its luck.
fn open_daemon(extra: &[&str]) -> Daemon {
    let mut args = vec!["--park-socket-mode", "0666", "--runtime-dir-mode", "0755"];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args);
    d.open_to_everyone();
    d
}

fn honest_park_works(d: &Daemon) {
    let mut m = Mail::connect(d);
    let (client, _) = m.park_ok(&idle_park("alice", vec![]));
    drop(client);
    wait_for(|| d.stats().parked == 0, "the honest client's hang-up");
}

#[test]
fn another_uid_may_neither_park_nor_ask_who_unless_configured() {
    if !root_for("another_uid_may_neither_park_nor_ask_who_unless_configured") {
        return;
    }
    let d = open_daemon(&[]);
    let baseline = d.settled_fds();
    let mut m = Mail::connect(&d);
    let (_alice, _) = m.park_ok(&idle_park("alice", vec![]));
    // The attack: a local user asks who is parked, and tries to park.
    let who = probe_as(NOBODY, &d, &["--role", "admin", "--describe"]);
    let out = text(&who);
    assert!(!who.status.success(), "{out}");
    assert!(out.contains("may not take the Admin role"), "{out}");
    assert!(!out.contains("described"), "{out}");
    let park = probe_as(NOBODY, &d, &["--role", "mail"]);
    assert!(text(&park).contains("may not take the MailProcess role"));
    wait_for(
        || {
            d.log().contains("SECURITY: pid=")
                && d.log().contains("uid=65534 claimed the Admin role")
        },
        "the refusal to be logged with pid and uid",
    );
    // The honest peer parks as before; the attacker's tries left nothing.
    drop(_alice);
    honest_park_works(&d);
    d.expect_fds(baseline + 1);
    drop(m);
    d.expect_fds(baseline);
    drop(d);

    // Allowed when the operator says so.
    let d = open_daemon(&["--mail-uid", "nobody"]);
    let ok = probe_as(NOBODY, &d, &["--role", "mail"]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn a_runtime_dir_another_user_controls_is_refused() {
    if !root_for("a_runtime_dir_another_user_controls_is_refused") {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let start = |dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_imap-idle"))
            .arg("--runtime-dir")
            .arg(dir)
            .output()
            .expect("run imap-idle")
    };
    // The attack: another user made the directory first.
    let theirs = top.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let o = start(&theirs);
    assert!(!o.status.success());
    let err = text(&o);
    assert!(err.contains("is owned by uid 65534, not by us"), "{err}");
    assert!(!theirs.join("park").exists(), "no socket was put there");
    // Or left it open for everyone to write.
    let open = top.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = start(&open);
    assert!(!o.status.success());
    assert!(text(&o).contains("is writable by everyone"), "{}", text(&o));
    // A missing one is created ours, 0750; an honest daemon runs there.
    let d = Daemon::start(&[]);
    let mode = std::fs::metadata(d.park.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    honest_park_works(&d);
}

#[test]
fn one_uid_cannot_hold_every_control_slot_nor_keep_silent_ones() {
    if !root_for("one_uid_cannot_hold_every_control_slot_nor_keep_silent_ones") {
        return;
    }
    let d = open_daemon(&["--max-controls-per-uid", "20", "--handshake-timeout", "2"]);
    let baseline = d.settled_fds();
    // The attack: 60 silent connections from one uid, held for 4 s.
    let attack = std::thread::scope(|s| {
        let a = s.spawn(|| probe_as(NOBODY, &d, &["--connections", "60", "--hold", "4"]));
        // Meanwhile an honest mail process still parks.
        std::thread::sleep(Duration::from_millis(500));
        honest_park_works(&d);
        a.join().unwrap()
    });
    let out = text(&attack);
    assert!(
        out.contains("60 connections: 0 held, 20 closed by the daemon, 40 refused")
            || out.contains("60 connections: 0 held, 60 closed by the daemon, 0 refused"),
        "{out}"
    );
    assert!(
        out.contains("holds 20 control connections already"),
        "{out}"
    );
    assert!(out.contains("no Hello within 2 s"), "{out}");
    assert!(d.log().contains("(--max-controls-per-uid); refused"));
    d.expect_fds(baseline);
}

#[test]
fn a_hand_off_with_extra_descriptors_is_refused() {
    let (base, d) = dovecot_daemon();
    let baseline = d.settled_fds();
    let (client, _peer) = UnixStream::pair().unwrap();
    // The attack: descriptors by the hundred on one hand-off connection.
    let mut f = FakeImap::greeted(base.path());
    let spare: Vec<OwnedFd> = (0..200)
        .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
        .collect();
    let fds: Vec<_> = spare.iter().map(|f| f.as_fd()).collect();
    for chunk in fds.chunks(imap_idle::sys::fdpass::MAX_FDS) {
        // Once refused, the daemon has closed: later sends may fail.
        let _ = imap_idle::sys::fdpass::send(f.sock.as_fd(), b"x", chunk);
    }
    let answer = f.line();
    assert!(
        answer.starts_with('-') && answer.contains("at most 2"),
        "{answer:?}\n{}",
        d.log()
    );
    assert!(f.closed());
    d.expect_fds(baseline);
    // An honest hand-off still parks.
    let mut f = FakeImap::greeted(base.path());
    f.send("alice\t%u: \ttag=c\tidle-cmd\n", Some(client.as_fd()));
    assert_eq!(f.line(), "+\n");
    drop(f);
    wait_for(|| d.stats().parked == 1, "the honest client to be parked");
}

#[test]
fn a_tag_too_long_to_keep_is_refused_at_hand_off_not_cut() {
    let (base, d) = dovecot_daemon();
    let baseline = d.settled_fds();
    let (client, _peer) = UnixStream::pair().unwrap();
    let tag = "t".repeat(300);
    let mut f = FakeImap::greeted(base.path());
    f.send(
        &format!("alice\t%u: \ttag={tag}\tidle-cmd\n"),
        Some(client.as_fd()),
    );
    assert_eq!(f.line(), "-IDLE tag of 300 bytes; at most 255 are kept\n");
    assert!(f.closed());
    assert_eq!(d.stats().parked, 0, "the imap process keeps the client");
    d.expect_fds(baseline);
    // 255 bytes are kept whole, and answered whole on an in-place restart.
    let tag = "u".repeat(255);
    let (client, mut peer) = UnixStream::pair().unwrap();
    let mut f = FakeImap::greeted(base.path());
    f.send(
        &format!("alice\t%u: \ttag={tag}\tidle-cmd\n"),
        Some(client.as_fd()),
    );
    assert_eq!(f.line(), "+\n");
    drop(f);
    drop(client);
    wait_for(|| d.stats().parked == 1, "the client to be parked");
    std::io::Write::write_all(&mut peer, b"DONE\r\nB IDLE\r\n").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let want = format!("{tag} OK Idle completed.\r\n+ idling\r\n");
    assert_eq!(read_exactly(&mut peer, want.len()), want);
}

#[test]
fn answers_carry_the_park_request_id_and_a_mismatch_loses_nothing_twice() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    // Two parks back to back on one link: each answer names its request.
    let sock = SeqPacket::connect(&d.park, false).unwrap();
    let mut buf = vec![0; MAX_PACKET + 1];
    let hello = Message::Hello {
        role: Role::MailProcess,
        pid: 1,
    };
    native::send(&sock, &hello, None).unwrap();
    native::recv(&sock, &mut buf).unwrap();
    let (a, _a) = UnixStream::pair().unwrap();
    let (b, _b) = UnixStream::pair().unwrap();
    for (req, fd) in [(41, a.as_fd()), (42, b.as_fd())] {
        let park = Message::Park {
            req,
            park: idle_park("alice", vec![]),
        };
        native::send(&sock, &park, Some(fd)).unwrap();
    }
    for want in [41, 42] {
        match native::recv(&sock, &mut buf).unwrap().msg {
            Message::Parked { req, .. } => assert_eq!(req, want),
            other => panic!("{other:?}"),
        }
    }
    drop((sock, a, b, _a, _b));
    wait_for(|| d.stats().parked == 0, "both hang-ups");
    honest_park_works(&d);
    d.expect_fds(baseline);
    drop(d);

    // A daemon that answers another request: the library must neither
    // keep serving the client (the daemon may have it) nor misread later
    // answers. We play that daemon.
    let dir = tempfile::tempdir().unwrap();
    let (path, listener) = stand_in_listener(dir.path());
    let fake = std::thread::spawn(move || {
        let sock = accept_as_idle(&listener);
        let mut buf = vec![0; MAX_PACKET + 1];
        let got = native::recv(&sock, &mut buf).unwrap();
        let Message::Park { req, .. } = got.msg else {
            panic!("expected a park");
        };
        let wrong = Message::Parked {
            req: req + 1,
            id: 7,
        };
        native::send(&sock, &wrong, None).unwrap();
        // The link must be closed now.
        matches!(
            native::recv(&sock, &mut buf),
            Err(native::RecvError::Closed)
        )
    });
    let mut link = IdleLink::connect(&path).unwrap();
    let (client, mut peer) = UnixStream::pair().unwrap();
    match link.park(OwnedFd::from(client), &idle_park("alice", vec![])) {
        Err(NotParked::Lost { reason }) => assert!(reason.contains("another request"), "{reason}"),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(!link.is_open());
    assert!(
        fake.join().unwrap(),
        "the link was closed after the mismatch"
    );
    // Our copy of the client is closed: its peer sees the end (nobody else
    // holds it here, since the fake daemon dropped its copy).
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut peer, &mut b).unwrap(), 0);
}

#[test]
fn who_with_19000_parked_is_paced_not_dropped() {
    raise_fd_limit();
    let d = Daemon::start(&["--log-level", "info"]);
    let baseline = d.settled_fds();
    let mut m = Mail::connect(&d);
    let n = 19_000;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (c, _) = m.park_ok(&idle_park(&format!("user{}", i % 1900), vec![]));
        clients.push(c);
    }
    assert_eq!(d.stats().parked, n as u64);
    // The attack (or just a slow admin tool): ask, then read nothing for a
    // while, so the answers fill the socket.
    let sock = SeqPacket::connect(&d.park, false).unwrap();
    let mut buf = vec![0; MAX_PACKET + 1];
    let hello = Message::Hello {
        role: Role::Admin,
        pid: 1,
    };
    native::send(&sock, &hello, None).unwrap();
    native::recv(&sock, &mut buf).unwrap();
    let ask = Message::Describe {
        query: 9,
        user: None,
    };
    native::send(&sock, &ask, None).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile the daemon serves others.
    let (extra, _) = m.park_ok(&idle_park("alice", vec![]));
    let mut rows = 0;
    loop {
        match native::recv(&sock, &mut buf)
            .expect("the asker is not dropped")
            .msg
        {
            Message::Described { conns, last, query } => {
                assert_eq!(query, 9);
                rows += conns.len();
                if last {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(rows >= n, "{rows} rows for {n} parked");
    drop((extra, sock, clients, m));
    wait_for(|| d.stats().parked == 0, "every hang-up");
    d.expect_fds(baseline);
}
