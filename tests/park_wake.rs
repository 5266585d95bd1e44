//! Every way a parked connection wakes, stays, or leaves.

mod util;

use std::io::Write;
use std::thread::sleep;
use std::time::Duration;

use imap_idle::proto::native::{GoneReason, RefuseKind, WakeReason};
use util::*;

fn setup() -> (Daemon, Tracker, Mail) {
    let d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let m = Mail::connect(&d);
    (d, t, m)
}

#[test]
fn done_wakes_with_state_unchanged_and_the_same_socket() {
    let (d, t, mut m) = setup();
    let park = idle_park("alice", vec![]);
    let (mut client, id) = m.park_ok(&park);
    assert_eq!(d.stats().parked, 1);
    client.write_all(b"DONE\r\n").unwrap();
    let (r, fd) = t.returned();
    assert_eq!(r.id, id);
    assert_eq!(r.reason, WakeReason::Done);
    assert_eq!(r.park, park, "everything it came with comes back");
    assert!(r.input.is_empty(), "DONE is consumed, not forwarded");
    assert!(!r.idle_running);
    assert_same_socket(&fd, &mut client);
    wait_for(|| d.stats().parked == 0, "parked count to drop");
}

#[test]
fn done_with_lf_only_and_a_following_command() {
    let (_d, t, mut m) = setup();
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    client.write_all(b"done\nb NOOP\r\n").unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Done);
    assert_eq!(r.input, b"b NOOP\r\n");
}

#[test]
fn done_idle_in_one_read_is_answered_in_place() {
    let (d, t, mut m) = setup();
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    client.write_all(b"DONE\r\nA2 IDLE\r\n").unwrap();
    let answer = "A1 OK Idle completed.\r\n+ idling\r\n";
    assert_eq!(read_exactly(&mut client, answer.len()), answer);
    t.nothing_for(Duration::from_millis(300));
    let s = d.stats();
    assert_eq!((s.parked, s.idle_restarted), (1, 1));
    // The new tag is the one the connection now carries.
    client.write_all(b"DONE\r\n").unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.park.tag, "A2");
    assert_eq!(r.reason, WakeReason::Done);
}

#[test]
fn partial_done_waits_for_the_rest() {
    let (d, t, mut m) = setup();
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    for piece in [&b"DO"[..], b"NE", b"\r"] {
        client.write_all(piece).unwrap();
        t.nothing_for(Duration::from_millis(200));
        assert_eq!(d.stats().parked, 1);
    }
    client.write_all(b"\n").unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Done);
    assert!(r.input.is_empty());
}

#[test]
fn bad_input_in_idle_is_forwarded_as_bad_done() {
    let (_d, t, mut m) = setup();
    let (_client_keep, _) = m.park_ok(&idle_park("bob", vec![]));
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    client.write_all(b"a NOOP\r\n").unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.park.user, "alice");
    assert_eq!(r.reason, WakeReason::BadDone);
    assert_eq!(r.input, b"a NOOP\r\n");
    assert!(!r.idle_running);
}

#[test]
fn input_outside_idle_wakes_with_the_input() {
    let (_d, t, mut m) = setup();
    let mut park = idle_park("alice", vec![]);
    park.in_idle = false;
    let (mut client, _) = m.park_ok(&park);
    client.write_all(b"c CAPABILITY\r\n").unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Input);
    assert_eq!(r.input, b"c CAPABILITY\r\n");
    assert!(!r.park.in_idle);
}

#[test]
fn new_mail_in_a_watched_dir_wakes_with_idle_running() {
    let (d, t, mut m) = setup();
    let new = d.dir.path().join("Maildir/new");
    std::fs::create_dir_all(&new).unwrap();
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![new.clone()]));
    t.nothing_for(Duration::from_millis(200));
    std::fs::write(new.join("1700000000.M1P1.host"), b"Subject: hi\r\n\r\n").unwrap();
    let (r, fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Changed);
    assert!(r.idle_running);
    assert_eq!(r.park.watch, vec![new]);
    assert_same_socket(&fd, &mut client);
    wait_for(|| d.stats().watches == 0, "the watch to be removed");
}

#[test]
fn partial_done_travels_with_a_mailbox_change() {
    let (d, t, mut m) = setup();
    let new = d.dir.path().join("new");
    std::fs::create_dir(&new).unwrap();
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![new.clone()]));
    client.write_all(b"DON").unwrap();
    t.nothing_for(Duration::from_millis(200));
    std::fs::write(new.join("msg"), b"x").unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Changed);
    assert_eq!(r.input, b"DON", "bytes already read must not be lost");
    assert!(r.idle_running);
}

