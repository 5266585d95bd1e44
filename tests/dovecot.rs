//! imap-idle as the imap-hibernate service of a real, private Dovecot (the
//! host's 2.3, or the 2.4 of the chroot IMAP_IDLE_DOVECOT_ROOT names),
//! driven by real IMAP clients. Needs Dovecot and root; with
//! IMAP_IDLE_REQUIRE_DOVECOT=1 (set by CI) a missing Dovecot is a failure.

mod util;

use std::time::Duration;

use util::dovecot::{available, raise_inotify_instances, Dovecot, Hibernation, PASSWORD};
use util::imap::Imap;

const IMAP: &str = "dovecot/imap";
const DAEMON: &str = "dovecot/imap-idle";

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Log in, SELECT, IDLE, and wait until our daemon holds the client and
/// no imap process is left for it.
fn parked_client(dc: &Dovecot, user: &str, parked_before: u64) -> Imap {
    let mut c = Imap::login(dc.port, user, PASSWORD);
    c.idle("c");
    dc.wait_for(
        // Not stats(): the socket file exists a moment before it listens.
        || dc.hibernated() == parked_before as usize + 1,
        "the client to be parked by imap-idle",
        Duration::from_secs(10),
    );
    c
}

#[test]
fn an_idle_client_moves_to_imap_idle_and_comes_back_on_new_mail() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::ImapIdle);
    let mut c = parked_client(&dc, "alice", 0);
    dc.wait_for(
        || dc.processes(IMAP).is_empty(),
        "the imap process to exit",
        Duration::from_secs(5),
    );
    assert_eq!(dc.processes(DAEMON).len(), 1);

    dc.deliver("alice", "1.msg");
    let (line, took) = c.expect("EXISTS");
    assert_eq!(line, "* 1 EXISTS\r\n");
    assert!(took < Duration::from_secs(1), "EXISTS after {took:?}");
    assert_eq!(dc.stats().returned, 1);
    // The restored imap process is still in IDLE and ends it normally.
    c.send("DONE\r\n");
    let lines = c.until_tagged("c");
    assert!(
        lines.last().unwrap().starts_with("c OK Idle completed"),
        "{lines:?}"
    );
    let log = dc.log();
    // Serials are unguessable now: any conn= will do.
    assert!(
        log.lines().any(
            |l| l.contains("imap-hibernate: Debug: imap-idle: user=alice conn=")
                && l.contains(": parked from pid")
        ),
        "{log}"
    );
}

#[test]
fn done_ends_idle_through_a_restored_imap_process() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::ImapIdle);
    let mut c = parked_client(&dc, "alice", 0);
    c.send("DONE\r\n");
    let lines = c.until_tagged("c");
    assert!(
        lines.last().unwrap().starts_with("c OK Idle completed"),
        "{lines:?}"
    );
    assert_eq!(dc.stats().wake_done, 1);
}

#[test]
fn done_and_idle_in_one_packet_are_answered_without_waking() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::ImapIdle);
    let mut c = parked_client(&dc, "alice", 0);
    c.send("DONE\r\nd IDLE\r\n");
    assert_eq!(c.line(), "c OK Idle completed.\r\n");
    assert_eq!(c.line(), "+ idling\r\n");
    let s = dc.stats();
    assert_eq!((s.parked, s.idle_restarted, s.returned), (1, 1, 0));
    assert!(dc.processes(IMAP).is_empty(), "no imap process was started");
    // The new tag is the one the restored process finishes.
    c.send("DONE\r\n");
    let lines = c.until_tagged("d");
    assert!(
        lines.last().unwrap().starts_with("d OK Idle completed"),
        "{lines:?}"
    );
}

#[test]
fn a_command_after_done_is_served() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::ImapIdle);
    let mut c = parked_client(&dc, "alice", 0);
    // DONE and the next command in one packet: the command travels as
    // client input to the restored imap process.
    c.send("DONE\r\ne NOOP\r\n");
    c.until_tagged("c");
    let lines = c.until_tagged("e");
    assert!(
        lines.last().unwrap().starts_with("e OK NOOP completed"),
        "{lines:?}"
    );
    // Anything else inside IDLE is a bad DONE: Dovecot answers it.
    c.idle("f");
    dc.wait_for(
        || dc.stats().parked == 1,
        "parked again",
        Duration::from_secs(10),
    );
    c.send("g NOOP\r\n");
    let (line, _) = c.expect("f ");
    assert!(line.starts_with("f BAD"), "{line:?}");
    assert_eq!(dc.stats().wake_bad_done, 1);
}

