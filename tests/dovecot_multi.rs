//! Several imap-idle processes under one Dovecot (2.3, or 2.4 in a chroot): with a small
//! imap-hibernate `client_limit`, Dovecot's master starts another imap-idle
//! whenever the running ones are full, and each serves its own clients.
//! Needs Dovecot and root; with IMAP_IDLE_REQUIRE_DOVECOT=1 (set by CI) a
//! missing Dovecot is a failure.

mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use util::dovecot::PASSWORD;
use util::dovecot::{available, raise_inotify_instances, Dovecot, Hibernation, ServiceLimits};
use util::imap::Imap;

const DAEMON: &str = "dovecot/imap-idle";
const CLIENT_LIMIT: usize = 5;
const USERS: usize = 5;
const PER_USER: usize = 3;

/// A Dovecot whose hibernation service takes CLIENT_LIMIT clients a
/// process, at most `process_limit` processes, and `total` clients of
/// USERS users that entered IDLE, each with its user.
fn idle_clients(
    how: Hibernation,
    process_limit: u32,
    total: usize,
) -> (Dovecot, Vec<String>, Vec<(String, Imap)>) {
    raise_inotify_instances(1024);
    let names: Vec<String> = (0..USERS).map(|i| format!("multi{i}")).collect();
    let limits = ServiceLimits {
        client_limit: Some(CLIENT_LIMIT as u32),
        process_limit: Some(process_limit),
        ..ServiceLimits::default()
    };
    let dc = Dovecot::start_with(&names, how, limits);
    let clients = (0..total)
        .map(|i| {
            let user = &names[i % USERS];
            let mut c = Imap::login(dc.port, user, PASSWORD);
            c.idle("c");
            (user.clone(), c)
        })
        .collect();
    (dc, names, clients)
}

