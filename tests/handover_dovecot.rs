//! Hand-over in Dovecot mode: a standalone imap-idle holding hibernated
//! clients of a real Dovecot 2.3 hands them, with their notify fds, to its
//! successor on SIGUSR2; the successor returns them to imap-master as the
//! old one would have. Needs Dovecot and root (IMAP_IDLE_REQUIRE_DOVECOT=1
//! makes a missing one a failure).

mod util;

use std::time::Duration;

use imap_idle::lab::rig::procfs::exited;
use imap_idle::link::Link;
use imap_idle::proto::native::Role;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::dovecot::{available, Dovecot, Hibernation, PASSWORD};
use util::imap::Imap;

struct Reaped(u32);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

#[test]
fn sigusr2_hands_hibernated_dovecot_clients_to_the_successor() {
    if !available("handover_dovecot") {
        return;
    }
    let users: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let dc = Dovecot::start(&users, Hibernation::Standalone);
    let mut clients: Vec<Imap> = Vec::new();
    for u in &users {
        let mut c = Imap::login(dc.port, u, PASSWORD);
        c.idle("c");
        clients.push(c);
        let n = clients.len();
        dc.wait_for(
            || dc.hibernated() == n,
            "the client to be parked",
            Duration::from_secs(10),
        );
    }
    let old = dc.standalone_pid().expect("standalone imap-idle");
    kill(Pid::from_raw(old as i32), Signal::SIGUSR2).unwrap();
    dc.wait_for(
        || exited(old),
        "the old imap-idle to exit",
        Duration::from_secs(20),
    );
    let new = Link::connect(&dc.stats_socket, Role::Admin)
        .expect("successor")
        .peer_pid();
    let _reaped = Reaped(new);
    assert_ne!(new, old);
    let log = dc.log();
    assert!(
        log.contains(&format!("handed 3 connections to successor pid {new}")),
        "{log}"
    );
    // Each came with what it watches: a copy of the notify fd we kept
    // for its mailbox, or (as root, which may reopen by handle) the
    // paths of the inodes we watch for it.
    let adopted = format!("parked from pid {old} (");
    let watching = log
        .lines()
        .filter(|l| l.contains(&adopted) && (l.contains("notify fd") || !l.contains("(0 watches")));
    assert_eq!(watching.count(), 3, "{log}");
    let s = dc.stats();
    assert_eq!((s.parked, s.taken_over), (3, 3), "{s:?}");
    let woken = s.wake_done + s.wake_bad_done + s.wake_input + s.wake_changed + s.wake_shutdown;
    assert_eq!(woken, 0, "{s:?}");
    // Keepalives (every 3 s here) keep coming from the successor.
    for c in &mut clients {
        let (line, took) = c.expect("Still here");
        assert!(took < Duration::from_secs(4), "{line:?} after {took:?}");
    }
    // New mail still wakes every client, through imap-master, and each
    // restored imap process ends IDLE normally.
    for (u, c) in users.iter().zip(&mut clients) {
        dc.deliver(u, "1.msg");
        let (line, took) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n");
        assert!(took < Duration::from_secs(3), "{u}: EXISTS after {took:?}");
        c.send("DONE\r\n");
        let lines = c.until_tagged("c");
        assert!(
            lines.last().unwrap().starts_with("c OK Idle completed"),
            "{lines:?}"
        );
    }
    assert_eq!(dc.stats().returned, 3);
}