#[test]
fn keepalives_arrive_while_parked() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::ImapIdle);
    let mut c = parked_client(&dc, "alice", 0);
    let (line, took) = c.expect("Still here");
    assert_eq!(line, "* OK Still here\r\n");
    assert!(
        took <= Duration::from_secs(4),
        "keepalive after {took:?} (interval 3 s)"
    );
    let s = dc.stats();
    assert!(s.keepalives >= 1 && s.parked == 1, "{s:?}");
}

#[test]
fn a_client_hanging_up_while_parked_leaves_nothing_behind() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice", "bob"]), Hibernation::ImapIdle);
    let _bob = parked_client(&dc, "bob", 0);
    let daemon = dc.processes(DAEMON)[0];
    let with_bob = Dovecot::settled_fds(daemon);
    let alice = parked_client(&dc, "alice", 1);
    assert_eq!(
        Dovecot::settled_fds(daemon),
        with_bob + 2,
        "client socket + Dovecot's notify fd"
    );
    alice.shutdown();
    dc.wait_for(
        || dc.stats().parked == 1,
        "alice to be dropped",
        Duration::from_secs(5),
    );
    dc.wait_for(
        || Dovecot::fds(daemon) == with_bob,
        "her fds to close",
        Duration::from_secs(5),
    );
    assert_eq!(dc.stats().hung_up, 1);
}

#[test]
fn a_hundred_idle_clients_of_one_uid_all_hibernate_and_all_get_their_mail() {
    if !available("dovecot") {
        return;
    }
    // Each hibernated Dovecot client keeps its own inotify instance, all
    // under the one mail uid: the default limit (128) is too small.
    raise_inotify_instances(1024);
    let names: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let dc = Dovecot::start(&names, Hibernation::ImapIdle);
    let mut clients = Vec::new();
    for i in 0..100 {
        let user = &names[i % 10];
        let mut c = Imap::login(dc.port, user, PASSWORD);
        c.idle("c");
        clients.push((user.clone(), c));
    }
    dc.wait_for(
        || dc.hibernated() == 100,
        "all 100 clients to be parked",
        Duration::from_secs(30),
    );
    dc.wait_for(
        || dc.processes(IMAP).is_empty(),
        "every imap process to exit",
        Duration::from_secs(10),
    );
    for user in &names {
        dc.deliver(user, "1.msg");
    }
    for (user, c) in &mut clients {
        let (line, _) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{user}");
    }
    assert_eq!(dc.stats().returned, 100);
}

#[test]
fn standalone_mode_binds_the_listener_itself() {
    if !available("dovecot") {
        return;
    }
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::Standalone);
    let mut c = parked_client(&dc, "alice", 0);
    dc.wait_for(
        || dc.processes(IMAP).is_empty(),
        "the imap process to exit",
        Duration::from_secs(5),
    );
    assert!(dc.processes(DAEMON).is_empty(), "not started by the master");
    dc.deliver("alice", "1.msg");
    let (line, _) = c.expect("EXISTS");
    assert_eq!(line, "* 1 EXISTS\r\n");
    c.send("DONE\r\n");
    c.until_tagged("c");
}

#[test]
fn the_masters_sigint_is_obeyed_only_when_nothing_is_parked() {
    if !available("dovecot") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dc = Dovecot::start(&users(&["alice"]), Hibernation::ImapIdle);
    let mut c = parked_client(&dc, "alice", 0);
    let daemon = Pid::from_raw(dc.processes(DAEMON)[0]);
    kill(daemon, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dc.stats().parked, 1, "still parked after SIGINT");
    assert!(dc
        .log()
        .contains("SIGINT from Dovecot's master ignored: 1 clients parked"));
    // End IDLE and log out: nothing is parked any more.
    c.send("DONE\r\n");
    c.until_tagged("c");
    c.ok("z", "LOGOUT");
    dc.wait_for(
        || dc.stats().parked == 0,
        "nothing parked",
        Duration::from_secs(5),
    );
    kill(daemon, Signal::SIGINT).unwrap();
    dc.wait_for(
        || dc.processes(DAEMON).is_empty(),
        "imap-idle to exit on SIGINT",
        Duration::from_secs(5),
    );
}
