//! The native system end to end with real processes and a real IMAP
//! client: login -> tracker -> mail process -> imap-idle -> tracker ->
//! mail process.

mod util;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use imap_idle::lab::serve::maildir;
use imap_idle::proto::native::{self, Message, Park, Return, Role, WakeReason, MAX_PACKET};
use imap_idle::sys::SeqPacket;
use util::imap::Imap;
use util::stack::{tcp_sockets_of, Options, Stack, PASSWORD};
use util::wait_for;

fn idle_client(s: &Stack, user: &str, mailbox: &str) -> Imap {
    let mut c = Imap::connect(s.port);
    c.ok("a", &format!("LOGIN {user} {PASSWORD}"));
    c.ok("b", &format!("SELECT {mailbox}"));
    c.idle("c");
    c
}

#[test]
fn delivery_wakes_a_parked_client_and_done_ends_idle() {
    let s = Stack::start(Options::default());
    let mail_pid = s.mails[0].id();
    let mut c = idle_client(&s, "alice", "INBOX");
    assert_eq!(tcp_sockets_of(mail_pid), 1, "the mail process serves it");
    s.wait_parked(1, Duration::from_secs(5));
    wait_for(
        || tcp_sockets_of(mail_pid) == 0,
        "the mail process to let go of the client",
    );
    let who = s.who(Some("alice"));
    assert!(who.contains("parked") && who.contains("INBOX"), "{who}");

    maildir::deliver(
        &s.maildir("alice"),
        "INBOX",
        b"Subject: hi\r\n\r\nhello\r\n",
    )
    .unwrap();
    let (line, took) = c.expect("EXISTS");
    assert_eq!(line, "* 1 EXISTS\r\n");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    c.expect("* 1 RECENT");
    c.send("DONE\r\n");
    let (line, _) = c.expect("c ");
    assert_eq!(line, "c OK Idle completed.\r\n");
    let fetched = c.ok("d", "FETCH 1 (FLAGS UID)");
    assert!(
        fetched[0].starts_with("* 1 FETCH (UID 1 FLAGS (\\Recent))"),
        "{fetched:?}"
    );
    // Parks again, and DONE alone brings it back too.
    c.idle("e");
    s.wait_parked(1, Duration::from_secs(5));
    c.send("DONE\r\n");
    assert_eq!(c.expect("e ").0, "e OK Idle completed.\r\n");
    c.ok("f", "LOGOUT");
    wait_for(
        || !s.who(Some("alice")).contains("alice"),
        "alice's connection to be forgotten",
    );
}

#[test]
fn expunge_while_parked_reaches_the_client() {
    let s = Stack::start(Options::default());
    let root = s.maildir("bob");
    for body in [&b"a"[..], b"b", b"c"] {
        maildir::deliver(&root, "INBOX", body).unwrap();
    }
    let mut c = Imap::connect(s.port);
    c.ok("a", &format!("LOGIN bob {PASSWORD}"));
    let sel = c.ok("b", "SELECT INBOX");
    assert!(sel.contains(&"* 3 EXISTS\r\n".to_owned()), "{sel:?}");
    c.idle("c");
    s.wait_parked(1, Duration::from_secs(5));
    // Another client's expunge of message 2, done directly in the Maildir.
    let second = std::fs::read_dir(root.join("cur"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .nth(1)
        .unwrap();
    std::fs::remove_file(root.join("cur").join(second)).unwrap();
    assert_eq!(c.expect("EXPUNGE").0, "* 2 EXPUNGE\r\n");
    c.send("DONE\r\n");
    c.expect("c OK");
    let f = c.ok("d", "FETCH 1:* (UID)");
    assert_eq!(f.len(), 3, "two messages left: {f:?}");
    assert!(f[1].contains("UID 3"), "{f:?}");
}

#[test]
fn a_mailbox_deleted_while_parked_ends_with_bye() {
    let s = Stack::start(Options::default());
    let root = s.maildir("carol");
    maildir::deliver(&root, "Archive", b"x").unwrap();
    let mut c = idle_client(&s, "carol", "Archive");
    s.wait_parked(1, Duration::from_secs(5));
    std::fs::remove_dir_all(root.join(".Archive")).unwrap();
    let mut lines = Vec::new();
    while let Some(l) = c.next_line() {
        lines.push(l);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("* BYE") && l.contains("Archive")),
        "{lines:?}"
    );
    wait_for(|| !s.who(None).contains("carol"), "carol to be forgotten");
}

/// user -> the set of processes holding their connections.
fn placement(s: &Stack) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (user, process, _) in s.who_rows() {
        out.entry(user).or_default().insert(process);
    }
    out
}