#[test]
fn the_master_starts_more_imap_idle_processes_when_one_is_full() {
    if !available("dovecot_multi") {
        return;
    }
    let total = USERS * PER_USER;
    let (dc, names, mut clients) = idle_clients(Hibernation::ImapIdle, 10, total);
    dc.wait_for(
        || dc.hibernated() == total && dc.processes("dovecot/imap").is_empty(),
        "every client to hibernate and every imap process to exit",
        Duration::from_secs(30),
    );

    // What the kernel says each process holds: its clients' TCP sockets.
    let daemons = dc.processes(DAEMON);
    let held: Vec<usize> = daemons.iter().map(|&p| Dovecot::tcp_sockets(p)).collect();
    assert!(
        held.iter().all(|&n| n <= CLIENT_LIMIT),
        "a process holds more than client_limit: {held:?}"
    );
    assert!(
        held.iter().filter(|&&n| n > 0).count() >= total / CLIENT_LIMIT,
        "clients per imap-idle process: {held:?}"
    );
    assert_eq!(held.iter().sum::<usize>(), total, "{held:?}");

    eprintln!("clients held per imap-idle process (from /proc): {held:?}");

    // What each daemon says: one park socket each, every one in use.
    let before: BTreeMap<_, _> = dc
        .stats_each()
        .into_iter()
        .map(|(path, s)| (path, s.parked))
        .collect();
    assert_eq!(before.len(), daemons.len(), "{before:?}");
    assert!(
        before.values().all(|&n| n as usize <= CLIENT_LIMIT),
        "{before:?}"
    );
    assert!(
        before.values().filter(|&&n| n > 0).count() >= total / CLIENT_LIMIT,
        "{before:?}"
    );

    // The operator's view: each process, and the sum.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imap-idle-lab"))
        .args(["stats", "--runtime-dir"])
        .arg(&dc.run_dir)
        .output()
        .expect("imap-idle-lab stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let each = text.lines().filter(|l| l.ends_with(" parked")).count();
    assert_eq!(each, daemons.len(), "{text}");
    assert!(text.contains(&format!("parked: {total},")), "{text}");

    for user in &names {
        dc.deliver(user, "1.msg");
    }
    for (user, c) in &mut clients {
        let (line, _) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{user}");
    }
    // Every process returned each client it held (the restored imap
    // processes stay in IDLE, so clients hibernate again afterwards).
    let after: BTreeMap<_, _> = dc
        .stats_each()
        .into_iter()
        .map(|(path, s)| (path, s.returned))
        .collect();
    for (path, parked) in &before {
        assert_eq!(
            after.get(path),
            Some(parked),
            "{}: held {parked}; after the delivery {after:?}",
            path.display()
        );
    }
}

/// The rig's measured count for Dovecot's own imap-hibernate (the bench's
/// baseline): the client sockets its processes hold, which follows clients
/// hibernating and hanging up.
#[test]
fn hibernated_clients_of_dovecots_own_service_are_counted_from_proc() {
    if !available("dovecot_multi") {
        return;
    }
    let total = 2 * USERS;
    let (dc, _, mut clients) = idle_clients(Hibernation::Dovecot, 10, total);
    dc.wait_for(
        || dc.processes("dovecot/imap").is_empty() && dc.hibernated() == total,
        "every client to hibernate in Dovecot's imap-hibernate",
        Duration::from_secs(30),
    );
    // Dovecot's own service spreads over processes just the same.
    assert!(dc.processes("dovecot/imap-hibernate").len() >= total / CLIENT_LIMIT);
    for (_, c) in clients.drain(..3) {
        c.shutdown();
    }
    dc.wait_for(
        || dc.hibernated() == total - 3,
        "the hung-up clients to leave imap-hibernate",
        Duration::from_secs(10),
    );
}

/// Past client_limit x process_limit the extra clients stay in their imap
/// processes (which try once, and give up after Dovecot's 10 s) and still
/// get their mail; no imap-idle takes more than its share.
#[test]
fn past_the_process_limit_clients_stay_in_imap_and_still_get_mail() {
    if !available("dovecot_multi") {
        return;
    }
    let room = 2 * CLIENT_LIMIT;
    let (dc, names, mut clients) = idle_clients(Hibernation::ImapIdle, 2, room + 2);
    dc.wait_for(
        || dc.hibernated() == room && dc.processes("dovecot/imap").len() == 2,
        "two full imap-idle processes and two imap processes",
        Duration::from_secs(30),
    );
    // The two attempts left over time out; nothing more hibernates.
    std::thread::sleep(Duration::from_secs(12));
    let held: Vec<usize> = dc
        .processes(DAEMON)
        .iter()
        .map(|&p| Dovecot::tcp_sockets(p))
        .collect();
    assert_eq!(held, [CLIENT_LIMIT, CLIENT_LIMIT]);
    assert_eq!(dc.processes("dovecot/imap").len(), 2);
    for user in &names {
        dc.deliver(user, "1.msg");
    }
    for (user, c) in &mut clients {
        let (line, _) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{user}");
    }
    assert_eq!(dc.stats().returned as usize, room);
}

/// A hand-off that queued while every process was full is taken as soon as
/// a client leaves (the listener raises no new event for it), well before
/// the imap process gives up after 10 s.
#[test]
fn a_full_process_takes_a_waiting_hand_off_when_a_client_leaves() {
    if !available("dovecot_multi") {
        return;
    }
    let (dc, names, mut clients) = idle_clients(Hibernation::ImapIdle, 1, CLIENT_LIMIT);
    dc.wait_for(
        || dc.hibernated() == CLIENT_LIMIT && dc.processes("dovecot/imap").is_empty(),
        "one full imap-idle",
        Duration::from_secs(30),
    );
    let mut late = Imap::login(dc.port, &names[0], PASSWORD);
    late.idle("c");
    // Past imap_hibernate_timeout (1 s): its hand-off waits in the queue.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dc.hibernated(), CLIENT_LIMIT);
    assert_eq!(dc.processes("dovecot/imap").len(), 1);
    clients.remove(0).1.shutdown();
    dc.wait_for(
        || dc.processes("dovecot/imap").is_empty() && dc.hibernated() == CLIENT_LIMIT,
        "the waiting client to hibernate in the room left",
        Duration::from_secs(6),
    );
    dc.deliver(&names[0], "1.msg");
    let (line, _) = late.expect("EXISTS");
    assert_eq!(line, "* 1 EXISTS\r\n");
}
