//! Hibernated clients still count in Dovecot's anvil: `doveadm who` lists
//! them, `mail_max_userip_connections` refuses one more, and (Dovecot 2.4)
//! `doveadm kick` disconnects them with Dovecot's BYE. Against the host's
//! Dovecot 2.3, or the one in IMAP_IDLE_DOVECOT_ROOT (2.4 in CI). Needs
//! Dovecot and root; with IMAP_IDLE_REQUIRE_DOVECOT=1 (set by CI) a
//! missing Dovecot is a failure.

mod util;

use std::time::Duration;

use util::dovecot::PASSWORD;
use util::dovecot::{available, raise_inotify_instances, Dovecot, Hibernation, ServiceLimits};
use util::imap::Imap;

const DAEMON: &str = "dovecot/imap-idle";

/// `n` clients of `user` in IDLE, each hibernated in imap-idle, with no
/// imap process left.
fn hibernated(dc: &Dovecot, user: &str, n: usize) -> Vec<Imap> {
    let before = dc.hibernated();
    let clients: Vec<Imap> = (0..n)
        .map(|_| {
            let mut c = Imap::login(dc.port, user, PASSWORD);
            c.idle("c");
            c
        })
        .collect();
    dc.wait_for(
        || dc.hibernated() == before + n && dc.processes("dovecot/imap").is_empty(),
        "the clients to hibernate in imap-idle",
        Duration::from_secs(20),
    );
    clients
}

/// `doveadm who`'s line for `user`: its connection count and its pids.
fn who(dc: &Dovecot, user: &str) -> Option<(usize, Vec<i32>)> {
    let out = dc.doveadm(&["who", user]).unwrap_or_default();
    out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        if f.next() != Some(user) {
            return None;
        }
        let count = f.next()?.parse().ok()?;
        let pids = l
            .split('(')
            .nth(1)?
            .split(')')
            .next()?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        Some((count, pids))
    })
}

fn start(users: &[&str], limits: ServiceLimits) -> Dovecot {
    raise_inotify_instances(1024);
    let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    Dovecot::start_with(&users, Hibernation::ImapIdle, limits)
}

#[test]
fn doveadm_who_lists_hibernated_clients_until_they_leave() {
    if !available("dovecot_anvil") {
        return;
    }
    let dc = start(&["alice", "bob"], ServiceLimits::default());
    let mut alice = hibernated(&dc, "alice", 3);
    let _bob = hibernated(&dc, "bob", 1);
    let daemon = dc.processes(DAEMON);
    assert_eq!(daemon.len(), 1);
    dc.wait_for(
        || who(&dc, "alice") == Some((3, daemon.clone())),
        "doveadm who to list alice's 3 hibernated clients under imap-idle",
        Duration::from_secs(5),
    );
    assert_eq!(who(&dc, "bob"), Some((1, daemon.clone())));

    // One hangs up: anvil hears of it.
    alice.pop().unwrap().shutdown();
    dc.wait_for(
        || who(&dc, "alice") == Some((2, daemon.clone())),
        "the hung-up client to leave doveadm who",
        Duration::from_secs(5),
    );
    // The others wake on new mail: they leave imap-idle's registrations
    // for their imap processes', then hibernate again; each is counted
    // once all along the way back.
    dc.deliver("alice", "1.msg");
    for c in &mut alice {
        c.expect("EXISTS");
    }
    assert!(dc.stats().returned >= 2);
    dc.wait_for(
        || {
            who(&dc, "alice") == Some((2, daemon.clone()))
                && dc.processes("dovecot/imap").is_empty()
        },
        "alice's woken clients to hibernate again, counted once",
        Duration::from_secs(15),
    );
}

#[test]
fn the_userip_limit_counts_hibernated_clients() {
    if !available("dovecot_anvil") {
        return;
    }
    let limits = ServiceLimits {
        userip_connections: Some(10),
        ..ServiceLimits::default()
    };
    let dc = start(&["carol"], limits);
    let mut held = hibernated(&dc, "carol", 10);
    dc.wait_for(
        || who(&dc, "carol").is_some_and(|(n, _)| n == 10),
        "anvil to count carol's 10 hibernated clients",
        Duration::from_secs(5),
    );
    let mut eleventh = Imap::connect(dc.port);
    eleventh.send(&format!("a LOGIN carol {PASSWORD}\r\n"));
    let answer = eleventh.line();
    assert!(
        answer.starts_with("a NO") && answer.contains("Maximum number of connections"),
        "the 11th login: {answer:?}"
    );
    // One leaves: there is room again.
    held.pop().unwrap().shutdown();
    dc.wait_for(
        || who(&dc, "carol").is_some_and(|(n, _)| n == 9),
        "anvil to forget the client that left",
        Duration::from_secs(5),
    );
    let mut again = Imap::login(dc.port, "carol", PASSWORD);
    again.ok("d", "NOOP");
}

#[test]
fn doveadm_kick_disconnects_hibernated_clients_with_a_bye() {
    if !available("dovecot_anvil") {
        return;
    }
    let dc = start(&["dave", "erin"], ServiceLimits::default());
    if !dc.version().is_2_4_or_later() {
        eprintln!(
            "SKIPPED doveadm_kick: Dovecot {} kicks hibernation processes with SIGTERM, \
             not per client; CI runs this against 2.4 (IMAP_IDLE_DOVECOT_ROOT)",
            dc.version()
        );
        return;
    }
    let mut dave = hibernated(&dc, "dave", 2);
    let _erin = hibernated(&dc, "erin", 1);
    dc.wait_for(
        || who(&dc, "dave").is_some_and(|(n, _)| n == 2),
        "anvil to list dave's clients",
        Duration::from_secs(5),
    );
    let out = dc.doveadm(&["kick", "dave"]).expect("doveadm kick");
    for c in &mut dave {
        let mut lines = Vec::new();
        while let Some(l) = c.next_line() {
            lines.push(l);
        }
        assert_eq!(
            lines.last().map(String::as_str),
            Some("* BYE Server shutting down.\r\n"),
            "{lines:?}; doveadm kick said {out:?}"
        );
    }
    dc.wait_for(
        || who(&dc, "dave").is_none() && dc.hibernated() == 1,
        "dave to be gone from anvil and imap-idle, erin still there",
        Duration::from_secs(5),
    );
    assert_eq!(who(&dc, "erin").map(|(n, _)| n), Some(1));
}
