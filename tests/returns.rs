//! Handing connections back: retries, give-up, lost links, shutdown.

mod util;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::thread::sleep;
use std::time::{Duration, Instant};

use imap_idle::proto::native::{GoneReason, WakeReason};
use nix::sys::signal::Signal;
use util::*;

#[test]
fn tracker_down_then_up_within_the_deadline_loses_nothing() {
    let d = Daemon::start(&[]);
    let mut m = Mail::connect(&d);
    let (mut client, id) = m.park_ok(&idle_park("alice", vec![]));
    client.write_all(b"DONE\r\n").unwrap();
    sleep(Duration::from_millis(1500));
    assert_eq!(d.stats().returning, 1);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let (r, fd) = t.returned();
    assert_eq!((r.id, r.reason), (id, WakeReason::Done));
    assert_same_socket(&fd, &mut client);
    assert!(d.log().contains("unreachable"), "outage is logged");
}

#[test]
fn tracker_down_past_the_deadline_ends_with_bye() {
    let d = Daemon::start(&[]);
    let mut m = Mail::connect(&d);
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    client.write_all(b"DONE\r\n").unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).expect("read until EOF");
    let waited = started.elapsed();
    assert!(got.starts_with("* BYE [UNAVAILABLE]"), "{got:?}");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "gave up after {waited:?}, expected about 10 s with input"
    );
    let s = d.stats();
    assert_eq!((s.parked, s.returning, s.gave_up), (0, 0, 1));
    // Serials are unguessable: any conn= will do.
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains("user=alice conn=") && l.contains(": disconnected with BYE")));
}

#[test]
fn rejected_returns_are_retried() {
    let d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::RejectFirst(2));
    let mut m = Mail::connect(&d);
    let (mut client, id) = m.park_ok(&idle_park("alice", vec![]));
    client.write_all(b"DONE\r\n").unwrap();
    let (r, fd) = t.returned();
    assert_eq!(r.id, id);
    assert_same_socket(&fd, &mut client);
    assert!(d
        .log()
        .contains("tracker refused the return (busy); retrying"));
}

#[test]
fn a_link_lost_with_returns_in_flight_resends_them() {
    let d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::DropLinkAfter(3));
    let mut m = Mail::connect(&d);
    let mut clients = Vec::new();
    for i in 0..10 {
        let (mut c, id) = m.park_ok(&idle_park(&format!("u{i}"), vec![]));
        c.write_all(b"DONE\r\n").unwrap();
        clients.push(id);
    }
    let mut got = HashSet::new();
    while got.len() < 10 {
        let (r, _fd) = t.returned();
        got.insert(r.id);
    }
    assert_eq!(got, clients.into_iter().collect());
    assert!(t.links() >= 4, "the link was re-established");
}

#[test]
fn sigterm_returns_every_parked_connection() {
    raise_fd_limit();
    const N: usize = 1000;
    let mut d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let mut m = Mail::connect(&d);
    let new = d.dir.path().join("new");
    std::fs::create_dir(&new).unwrap();
    let mut clients = std::collections::HashMap::new();
    for i in 0..N {
        let mut park = idle_park(&format!("user{}", i % 50), vec![new.clone()]);
        park.state = format!("state of connection {i}").into_bytes();
        let (client, id) = m.park_ok(&park);
        clients.insert(id, (client, park));
    }
    let s = d.stats();
    assert_eq!((s.parked as usize, s.watches), (N, 1));
    d.signal(Signal::SIGTERM);
    for _ in 0..N {
        let (r, fd) = t.returned();
        assert_eq!(r.reason, WakeReason::Shutdown);
        assert!(r.idle_running);
        let (client, park) = clients.get_mut(&r.id).expect("a connection we parked");
        assert_eq!(&r.park, park);
        assert_same_socket(&fd, client);
        clients.remove(&r.id);
    }
    assert!(clients.is_empty());
    assert!(d.wait_exit(WAIT).success());
    assert!(!d.park.exists(), "the park socket is removed at exit");
}

#[test]
fn a_second_signal_gives_up_at_once() {
    let mut d = Daemon::start(&[]);
    let mut m = Mail::connect(&d);
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    d.signal(Signal::SIGTERM);
    sleep(Duration::from_millis(300));
    d.signal(Signal::SIGINT);
    let mut got = String::new();
    client.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("* BYE [UNAVAILABLE]"), "{got:?}");
    assert!(d.wait_exit(WAIT).success());
}

#[test]
fn parks_are_refused_while_shutting_down() {
    let d = Daemon::start(&[]);
    let mut m = Mail::connect(&d);
    let _keep = m.park_ok(&idle_park("alice", vec![]));
    d.signal(Signal::SIGTERM);
    sleep(Duration::from_millis(300));
    let (_c, kept) = m.park(&idle_park("bob", vec![])).expect_err("refused");
    assert_eq!(
        kept.kind,
        Some(imap_idle::proto::native::RefuseKind::ShuttingDown)
    );
}

#[test]
fn gone_notices_wait_for_the_tracker() {
    let d = Daemon::start(&[]);
    let mut m = Mail::connect(&d);
    let (client, id) = m.park_ok(&idle_park("alice", vec![]));
    drop(client);
    wait_for(|| d.stats().hung_up == 1, "hang-up");
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let g = t.gone();
    assert_eq!((g.id, g.reason), (id, GoneReason::HungUp));
}

#[test]
fn an_idle_daemon_sleeps_after_its_tracker_link_closes() {
    let d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let mut m = Mail::connect(&d);
    let (mut client, _) = m.park_ok(&idle_park("alice", vec![]));
    client.write_all(b"DONE\r\n").unwrap();
    let _ = t.returned();
    // The stand-in reports the return before its Accepted goes out: close
    // the link only once the daemon has it, or the return is still in
    // flight and the daemon rightly keeps retrying.
    wait_for(|| d.stats().returned == 1, "the return accepted");
    let (_parked, _) = m.park_ok(&idle_park("bob", vec![]));
    t.close_links();
    wait_for(|| d.log().contains("tracker link closed"), "link closed");
    // Past every retry deadline, with nothing to deliver.
    sleep(Duration::from_secs(3));
    let before = d.cpu_time();
    sleep(Duration::from_secs(2));
    let used = d.cpu_time() - before;
    assert!(
        used < Duration::from_millis(200),
        "idle daemon used {used:?} of CPU in 2 s"
    );
    assert_eq!(d.stats().parked, 1);
}
