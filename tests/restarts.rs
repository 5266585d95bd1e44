//! Restarts lose nobody: the tracker killed with SIGKILL and started again
//! takes every parked client back with its cookie (imap-idle re-reports
//! what it holds, the mail processes what they serve), and an imap-idle
//! killed the same way leaves no stale entries or cookies in the tracker.

mod util;

use std::time::Duration;

use imap_idle::lab::serve::maildir;
use util::imap::Imap;
use util::stack::{Options, Stack, PASSWORD};
use util::wait_for;

fn idle_client(s: &Stack, user: &str) -> Imap {
    let mut c = Imap::connect(s.port);
    c.ok("a", &format!("LOGIN {user} {PASSWORD}"));
    c.ok("b", "SELECT INBOX");
    c.idle("c");
    c
}

fn deliver(s: &Stack, user: &str) {
    maildir::deliver(&s.maildir(user), "INBOX", b"Subject: hi\r\n\r\nhello\r\n").unwrap();
}

fn count(rows: &[(String, String, String)], state: &str) -> usize {
    rows.iter().filter(|(_, _, st)| st == state).count()
}

#[test]
fn a_tracker_killed_and_restarted_takes_every_parked_client_back() {
    let mut s = Stack::start(Options::default());
    // Two parked clients per user, and one of alice's active (not in
    // IDLE) in the mail process while the tracker dies.
    let mut parked: Vec<(&str, Imap)> = Vec::new();
    for user in ["alice", "bob", "carol"] {
        for _ in 0..2 {
            parked.push((user, idle_client(&s, user)));
        }
    }
    let mut active = Imap::connect(s.port);
    active.ok("a", &format!("LOGIN alice {PASSWORD}"));
    active.ok("b", "SELECT INBOX");
    s.wait_parked(6, Duration::from_secs(10));

    s.restart_tracker().unwrap();
    s.wait_mails_rejoined(Duration::from_secs(10)).unwrap();
    wait_for(
        || {
            let rows = s.who_rows();
            count(&rows, "parked") == 6 && count(&rows, "active") == 1
        },
        "the new tracker to know the 6 parked and the active client again",
    );
    let log = s.tracker_log();
    assert!(
        log.contains("users' cookies kept from before the restart"),
        "{log}"
    );

    // Woken by a delivery: alice's and bob's clients, each sees EXISTS.
    deliver(&s, "alice");
    deliver(&s, "bob");
    for (user, c) in parked.iter_mut().filter(|(u, _)| *u != "carol") {
        let (line, _) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{user}");
    }
    // Woken by DONE: carol's clients get their IDLE answered.
    for (_, c) in parked.iter_mut().filter(|(u, _)| *u == "carol") {
        c.send("DONE\r\n");
        let (line, _) = c.expect("c ");
        assert!(line.starts_with("c OK"), "{line}");
    }
    // The client that was active goes on, parks and is woken too.
    active.ok("n", "NOOP");
    active.idle("i");
    wait_for(
        || count(&s.who_rows(), "parked") == 5,
        "alice's active client to park under the new tracker",
    );
    deliver(&s, "alice");
    active.expect("EXISTS");
    let log = s.tracker_log();
    assert!(!log.contains("SECURITY"), "{log}");
    assert!(!log.contains("wrong or unknown cookie"), "{log}");
    let mail_log = s.log("mail-0.log");
    assert!(mail_log.contains("registered again"), "{mail_log}");
}

#[test]
fn an_imap_idle_killed_and_restarted_leaves_no_stale_entries_or_cookies() {
    let mut s = Stack::start(Options::default());
    let _alice = idle_client(&s, "alice");
    let _alice2 = idle_client(&s, "alice");
    let _bob = idle_client(&s, "bob");
    // Carol keeps one connection in the mail process: her cookie stays.
    let mut carol = Imap::connect(s.port);
    carol.ok("a", &format!("LOGIN carol {PASSWORD}"));
    let mut carol_parked = idle_client(&s, "carol");
    s.wait_parked(4, Duration::from_secs(10));

    s.restart_idle().unwrap();
    wait_for(
        || s.tracker_log().contains("4 stale parked entries dropped"),
        "the tracker to drop what died with imap-idle",
    );
    let who = s.who(None);
    let rows = s.who_rows();
    assert_eq!(rows.len(), 1, "{who}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        ("carol", "active")
    );
    assert!(
        who.contains("4 stale entries dropped since the tracker started"),
        "{who}"
    );
    // The clients parked in the dead daemon lost their connection.
    assert!(carol_parked.next_line().is_none());
    // Alice's and bob's cookies went with their last connections.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.tracker.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait_for(
        || {
            s.tracker_log()
                .contains("1 users, 1 connections (1 in mail processes, 0 parked)")
        },
        "the tracker's summary: carol alone",
    );
    // Alice and bob have no connection left: their cookies went, so
    // new logins get new ones and all works with the new imap-idle.
    let mut alice = idle_client(&s, "alice");
    s.wait_parked(1, Duration::from_secs(10));
    deliver(&s, "alice");
    alice.expect("EXISTS");
    carol.ok("n", "NOOP");
}
