//! Dovecot's master reloading or restarting while imap-idle holds
//! hibernated clients: nobody is woken by it, nobody is lost. Needs
//! Dovecot and root; with IMAP_IDLE_REQUIRE_DOVECOT=1 (set by CI) a missing
//! Dovecot is a failure.

mod util;

use std::time::Duration;

use util::dovecot::{available, Dovecot, Hibernation, ServiceLimits, PASSWORD};
use util::imap::Imap;

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}")).collect()
}

fn start(n: usize, shutdown_clients: Option<bool>) -> Dovecot {
    let limits = ServiceLimits {
        shutdown_clients,
        ..Default::default()
    };
    Dovecot::start_with(&users(n), Hibernation::ImapIdle, limits)
}

/// Every user's client, logged in, in IDLE, and hibernated.
fn park_all(dc: &Dovecot, n: usize) -> Vec<Imap> {
    let before = dc.hibernated();
    let clients: Vec<Imap> = users(n)
        .iter()
        .map(|u| {
            let mut c = Imap::login(dc.port, u, PASSWORD);
            c.idle("c");
            c
        })
        .collect();
    dc.wait_for(
        || dc.hibernated() == before + n,
        "every client to be hibernated",
        Duration::from_secs(20),
    );
    clients
}

/// Each client gets its new message, then ends IDLE through a restored
/// imap process.
fn deliver_and_finish(dc: &Dovecot, clients: &mut [Imap], name: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        dc.deliver(&format!("u{i}"), name);
        c.expect("EXISTS");
        c.send("DONE\r\n");
        let lines = c.until_tagged("c");
        assert!(
            lines.last().unwrap().starts_with("c OK Idle completed"),
            "{lines:?}"
        );
    }
}

fn wait_keepalive_window(dc: &Dovecot) {
    // Past Dovecot's own delays after a reload (it signals processes of
    // the old generation 6 s after, with shutdown_clients = yes), and
    // past a keepalive (3 s in the rig).
    std::thread::sleep(Duration::from_secs(8));
    let _ = dc;
}

#[test]
fn doveadm_reload_leaves_hibernated_clients_parked() {
    if !available("dovecot") {
        return;
    }
    let dc = start(4, Some(false));
    let mut clients = park_all(&dc, 3);
    let old = dc.idle_processes();
    assert_eq!(old.len(), 1);
    dc.reload().unwrap();
    wait_keepalive_window(&dc);
    let s = dc.stats();
    assert_eq!((s.parked, s.returned), (3, 0), "{s:?}\n{}", dc.log());
    assert_eq!(dc.idle_processes(), old, "the old process goes on");
    assert!(
        dc.log().contains("keeping 3 parked connections"),
        "{}",
        dc.log()
    );
    // Keepalives still come from the old process.
    clients[0].expect("* OK Still here");
    // A new client hibernates in the new generation's process.
    let mut late = Imap::login(dc.port, "u3", PASSWORD);
    late.idle("c");
    dc.wait_for(
        || dc.hibernated() == 4 && dc.idle_processes().len() == 2,
        "the new client to hibernate in a new imap-idle",
        Duration::from_secs(20),
    );
    // The old clients go back through the reloaded master when they wake.
    deliver_and_finish(&dc, &mut clients, "1.msg");
    dc.wait_for(
        || !dc.idle_processes().contains(&old[0]),
        "the old imap-idle to exit once it holds nobody",
        Duration::from_secs(10),
    );
    assert_eq!(dc.stats().parked, 1, "the new client stays parked");
}

#[test]
fn with_shutdown_clients_yes_a_reload_loses_nobody() {
    if !available("dovecot") {
        return;
    }
    // Dovecot's default. Its master (2.3, 2.4.1) SIGTERMs the old
    // generation 6 s after a reload (and SIGKILLs it 6 s later): before
    // that nobody is woken, then everyone is handed back to the new
    // generation. 2.4.5's master sends nothing: they stay parked. Either
    // way none is lost.
    let dc = start(2, None);
    let mut clients = park_all(&dc, 2);
    let old = dc.idle_processes();
    dc.reload().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dc.stats().returned, 0);
    std::thread::sleep(Duration::from_secs(11));
    if dc.log().contains("Processes aren't dying after reload") {
        // Handed back, and hibernated again in a new generation's process.
        assert!(dc.log().contains("SIGTERM: returning 2 parked connections"));
        dc.wait_for(
            || dc.hibernated() == 2 && !dc.idle_processes().contains(&old[0]),
            "both clients hibernated again in a new imap-idle",
            Duration::from_secs(20),
        );
    } else {
        let s = dc.stats();
        assert_eq!((s.parked, s.returned), (2, 0), "{s:?}");
        assert_eq!(dc.idle_processes(), old, "the old process keeps them");
    }
    deliver_and_finish(&dc, &mut clients, "1.msg");
}

#[test]
fn a_dovecot_restart_with_shutdown_clients_no_leaves_clients_parked() {
    if !available("dovecot") {
        return;
    }
    let dc = start(3, Some(false));
    let mut clients = park_all(&dc, 3);
    let old = dc.idle_processes();
    dc.stop_master().unwrap();
    wait_keepalive_window(&dc);
    assert_eq!(dc.idle_processes(), old, "imap-idle outlives the master");
    let s = dc.stats();
    assert_eq!((s.parked, s.returned), (3, 0), "{s:?}");
    clients[1].expect("* OK Still here");
    dc.start_master().unwrap();
    // Returned to the imap-master of the master running now.
    deliver_and_finish(&dc, &mut clients, "1.msg");
    dc.wait_for(
        || dc.idle_processes().is_empty(),
        "the old imap-idle to exit once it holds nobody",
        Duration::from_secs(10),
    );
}

#[test]
fn a_dovecot_stop_with_shutdown_clients_yes_hands_everyone_back() {
    if !available("dovecot") {
        return;
    }
    // As Dovecot's own imap-hibernate: everyone is handed back to
    // imap-master at once; with the master gone that fails, and the
    // clients are disconnected rather than left parked for nobody.
    let dc = start(2, None);
    let mut clients = park_all(&dc, 2);
    dc.stop_master().unwrap();
    dc.wait_for(
        || dc.idle_processes().is_empty(),
        "imap-idle to hand everyone back and exit",
        Duration::from_secs(40),
    );
    for c in &mut clients {
        while let Some(line) = c.next_line() {
            assert!(!line.contains("EXISTS"), "{line}");
        }
    }
    assert!(
        dc.log()
            .contains("Dovecot's master stopped, with shutdown_clients"),
        "{}",
        dc.log()
    );
}