fn three_by_three(s: &Stack) -> Vec<Imap> {
    let mut clients = Vec::new();
    for user in ["alice", "bob", "carol"] {
        for _ in 0..3 {
            let mut c = Imap::connect(s.port);
            c.ok("a", &format!("LOGIN {user} {PASSWORD}"));
            c.ok("b", "SELECT INBOX");
            clients.push(c);
        }
    }
    clients
}

/// Three mail processes under `policy`, three users with three idle
/// connections each; where they landed.
fn placed_by(
    policy: &str,
    users: &[(&str, u32)],
) -> (Stack, HashMap<String, BTreeSet<String>>, Vec<Imap>) {
    let s = Stack::start(Options {
        policy,
        mails: 3,
        park_after: 0,
        users,
        ..Options::default()
    });
    let clients = three_by_three(&s);
    let p = placement(&s);
    (s, p, clients)
}

#[test]
fn each_routing_policy_places_connections_as_promised() {
    // Uids other than ours need root; 0 stands for ours.
    let users = if nix::unistd::geteuid().is_root() {
        [("alice", 1000), ("bob", 1000), ("carol", 2000)]
    } else {
        [("alice", 0), ("bob", 0), ("carol", 0)]
    };
    // user: one process per user, started on demand.
    let s = Stack::start(Options {
        policy: "user",
        mails: 0,
        spawn: true,
        park_after: 0,
        users: &users,
        ..Options::default()
    });
    let _c = three_by_three(&s);
    let p = placement(&s);
    let all: BTreeSet<&String> = p.values().flatten().collect();
    assert_eq!(all.len(), 3, "three processes: {p:?}\n{}", s.who(None));
    assert!(p.values().all(|set| set.len() == 1), "{p:?}");
    drop(s);

    // uid: alice and bob (uid 1000) share, carol (2000) apart. Only a
    // root-run mail process may serve other uids than its own.
    if util::root_for("the uid policy over uids 1000 and 2000") {
        let (s, p, _c) = placed_by("uid", &users);
        assert_eq!(p["alice"], p["bob"], "{}", s.who(None));
        assert_eq!(p["alice"].len(), 1);
        assert_eq!(p["carol"].len(), 1);
        assert_ne!(p["alice"], p["carol"]);
        drop(s);
    }

    // prefer-user: each user stays together, users spread over processes.
    let (s, p, _c) = placed_by("prefer-user", &users);
    assert!(p.values().all(|set| set.len() == 1), "{}", s.who(None));
    let all: BTreeSet<&String> = p.values().flatten().collect();
    assert_eq!(all.len(), 3, "{}", s.who(None));
    let who = s.who(None);
    assert!(who.contains("3 users, 9 connections"), "{who}");
}