#[test]
fn connections_on_one_path_share_one_watch() {
    let (d, t, mut m) = setup();
    let new = d.dir.path().join("new");
    let log = d.dir.path().join("dovecot.index.log");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(&log, b"").unwrap();
    let alias = d.dir.path().join("./new");
    let (_c1, _) = m.park_ok(&idle_park("alice", vec![new.clone(), log.clone()]));
    let (_c2, _) = m.park_ok(&idle_park("alice", vec![alias, log.clone()]));
    let (_c3, _) = m.park_ok(&idle_park("bob", vec![new.clone()]));
    let s = d.stats();
    assert_eq!((s.parked, s.watches), (3, 2));
    // One change wakes every watcher of that file, and only them.
    std::fs::write(&log, b"appended").unwrap();
    let mut users = vec![t.returned().0.park.user, t.returned().0.park.user];
    users.sort();
    assert_eq!(users, ["alice", "alice"]);
    wait_for(|| d.stats().watches == 1, "the log watch to go");
    assert_eq!(d.stats().parked, 1);
    // SIGUSR1 says the same in the log.
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    wait_for(
        || d.log().contains("parked=1 returning=0 watches=1"),
        "summary line",
    );
}

#[test]
fn client_hang_up_is_reported_and_cleaned_up() {
    let (d, t, mut m) = setup();
    let new = d.dir.path().join("new");
    std::fs::create_dir(&new).unwrap();
    let baseline = d.settled_fds();
    let (client, id) = m.park_ok(&idle_park("alice", vec![new]));
    // Holding somebody, the daemon keeps a tracker link (so that a
    // restarted tracker hears from it at once): one fd for that, and one
    // per parked connection.
    wait_for(|| t.links() == 1, "the daemon to open its tracker link");
    d.expect_fds(baseline + 2);
    drop(client);
    let g = t.gone();
    assert_eq!(
        (g.id, g.reason, g.user.as_str()),
        (id, GoneReason::HungUp, "alice")
    );
    assert_eq!(g.cookie, [0x5a; 16]);
    // The client fd is gone; the one new fd is the tracker link, which
    // carried the notice and stays.
    assert_eq!(t.links(), 1);
    d.expect_fds(baseline + 1);
    let s = d.stats();
    assert_eq!((s.parked, s.watches, s.hung_up), (0, 0, 1));
    assert!(d.log().contains("user=alice conn="));
}

#[test]
fn keepalive_reaches_the_client() {
    let (_d, _t, mut m) = setup();
    let mut park = idle_park("alice", vec![]);
    park.keepalive_secs = 1;
    let (mut client, _) = m.park_ok(&park);
    let line = "* OK Still here\r\n";
    assert_eq!(read_exactly(&mut client, line.len()), line);
    assert_eq!(read_exactly(&mut client, line.len()), line);
}

#[test]
fn keepalives_of_one_user_arrive_together() {
    let (_d, _t, mut m) = setup();
    let mut park = idle_park("carol", vec![]);
    park.keepalive_secs = 2;
    let (mut a, _) = m.park_ok(&park);
    sleep(Duration::from_millis(700));
    let (mut b, _) = m.park_ok(&park);
    let line = "* OK Still here\r\n";
    assert_eq!(read_exactly(&mut a, line.len()), line);
    let at_a = std::time::Instant::now();
    assert_eq!(read_exactly(&mut b, line.len()), line);
    assert!(at_a.elapsed() < Duration::from_millis(300), "not coalesced");
}

#[test]
fn unwatchable_path_is_refused_and_the_client_kept() {
    let (d, _t, mut m) = setup();
    let park = idle_park("alice", vec!["/nonexistent/Maildir/new".into()]);
    let (mut client, kept) = m.park(&park).expect_err("must be refused");
    assert_eq!(kept.kind, Some(RefuseKind::BadWatch));
    assert!(
        kept.reason.contains("/nonexistent/Maildir/new"),
        "{}",
        kept.reason
    );
    // The mail process still has a working client.
    let mut server = std::os::unix::net::UnixStream::from(kept.client);
    server.write_all(b"* OK\r\n").unwrap();
    assert_eq!(read_exactly(&mut client, 6), "* OK\r\n");
    let s = d.stats();
    assert_eq!((s.parked, s.watches, s.refused), (0, 0, 1));
}

