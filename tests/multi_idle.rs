//! Several imap-idle daemons behind one tracker: the mail process spreads
//! its parks over them, a full daemon's refusal sends the client to the
//! next, `who` shows which daemon holds each parked connection, and a
//! delivery wakes the clients in every daemon, each back with its EXISTS.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use imap_idle::lab::serve::maildir;
use util::imap::Imap;
use util::stack::{Options, Stack, PASSWORD};

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// Clients per user.
const EACH: usize = 4;
/// Daemon 0 is small, so that it fills up while the others have room.
const MAX_PARKED: [usize; 3] = [2, 6, 6];

fn idle_client(s: &Stack, user: &str) -> Imap {
    let mut c = Imap::connect(s.port);
    c.ok("a", &format!("LOGIN {user} {PASSWORD}"));
    c.ok("b", "SELECT INBOX");
    c.idle("c");
    c
}

/// `who` rows that are parked, as pid -> count, and the connection ids.
fn parked_by_daemon(s: &Stack) -> (BTreeMap<u32, usize>, BTreeSet<String>) {
    let mut by_pid = BTreeMap::new();
    let mut conns = BTreeSet::new();
    for line in s.who(None).lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[2] != "imap-idle" || f[4] != "parked" {
            continue;
        }
        let pid: u32 = f[3].parse().expect("a pid in the PROCESS column");
        *by_pid.entry(pid).or_insert(0) += 1;
        conns.insert(f[1].to_owned());
    }
    (by_pid, conns)
}

#[test]
fn three_daemons_share_the_parks_and_all_are_woken() {
    let s = Stack::start(Options {
        idles: 3,
        idle_max_parked: &MAX_PARKED,
        ..Options::default()
    });
    let pids = s.idle_pids();
    assert_eq!(pids.len(), 3);
    let n = USERS.len() * EACH;
    assert!(
        n > MAX_PARKED[0] && n > MAX_PARKED[1],
        "more than one daemon holds"
    );
    let mut clients: Vec<(&str, Imap)> = Vec::new();
    for _ in 0..EACH {
        for u in USERS {
            clients.push((u, idle_client(&s, u)));
        }
    }
    s.wait_parked(n as u64, Duration::from_secs(15));

    // Spread over the three; the small one full, and its refusal made the
    // mail process try the next daemon instead of keeping the client.
    let per: Vec<_> = s.idle_stats().expect("every daemon's stats");
    let parked: Vec<u64> = per.iter().map(|st| st.parked).collect();
    assert_eq!(parked[0], MAX_PARKED[0] as u64, "{parked:?}");
    assert!(parked.iter().all(|&p| p > 0), "{parked:?}");
    assert!(per[0].refused >= 1, "daemon 0 refused none: {:?}", per[0]);
    let mail = s.log("mail-0.log");
    assert!(
        mail.contains("refused or could not be reached"),
        "the mail process never passed a client on:\n{mail}"
    );
    assert!(!mail.contains("not parked"), "a client was kept:\n{mail}");

    // `who` lists every parked connection with the daemon that holds it.
    let (by_pid, conns) = parked_by_daemon(&s);
    assert_eq!(conns.len(), n, "{}", s.who(None));
    let expected: BTreeMap<u32, usize> = pids
        .iter()
        .zip(&parked)
        .map(|(&pid, &k)| (pid, k as usize))
        .collect();
    assert_eq!(by_pid, expected, "{}", s.who(None));

    // One delivery per user wakes every client, in every daemon; each
    // comes back through the tracker and gets its EXISTS.
    for u in USERS {
        maildir::deliver(&s.maildir(u), "INBOX", b"Subject: hi\r\n\r\nhello\r\n").unwrap();
    }
    for (u, c) in &mut clients {
        let (line, took) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{u}");
        assert!(took < Duration::from_secs(5), "{u}: took {took:?}");
    }
    let per = s.idle_stats().expect("every daemon's stats");
    for (i, st) in per.iter().enumerate() {
        assert_eq!(st.wake_changed, parked[i], "daemon {i}: {st:?}");
        assert_eq!(st.returned, parked[i], "daemon {i}: {st:?}");
    }
    // Every return was matched to its own daemon's entry: nothing refused,
    // no connection counted twice, and they park again.
    let tracker = s.tracker_log();
    assert!(!tracker.contains("SECURITY"), "{tracker}");
    s.wait_parked(n as u64, Duration::from_secs(15));
    let (_, again) = parked_by_daemon(&s);
    assert_eq!(again, conns, "the same connections, parked again");
    for (_, c) in &mut clients {
        c.send("DONE\r\n");
        let (line, _) = c.expect("c ");
        assert_eq!(line, "c OK Idle completed.\r\n");
    }
}
