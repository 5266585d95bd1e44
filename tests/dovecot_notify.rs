//! Dovecot's notify fds (the imap process's inotify instance, sent with
//! each hand-off) against a real private Dovecot 2.3: clients of one
//! mailbox share one kept fd; with CAP_DAC_READ_SEARCH on the binary
//! Dovecot's fd is closed and its inodes are watched by our own instance;
//! and so 300 idle clients of one uid all hibernate under the kernel's
//! default `fs.inotify.max_user_instances` of 128. A delivery still wakes
//! each client. Needs Dovecot and root; with IMAP_IDLE_REQUIRE_DOVECOT=1
//! or IMAP_IDLE_REQUIRE_ROOT=1 (set by CI) a missing one is a failure.

mod util;

use std::time::Duration;

use imap_idle::lab::rig::dovecot::InstanceLimit;
use imap_idle::lab::rig::procfs;
use util::dovecot::{available, Dovecot, Hibernation, ServiceLimits, PASSWORD};
use util::imap::Imap;

const DAEMON: &str = "dovecot/imap-idle";

/// A Dovecot whose mail uid is its own: the per-uid instance count is
/// then this test's alone (other Dovecots on the machine use `nobody`).
fn start(users: &[String], how: Hibernation) -> Dovecot {
    let own = ServiceLimits {
        own_mail_uid: true,
        ..ServiceLimits::default()
    };
    Dovecot::start_with(users, how, own)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// `per_user` clients of each of `users` log in and IDLE; returns them
/// once all of them (and any before) are hibernated.
fn idle(dc: &Dovecot, users: &[String], per_user: usize, before: usize) -> Vec<(String, Imap)> {
    let mut clients = Vec::new();
    for _ in 0..per_user {
        for u in users {
            let mut c = Imap::login(dc.port, u, PASSWORD);
            c.idle("c");
            clients.push((u.clone(), c));
        }
    }
    let want = before + clients.len();
    dc.wait_for(
        || dc.hibernated() == want,
        &format!("{want} clients to hibernate"),
        Duration::from_secs(60),
    );
    clients
}

/// Inotify instances the imap-idle process holds, once the closing
/// thread is done.
fn instances_settle_at(dc: &Dovecot, n: usize) {
    let pid = dc.processes(DAEMON)[0] as u32;
    dc.wait_for(
        || procfs::inotify_instances(pid) == n,
        &format!("imap-idle to hold {n} inotify instances"),
        Duration::from_secs(5),
    );
}

fn deliver_and_expect(dc: &Dovecot, user: &str, clients: &mut [(String, Imap)]) {
    dc.deliver(user, "1.msg");
    for (u, c) in clients.iter_mut().filter(|(u, _)| u == user) {
        let (line, _) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{u}");
    }
}

/// Notify fds (shared, reopened, kept) so far.
fn notify_paths(dc: &Dovecot) -> (u64, u64, u64) {
    let s = dc.stats();
    (s.notify_shared, s.notify_reopened, s.notify_kept)
}

type Started = (Dovecot, Vec<String>, Vec<(String, Imap)>);

/// Dovecot with `users` users, `per_user` clients each hibernated; `None`
/// when the test is skipped.
fn started(how: Hibernation, users: usize, per_user: usize) -> Option<Started> {
    if !available("dovecot_notify") {
        return None;
    }
    let users = names("box", users);
    let dc = start(&users, how);
    let clients = idle(&dc, &users, per_user, 0);
    Some((dc, users, clients))
}

#[test]
fn clients_of_one_mailbox_share_one_notify_fd_and_all_wake() {
    let Some((dc, users, mut clients)) = started(Hibernation::ImapIdle, 2, 3) else {
        return;
    };
    // One kept per mailbox, the others shared.
    assert_eq!(notify_paths(&dc), (4, 0, 2));
    // Ours and one per mailbox; six client sockets beside them.
    instances_settle_at(&dc, 3);
    deliver_and_expect(&dc, &users[0], &mut clients);
    // The first mailbox's fd went with its last watcher; the other's stays.
    dc.wait_for(
        || dc.stats().parked == 3,
        "the other mailbox's clients to stay parked",
        Duration::from_secs(5),
    );
    instances_settle_at(&dc, 2);
    deliver_and_expect(&dc, &users[1], &mut clients);
}

#[test]
fn with_the_capability_dovecots_notify_fd_is_closed_and_mail_still_wakes() {
    // The master starts imap-idle with the first hand-off.
    let Some((dc, users, mut clients)) = started(Hibernation::ImapIdleCap, 1, 2) else {
        return;
    };
    let pid = dc.processes(DAEMON)[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .to_owned()
    };
    // CAP_DAC_READ_SEARCH (bit 2) alone, as the dovecot user.
    let (eff, prm) = (line("CapEff:"), line("CapPrm:"));
    assert!(eff.ends_with("\t0000000000000004"), "{eff}");
    assert!(prm.ends_with("\t0000000000000004"), "{prm}");
    let dovecot = nix::unistd::User::from_name("dovecot").unwrap().unwrap();
    assert!(
        line("Uid:").contains(&format!("\t{}\t", dovecot.uid)),
        "{status}"
    );
    assert_eq!(notify_paths(&dc), (0, 2, 0));
    // Only our own instance: Dovecot's were closed.
    instances_settle_at(&dc, 1);
    let fds = Dovecot::settled_fds(pid);
    deliver_and_expect(&dc, &users[0], &mut clients);
    dc.wait_for(
        || Dovecot::fds(pid) < fds - 1,
        "both client sockets to go back",
        Duration::from_secs(5),
    );
}

#[test]
fn three_hundred_idle_clients_of_one_uid_hibernate_under_the_default_instance_limit() {
    if !available("dovecot_notify") || !util::root_for("dovecot_notify") {
        return;
    }
    // Every imap process in IDLE holds an instance of the mail uid until
    // it hands its client over: log in in groups well under the limit.
    let _limit = InstanceLimit::set(128).expect("set max_user_instances");
    let users = names("many", 30);
    let dc = start(&users, Hibernation::ImapIdleCap);
    let mut clients = Vec::new();
    for group in users.chunks(5) {
        let before = clients.len();
        clients.extend(idle(&dc, group, 10, before));
    }
    assert_eq!(dc.hibernated(), 300);
    assert_eq!(notify_paths(&dc), (0, 300, 0));
    instances_settle_at(&dc, 1);
    // Woken in groups too: each restored imap process takes an instance.
    for group in users.chunks(5) {
        for u in group {
            deliver_and_expect(&dc, u, &mut clients);
        }
        dc.wait_for(
            || dc.hibernated() == 300,
            "the woken clients to hibernate again",
            Duration::from_secs(60),
        );
    }
}