#[test]
fn a_full_daemon_refuses_with_a_reason() {
    let d = Daemon::start(&["--max-parked", "2"]);
    let mut m = Mail::connect(&d);
    let _a = m.park_ok(&idle_park("alice", vec![]));
    let _b = m.park_ok(&idle_park("alice", vec![]));
    let (_c, kept) = m.park(&idle_park("alice", vec![])).expect_err("full");
    assert_eq!(kept.kind, Some(RefuseKind::Full));
    assert!(kept.reason.contains("full"), "{}", kept.reason);
}

#[test]
fn input_sent_during_the_hand_off_is_not_missed() {
    let (d, t, mut m) = setup();
    // The client types before the daemon has even seen the descriptor.
    let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
    (&client).write_all(b"DONE\r\n").unwrap();
    m.park_server_end(server).expect("parked");
    let (r, _fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Done);
    wait_for(|| d.stats().parked == 0, "nothing left parked");
}

#[test]
fn a_deleted_watched_dir_wakes_its_watchers() {
    let (d, t, mut m) = setup();
    let new = d.dir.path().join("gone/new");
    std::fs::create_dir_all(&new).unwrap();
    let (_client, _) = m.park_ok(&idle_park("alice", vec![new.clone()]));
    std::fs::remove_dir_all(d.dir.path().join("gone")).unwrap();
    let (r, _fd) = t.returned();
    assert_eq!(r.reason, WakeReason::Changed);
    wait_for(|| d.stats().watches == 0, "the dead watch to go");
}

#[test]
fn an_inotify_queue_overflow_wakes_everyone_watching_anything() {
    let (d, t, mut m) = setup();
    let busy = d.dir.path().join("busy");
    let quiet = d.dir.path().join("quiet");
    std::fs::create_dir(&busy).unwrap();
    std::fs::create_dir(&quiet).unwrap();
    let (_a, _) = m.park_ok(&idle_park("alice", vec![busy.clone()]));
    let (_b, _) = m.park_ok(&idle_park("bob", vec![quiet]));
    let (_c, _) = m.park_ok(&idle_park("carol", vec![]));
    // Freeze the daemon so the kernel's event queue fills past its limit.
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    for i in 0..max + 100 {
        std::fs::File::create(busy.join(i.to_string())).unwrap();
    }
    d.signal(nix::sys::signal::Signal::SIGCONT);
    let mut users = vec![t.returned().0.park.user, t.returned().0.park.user];
    users.sort();
    // bob's directory never changed: only the overflow can have woken him.
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(d.stats().parked, 1, "carol watches nothing and stays");
}

#[test]
fn a_client_that_does_not_read_is_disconnected_not_buffered() {
    use nix::sys::socket::{setsockopt, sockopt};
    let (d, t, mut m) = setup();
    let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
    setsockopt(&server, sockopt::SndBuf, &4096).unwrap();
    server.set_nonblocking(true).unwrap();
    let mut filled = 0;
    while let Ok(n) = (&server).write(&[b'x'; 1024]) {
        filled += n;
    }
    assert!(filled > 0);
    server.set_nonblocking(false).unwrap();
    let mut park = idle_park("alice", vec![]);
    park.keepalive_secs = 1;
    m.park_server_end_with(server, &park).expect("parked");
    let g = t.gone();
    assert_eq!(g.reason, GoneReason::OutputFull);
    assert!(d.log().lines().any(|l| l.contains("user=alice conn=")
        && l.contains(": disconnected: client output buffer is full")));
    drop(client);
}

#[test]
fn a_hang_up_that_comes_with_the_last_bytes_is_seen() {
    let (d, t, mut m) = setup();
    for bytes in [&b"DON"[..], b"DONE\r\nA2 IDLE\r\n"] {
        let mut park = idle_park("alice", vec![]);
        park.keepalive_secs = 0;
        let (mut client, id) = m.park_ok(&park);
        // Bytes that leave it parked and the close, seen by the daemon as
        // one readiness report.
        d.signal(nix::sys::signal::Signal::SIGSTOP);
        client.write_all(bytes).unwrap();
        drop(client);
        d.signal(nix::sys::signal::Signal::SIGCONT);
        let g = t.gone();
        assert_eq!((g.id, g.reason), (id, GoneReason::HungUp), "{bytes:?}");
    }
    wait_for(|| d.stats().parked == 0, "both gone");
}