#[test]
fn a_returned_connection_with_a_forged_cookie_is_refused_and_logged() {
    let s = Stack::start(Options::default());
    let mut real = idle_client(&s, "alice", "INBOX");
    s.wait_parked(1, Duration::from_secs(5));
    // Pretend to be imap-idle returning someone as alice.
    let link = SeqPacket::connect(&s.run.join("tracker"), false).unwrap();
    let mut buf = vec![0; MAX_PACKET + 1];
    let hello = Message::Hello {
        role: Role::Idle,
        pid: 1,
    };
    native::send(&link, &hello, None).unwrap();
    assert!(matches!(
        native::recv(&link, &mut buf).unwrap().msg,
        Message::Hello {
            role: Role::Tracker,
            ..
        }
    ));
    let (victim, attacker_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let forged = Return {
        id: 4242,
        park: Park {
            user: "alice".into(),
            cookie: [0x55; 16],
            tag: "c".into(),
            in_idle: true,
            keepalive_secs: 0,
            watch: Vec::new(),
            state: Vec::new(),
        },
        reason: WakeReason::Input,
        input: b"x LIST \"\" *\r\n".to_vec(),
        idle_running: false,
        parked_secs: 1,
    };
    use std::os::fd::AsFd;
    native::send(&link, &Message::Return(forged), Some(victim.as_fd())).unwrap();
    assert_eq!(
        native::recv(&link, &mut buf).unwrap().msg,
        Message::Accepted { id: 4242 }
    );
    drop(victim);
    let mut got = String::new();
    use std::io::Read;
    (&attacker_end).read_to_string(&mut got).unwrap();
    assert_eq!(
        got, "* BYE Session not recognised.\r\n",
        "closed, not served"
    );
    let log = s.tracker_log();
    assert!(
        log.contains("SECURITY: user=alice") && log.contains("wrong or unknown cookie"),
        "{log}"
    );
    // The real session is untouched.
    real.send("DONE\r\n");
    real.expect("c OK Idle completed.");
    real.ok("d", "NOOP");
}

#[test]
fn killing_a_mail_process_leaves_the_counts_right() {
    let mut s = Stack::start(Options {
        mails: 2,
        park_after: 0,
        ..Options::default()
    });
    let _c = three_by_three(&s);
    let rows = s.who_rows();
    assert_eq!(rows.len(), 9);
    let victim_pid = s.mails[0].id();
    let on_victim = rows
        .iter()
        .filter(|(_, p, _)| p == &format!("mail {victim_pid}"))
        .count();
    assert!(on_victim > 0, "{}", s.who(None));
    s.kill_mail(0);
    wait_for(
        || {
            s.tracker_log().contains(&format!(
                "pid={victim_pid} is gone with {on_victim} connections"
            ))
        },
        "the tracker to notice",
    );
    let rows = s.who_rows();
    assert_eq!(rows.len(), 9 - on_victim, "{}", s.who(None));
    assert!(rows
        .iter()
        .all(|(_, p, _)| p != &format!("mail {victim_pid}")));
    // New logins still work and land on the survivor.
    let mut c = Imap::connect(s.port);
    c.ok("x", &format!("LOGIN alice {PASSWORD}"));
    assert_eq!(s.who_rows().len(), 10 - on_victim);
}

#[test]
fn x_state_moves_a_session_between_connections_of_the_same_user() {
    let s = Stack::start(Options {
        park_after: 0,
        ..Options::default()
    });
    maildir::deliver(&s.maildir("alice"), "INBOX", b"a").unwrap();
    let mut a = Imap::connect(s.port);
    a.ok("a", &format!("LOGIN alice {PASSWORD}"));
    a.ok("b", "SELECT INBOX");
    let out = a.ok("c", "X-STATE");
    let text = out[0].strip_prefix("* STATE ").unwrap().trim().to_owned();
    assert_eq!(out[1], "c OK State exported.\r\n");
    maildir::deliver(&s.maildir("alice"), "INBOX", b"b").unwrap();
    let mut b = Imap::connect(s.port);
    b.ok("a", &format!("LOGIN alice {PASSWORD}"));
    let out = b.ok("d", &format!("X-STATE {text}"));
    assert_eq!(
        out,
        [
            "* 2 EXISTS\r\n",
            "* 2 RECENT\r\n",
            "d OK State imported.\r\n"
        ]
    );
    let mut bob = Imap::connect(s.port);
    bob.ok("a", &format!("LOGIN bob {PASSWORD}"));
    bob.send(&format!("e X-STATE {text}\r\n"));
    assert!(bob.line().starts_with("e NO"));
    bob.send("f X-STATE bm9wZQ==\r\n");
    assert!(bob.line().starts_with("f NO"));
}

#[test]
fn five_hundred_idle_clients_all_parked_and_all_woken() {
    util::raise_fd_limit();
    let users: Vec<(String, u32)> = (0..50).map(|i| (format!("user{i}"), 0)).collect();
    let accounts: Vec<(&str, u32)> = users.iter().map(|(u, id)| (u.as_str(), *id)).collect();
    let s = Stack::start(Options {
        mails: 2,
        users: &accounts,
        ..Options::default()
    });
    let mut clients = Vec::new();
    for i in 0..500 {
        let user = &users[i % 50].0;
        clients.push((user.clone(), idle_client(&s, user, "INBOX")));
    }
    s.wait_parked(500, Duration::from_secs(30));
    for (user, _) in &users {
        maildir::deliver(&s.maildir(user), "INBOX", b"Subject: x\r\n\r\nx\r\n").unwrap();
    }
    for (user, c) in &mut clients {
        c.socket()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (line, _) = c.expect("EXISTS");
        assert_eq!(line, "* 1 EXISTS\r\n", "{user}");
    }
    // Everyone is idle again in a mail process or parked again; none lost.
    let rows = s.who_rows();
    assert_eq!(rows.len(), 500, "{}", s.who(None));
}
