//! imap-tracker against hostile peers. Each test first carries out an
//! attack (a mail uid posing as a login process, a peer naming ids that
//! are not its own, a return sent twice, a flood), then shows that it is
//! refused (a `SECURITY:` line or the refusal itself), that honest peers
//! are unaffected, and that the tracker holds no more descriptors than
//! before. The fake peers speak the native protocol over raw sockets;
//! attacks from another uid run this very binary as that uid
//! (`as_other_uid_helper`), so they need root.

mod util;

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use imap_idle::proto::native::{
    self, Activity, Assign, Assignment, ConnInfo, Cookie, Gone, GoneReason, Held, Incoming, Login,
    Message, Park, RecvError, Release, Return, Role, Served, WakeReason, MAX_PACKET,
};
use imap_idle::sys::SeqPacket;
use util::{wait_for, WAIT};

const NOBODY: u32 = 65534;
/// nobody's group on Debian ("nogroup").
const NOGROUP: u32 = 65534;
/// Our uid: the fake mail processes register as it, and the test users'
/// mail belongs to it, so the tests that need no other uid run as anyone.
fn me() -> u32 {
    nix::unistd::getuid().as_raw()
}

struct Tracker {
    child: Child,
    dir: tempfile::TempDir,
    baseline: usize,
}

impl Tracker {
    fn start(extra: &[&str]) -> Tracker {
        Tracker::start_in(Command::new(env!("CARGO_BIN_EXE_imap-tracker")), extra)
    }

    /// Start with both open-file limits at `nofile`.
    fn start_with_fd_limit(nofile: u32, extra: &[&str]) -> Tracker {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
            .arg(env!("CARGO_BIN_EXE_imap-tracker"));
        Tracker::start_in(cmd, extra)
    }

    fn start_in(mut cmd: Command, extra: &[&str]) -> Tracker {
        let dir = tempfile::tempdir().expect("tempdir");
        // Other uids must reach the sockets inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let child = cmd
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(["--log-level", "debug"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("spawn imap-tracker");
        let mut t = Tracker {
            child,
            dir,
            baseline: 0,
        };
        wait_for(
            || t.dir.path().join("tracker-control").exists(),
            "the tracker to listen",
        );
        t.baseline = t.settled_fds();
        t
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tracker")
    }

    fn control(&self) -> PathBuf {
        self.dir.path().join("tracker-control")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let end = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < end,
                "no {needle:?} in the tracker's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the tracker's fds")
            .count()
    }

    fn settled_fds(&self) -> usize {
        let mut last = self.fds();
        loop {
            std::thread::sleep(Duration::from_millis(150));
            let now = self.fds();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Once every peer of the test is gone, the tracker holds what it held
    /// after starting.
    fn expect_baseline_fds(&self) {
        let end = Instant::now() + WAIT;
        while self.fds() != self.baseline {
            assert!(
                Instant::now() < end,
                "the tracker holds {} fds, {} at start; log:\n{}",
                self.fds(),
                self.baseline,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `imap-tracker who`, as root.
    fn who(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_imap-tracker"))
            .arg("who")
            .arg("--control-socket")
            .arg(self.control())
            .output()
            .expect("imap-tracker who");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- imap-tracker log ---\n{}", self.log());
        }
    }
}

/// A peer speaking the native protocol over a raw socket.
struct Peer {
    sock: SeqPacket,
    buf: Vec<u8>,
}

impl Peer {
    fn open(path: &Path) -> Peer {
        let sock = SeqPacket::connect(path, false).expect("connect to the tracker");
        sock.set_recv_timeout(Some(WAIT)).expect("timeout");
        Peer {
            sock,
            buf: vec![0; MAX_PACKET + 1],
        }
    }

    /// Connected and greeted as `role`.
    fn hello(path: &Path, role: Role) -> Peer {
        let mut p = Peer::open(path);
        p.send(&Message::Hello { role, pid: 0 });
        match p.msg() {
            Message::Hello { .. } => p,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    fn send(&self, msg: &Message) {
        native::send(&self.sock, msg, None).expect("send");
    }

    fn send_fd(&self, msg: &Message, fd: BorrowedFd<'_>) {
        native::send(&self.sock, msg, Some(fd)).expect("send with fd");
    }

    fn recv(&mut self) -> Incoming {
        native::recv(&self.sock, &mut self.buf).unwrap_or_else(|e| panic!("receiving: {e}"))
    }

    fn msg(&mut self) -> Message {
        self.recv().msg
    }

    /// Nothing comes within `d`.
    fn quiet_for(&mut self, d: Duration) {
        self.sock.set_recv_timeout(Some(d)).expect("timeout");
        match native::recv(&self.sock, &mut self.buf) {
            Err(RecvError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Ok(i) => panic!("unexpected {:?}", i.msg),
            Err(e) => panic!("receiving: {e}"),
        }
        self.sock.set_recv_timeout(Some(WAIT)).expect("timeout");
    }
}

/// A mail process of `capacity`, as our uid.
fn mail(t: &Tracker, capacity: u32) -> Peer {
    let mut p = Peer::hello(&t.socket(), Role::MailProcess);
    p.send(&Message::Register {
        uid: me(),
        capacity,
    });
    assert_eq!(p.msg(), Message::Registered);
    p
}

fn assigned(mail: &mut Peer) -> (Assign, OwnedFd) {
    let i = mail.recv();
    match i.msg {
        Message::Assign(a) => (a, i.fd.expect("Assign carries the client")),
        other => panic!("expected Assign, got {other:?}"),
    }
}

fn login_msg(seq: u64, user: &str) -> Message {
    Message::Login(Login {
        seq,
        user: user.into(),
        uid: me(),
        tag: "a".into(),
        local: "127.0.0.1:143".into(),
        remote: format!("192.0.2.1:{seq}"),
        input: Vec::new(),
    })
}

/// Hand a fresh client of `user` in; the test keeps the client end.
fn hand_in(login: &Peer, seq: u64, user: &str) -> UnixStream {
    let (client, server) = UnixStream::pair().expect("socketpair");
    login.send_fd(&login_msg(seq, user), server.as_fd());
    client
}

/// A login of `user` that reaches mail process `mail`: its Assign, the
/// client end, and the mail process's end.
fn logged_in(login: &mut Peer, mail: &mut Peer, seq: u64, user: &str) -> (Assign, UnixStream) {
    let client = hand_in(login, seq, user);
    let (a, _fd) = assigned(mail);
    assert_eq!(a.user, user);
    match login.msg() {
        Message::LoginAccepted { seq: s, conn, .. } => {
            assert_eq!((s, conn), (seq, a.conn));
        }
        other => panic!("expected LoginAccepted, got {other:?}"),
    }
    (a, client)
}

/// Mail process `mail` parks `conn` as imap-idle's `idle_id`, and the
/// tracker has taken that in (imap-idle's messages come over another
/// socket and could overtake it).
fn parked(t: &Tracker, mail: &Peer, conn: u64, idle_id: u64) {
    mail.send(&Message::Released {
        conn,
        how: Release::Parked {
            idle_id,
            idle_pid: std::process::id(),
            mailbox: "INBOX".into(),
        },
    });
    // The fake imap-idle peers say pid 0: the tracker knows them by this
    // process's pid (SO_PEERCRED).
    t.wait_log(&format!(
        "conn={conn}: parked in imap-idle pid={} as id {idle_id}",
        std::process::id()
    ));
}

fn return_msg(id: u64, user: &str, cookie: Cookie) -> Message {
    Message::Return(Return {
        id,
        park: Park {
            user: user.into(),
            cookie,
            tag: "c".into(),
            in_idle: true,
            keepalive_secs: 0,
            watch: Vec::new(),
            state: vec![1, 2, 3],
        },
        reason: WakeReason::Done,
        input: Vec::new(),
        idle_running: false,
        parked_secs: 1,
    })
}

/// Nothing was written to the client (no `* BYE`).
fn untouched(client: &mut UnixStream) {
    client.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 64];
    match client.read(&mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the client got something: {other:?} {:?}", &b[..8]),
    }
}

fn security_lines(t: &Tracker) -> usize {
    t.log().matches("SECURITY: ").count()
}

/// Root, or else (unless `IMAP_IDLE_REQUIRE_ROOT=1`, which makes it a
/// failure) a skipped test.
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("IMAP_IDLE_REQUIRE_ROOT").as_deref() != Ok("1"),
        "this test needs root (IMAP_IDLE_REQUIRE_ROOT=1)"
    );
    println!("SKIPPED (needs root)");
    false
}

/// Run `act` of [`as_other_uid_helper`] as `uid`; what it answered.
fn as_uid(uid: u32, gid: u32, act: &str, path: &Path, user: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("this binary"))
        .args([
            "--exact",
            "as_other_uid_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOSTILE_ACT", act)
        .env("HOSTILE_PATH", path)
        .env("HOSTILE_USER", user)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run the helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("ANSWER: ").map(|(_, a)| a))
        .unwrap_or_else(|| panic!("the helper said nothing: {out:?}"))
        .to_owned()
}

/// Not a test: what [`as_uid`] runs as another uid. Claims a role and
/// prints the tracker's answer.
#[test]
#[ignore = "run by the other tests as another uid"]
fn as_other_uid_helper() {
    let Ok(act) = std::env::var("HOSTILE_ACT") else {
        return;
    };
    let path = PathBuf::from(std::env::var("HOSTILE_PATH").expect("path"));
    let user = std::env::var("HOSTILE_USER").expect("user");
    let role = match act.as_str() {
        "login" => Role::Login,
        "idle" => Role::Idle,
        "admin" => Role::Admin,
        _ => Role::MailProcess,
    };
    let sock = match SeqPacket::connect(&path, false) {
        Ok(s) => s,
        Err(e) => return println!("\nANSWER: connect: {e}"),
    };
    sock.set_recv_timeout(Some(WAIT)).expect("timeout");
    let mut buf = vec![0; MAX_PACKET + 1];
    let mut ask = |msg: &Message, fd: Option<BorrowedFd<'_>>| {
        native::send(&sock, msg, fd).expect("send");
        match native::recv(&sock, &mut buf) {
            Ok(i) => i.msg,
            Err(e) => Message::Error {
                reason: format!("recv: {e}"),
            },
        }
    };
    let answer = match ask(&Message::Hello { role, pid: 0 }, None) {
        Message::Hello { .. } => match act.as_str() {
            "login" => {
                let (_client, server) = UnixStream::pair().expect("socketpair");
                ask(&login_msg(1, &user), Some(server.as_fd()))
            }
            "mail" => ask(
                &Message::Register {
                    uid: nix::unistd::getuid().as_raw(),
                    capacity: 1,
                },
                None,
            ),
            "admin" => ask(&Message::WhoRequest { user: None }, None),
            _ => Message::Hello {
                role: Role::Tracker,
                pid: 0,
            },
        },
        other => other,
    };
    println!("\nANSWER: {answer:?}");
}

/// Problem 1: a mail uid can no longer take the Login role (and hand
/// over a client as any user it likes) nor the Idle role; an honest login
/// still reaches its mail process.
#[test]
fn a_mail_uid_cannot_pose_as_a_login_process_or_imap_idle() {
    if !have_root() {
        return;
    }
    let t = Tracker::start(&["--mail-uid", &NOBODY.to_string(), "--socket-mode", "0666"]);
    let mut m = mail(&t, 10);

    let answer = as_uid(NOBODY, NOGROUP, "login", &t.socket(), "bob");
    assert!(
        answer.contains("uid 65534 may not take the Login role (--login-uid)"),
        "{answer}"
    );
    t.wait_log("SECURITY: pid=");
    t.wait_log("uid=65534 claims the Login role: uid 65534 may not take the Login role");
    let answer = as_uid(NOBODY, NOGROUP, "idle", &t.socket(), "bob");
    assert!(
        answer.contains("uid 65534 may not take the Idle role (--idle-uid)"),
        "{answer}"
    );
    m.quiet_for(Duration::from_millis(200));
    // The role it has is still its own.
    let answer = as_uid(NOBODY, NOGROUP, "mail", &t.socket(), "");
    assert_eq!(answer, "Registered");

    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (a, _client) = logged_in(&mut login, &mut m, 1, "bob");
    assert!(matches!(a.how, Assignment::Login { .. }));
    drop((m, login, _client));
    t.expect_baseline_fds();
}

/// Problem 1: `who` is for root, the tracker's uid and `--admin-group`.
#[test]
fn admins_are_root_or_the_admin_group() {
    if !have_root() {
        return;
    }
    let t = Tracker::start(&[]);
    // Even a control socket opened to all keeps others out.
    std::fs::set_permissions(t.control(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = as_uid(NOBODY, NOGROUP, "admin", &t.control(), "");
    assert!(
        answer.contains("uid 65534 may not take the Admin role (--admin-group)"),
        "{answer}"
    );
    t.wait_log("uid=65534 claims the Admin role");
    drop(t);

    let t = Tracker::start(&["--admin-group", "nogroup"]);
    let answer = as_uid(NOBODY, NOGROUP, "admin", &t.control(), "");
    assert!(answer.starts_with("Who {"), "{answer}");
    assert!(t.who().contains("0 users, 0 connections"));
    t.expect_baseline_fds();
}

/// Problem 2: a mail process cannot release another's connection, nor
/// park its own under an imap-idle id that is another's; connection ids
/// cannot be guessed.
#[test]
fn a_mail_process_cannot_release_or_park_what_is_not_its_own() {
    let t = Tracker::start(&[]);
    let mut a = mail(&t, 10);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _bob_client) = logged_in(&mut login, &mut a, 1, "bob");
    let mut b = mail(&t, 10);
    let (carol, _carol_client) = logged_in(&mut login, &mut b, 2, "carol");
    assert!(
        bob.conn.abs_diff(carol.conn) > 1,
        "guessable ids: {} {}",
        bob.conn,
        carol.conn
    );
    parked(&t, &a, bob.conn, 77);

    // B tries: bob's connection, an id it made up, and its own
    // connection parked under bob's imap-idle id.
    let before = security_lines(&t);
    b.send(&Message::Released {
        conn: bob.conn,
        how: Release::Closed,
    });
    b.send(&Message::Released {
        conn: bob.conn ^ 1,
        how: Release::Closed,
    });
    b.send(&Message::Released {
        conn: carol.conn,
        how: Release::Parked {
            idle_id: 77,
            idle_pid: std::process::id(),
            mailbox: "INBOX".into(),
        },
    });
    t.wait_log(&format!(
        "release of conn={}: the connection is not this process's; refused",
        bob.conn
    ));
    t.wait_log(&format!(
        "release of conn={}: no such connection; refused",
        bob.conn ^ 1
    ));
    t.wait_log(&format!(
        "release of conn={} as parked under imap-idle pid={} id 77, which is user=bob's: \
         that imap-idle id already stands for another connection; refused",
        carol.conn,
        std::process::id()
    ));
    assert_eq!(security_lines(&t), before + 3);

    // Bob comes back as himself, to the connection he had.
    let mut idle = Peer::hello(&t.socket(), Role::Idle);
    let (mut client, server) = UnixStream::pair().unwrap();
    idle.send_fd(&return_msg(77, "bob", bob.cookie), server.as_fd());
    let (back, _fd) = assigned(&mut a);
    assert_eq!((back.conn, back.user.as_str()), (bob.conn, "bob"));
    assert!(matches!(back.how, Assignment::Restore(_)));
    assert_eq!(idle.msg(), Message::Accepted { id: 77 });
    untouched(&mut client);
    // Carol is still B's to release.
    b.send(&Message::Released {
        conn: carol.conn,
        how: Release::Closed,
    });
    wait_for(|| !t.who().contains("carol"), "carol's release to be taken");
    assert_eq!(security_lines(&t), before + 3);
    drop((a, b, login, idle, server));
    t.expect_baseline_fds();
}

/// Problem 2: a gone notice, with a cookie the sender knows, for an id
/// parked for another user used to drop that user's cookie, so their
/// parked client got `* BYE` on its way back.
#[test]
fn a_gone_notice_for_another_users_id_is_refused() {
    let t = Tracker::start(&[]);
    let mut a = mail(&t, 10);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _c1) = logged_in(&mut login, &mut a, 1, "bob");
    let (eve, _c2) = logged_in(&mut login, &mut a, 2, "eve");
    parked(&t, &a, bob.conn, 77);
    parked(&t, &a, eve.conn, 78);
    let mut idle = Peer::hello(&t.socket(), Role::Idle);
    let gone = |id, g: &Assign| {
        Message::Gone(Gone {
            id,
            user: g.user.clone(),
            cookie: g.cookie,
            reason: GoneReason::HungUp,
            detail: "test".into(),
        })
    };
    idle.send(&gone(77, &eve));
    t.wait_log("SECURITY: user=eve: imap-idle pid=");
    t.wait_log("reports id 77 gone: that imap-idle id is another user's; refused");

    // Bob's client comes back with his cookie, which still opens it.
    let (mut client, server) = UnixStream::pair().unwrap();
    idle.send_fd(&return_msg(77, "bob", bob.cookie), server.as_fd());
    let (back, _fd) = assigned(&mut a);
    assert_eq!((back.conn, back.user.as_str()), (bob.conn, "bob"));
    assert_eq!(idle.msg(), Message::Accepted { id: 77 });
    untouched(&mut client);
    // Eve's own gone notice is taken.
    idle.send(&gone(78, &eve));
    t.wait_log(&format!("user=eve conn={}: parked client gone", eve.conn));
    assert_eq!(security_lines(&t), 1);
    drop((a, login, idle, server));
    t.expect_baseline_fds();
}

/// What imap-idle and mail processes re-report after a restart
/// (`Holding`, `Serving`) counts only with the user's own cookie, from a
/// mail process only for ids that stand for nothing else: nobody brings a
/// user in or takes over another connection that way.
#[test]
fn re_reports_count_only_with_the_users_cookie() {
    let t = Tracker::start(&[]);
    let mut a = mail(&t, 10);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _c1) = logged_in(&mut login, &mut a, 1, "bob");
    let (eve, _c2) = logged_in(&mut login, &mut a, 2, "eve");
    // A second mail process, full, so that returns go to the first.
    let mut b = mail(&t, 1);
    let (_carol, _c3) = logged_in(&mut login, &mut b, 3, "carol");
    let served = |conn, user: &str, cookie| Message::Serving {
        conns: vec![Served {
            conn,
            user: user.into(),
            uid: me(),
            cookie,
        }],
        last: true,
    };
    b.send(&served(12345, "bob", eve.cookie));
    t.wait_log("serving user=bob conn=12345: the user is unknown or the cookie is not theirs");
    b.send(&served(12346, "mallory", [7; 16]));
    t.wait_log("serving user=mallory conn=12346: the user is unknown");
    b.send(&served(bob.conn, "bob", bob.cookie));
    t.wait_log(&format!(
        "serving user=bob conn={}: that id stands for another connection",
        bob.conn
    ));
    // imap-idle's report on its new link: bob's under eve's cookie is
    // refused, eve's own is taken, one more connection of hers, parked.
    let mut idle = Peer::hello(&t.socket(), Role::Idle);
    let held = |id, user: &str, cookie| Held {
        id,
        user: user.into(),
        cookie,
    };
    idle.send(&Message::Holding {
        held: vec![held(5, "bob", eve.cookie), held(6, "eve", eve.cookie)],
        last: true,
    });
    t.wait_log("reports id 5 held: the user is unknown or the cookie is not theirs; refused");
    t.wait_log("1 parked connections known again from its report");
    assert_eq!(security_lines(&t), 4);
    let who = t.who();
    assert!(
        who.contains("3 users, 4 connections: 3 active, 0 idle, 1 parked"),
        "{who}"
    );
    let (mut client, server) = UnixStream::pair().unwrap();
    idle.send_fd(&return_msg(6, "eve", eve.cookie), server.as_fd());
    // Past the `who` questions we left unanswered.
    let back = loop {
        match a.recv().msg {
            Message::Describe { .. } => continue,
            Message::Assign(back) => break back,
            other => panic!("expected Assign, got {other:?}"),
        }
    };
    assert_eq!(back.user, "eve");
    assert_ne!(
        back.conn, eve.conn,
        "not eve's connection in the mail process"
    );
    assert_eq!(idle.msg(), Message::Accepted { id: 6 });
    untouched(&mut client);
    assert_eq!(security_lines(&t), 4);
    drop((a, b, login, idle, server));
    t.expect_baseline_fds();
}

/// Problem 2: a return naming another user's parked id leaves that
/// connection alone (it used to be taken over and relabelled).
#[test]
fn a_return_under_another_users_id_leaves_that_connection_alone() {
    let t = Tracker::start(&[]);
    let mut a = mail(&t, 10);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _c1) = logged_in(&mut login, &mut a, 1, "bob");
    let (eve, _c2) = logged_in(&mut login, &mut a, 2, "eve");
    parked(&t, &a, bob.conn, 77);
    let mut idle = Peer::hello(&t.socket(), Role::Idle);
    let (_forged_client, forged) = UnixStream::pair().unwrap();
    idle.send_fd(&return_msg(77, "eve", eve.cookie), forged.as_fd());
    t.wait_log("SECURITY: user=eve: imap-idle pid=");
    t.wait_log("returns id 77: that imap-idle id is another user's; that connection is left alone");
    let (taken, _fd) = assigned(&mut a);
    assert_eq!(taken.user, "eve");
    assert_ne!(taken.conn, bob.conn, "bob's connection was taken over");
    assert_eq!(idle.msg(), Message::Accepted { id: 77 });

    let (mut client, server) = UnixStream::pair().unwrap();
    idle.send_fd(&return_msg(77, "bob", bob.cookie), server.as_fd());
    let (back, _fd) = assigned(&mut a);
    assert_eq!((back.conn, back.user.as_str()), (bob.conn, "bob"));
    assert_eq!(idle.msg(), Message::Accepted { id: 77 });
    untouched(&mut client);
    drop((a, login, idle, server, forged));
    t.expect_baseline_fds();
}

/// Problem 2: `who` rows from a mail process count only for its own
/// connections (another's could be dressed up as anything).
#[test]
fn who_rows_from_a_mail_process_count_only_for_its_own_connections() {
    let t = Tracker::start(&[]);
    let mut a = mail(&t, 10);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _c1) = logged_in(&mut login, &mut a, 1, "bob");
    let mut b = mail(&t, 10);
    let (carol, _c2) = logged_in(&mut login, &mut b, 2, "carol");
    let control = t.control();
    let who = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_imap-tracker"))
            .arg("who")
            .arg("--control-socket")
            .arg(control)
            .output()
            .expect("who")
    });
    let info = |id, user: &str, mailbox: &str| ConnInfo {
        id,
        user: user.into(),
        mailbox: mailbox.into(),
        activity: Activity::Idle,
        secs: 3,
    };
    let query = |p: &mut Peer| match p.msg() {
        Message::Describe { query, .. } => query,
        other => panic!("expected Describe, got {other:?}"),
    };
    let qa = query(&mut a);
    let qb = query(&mut b);
    a.send(&Message::Described {
        query: qa,
        conns: vec![info(bob.conn, "bob", "BobsBox")],
        last: true,
    });
    std::thread::sleep(Duration::from_millis(100));
    b.send(&Message::Described {
        query: qb,
        conns: vec![
            info(bob.conn, "bob", "Spoofed"),
            info(carol.conn, "carol", "CarolsBox"),
        ],
        last: true,
    });
    let out = who.join().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("BobsBox") && table.contains("CarolsBox"),
        "{table}"
    );
    assert!(!table.contains("Spoofed"), "{table}");
    t.wait_log("describes 1 connections that are not its own; those rows are ignored");
    drop((a, b, login));
    t.expect_baseline_fds();
}

/// Problem 3: imap-idle's link drops after a return was placed and before
/// it read `Accepted`; it sends the return again on the next link. The
/// tracker acknowledges it and does not hand the socket out a second time.
#[test]
fn a_return_sent_again_after_a_lost_link_is_not_placed_twice() {
    let t = Tracker::start(&[]);
    let mut a = mail(&t, 10);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _c) = logged_in(&mut login, &mut a, 1, "bob");
    parked(&t, &a, bob.conn, 77);
    let (mut client, server) = UnixStream::pair().unwrap();
    let first = Peer::hello(&t.socket(), Role::Idle);
    first.send_fd(&return_msg(77, "bob", bob.cookie), server.as_fd());
    let (back, fd) = assigned(&mut a);
    assert_eq!(back.conn, bob.conn);
    // The link drops with the Accepted unread; imap-idle still holds the
    // client and sends it again.
    drop(first);
    let mut second = Peer::hello(&t.socket(), Role::Idle);
    second.send_fd(&return_msg(77, "bob", bob.cookie), server.as_fd());
    assert_eq!(second.msg(), Message::Accepted { id: 77 });
    t.wait_log("user=bob: imap-idle pid=");
    t.wait_log("sent return id 77 again after we placed it; acknowledged, not placed twice");
    a.quiet_for(Duration::from_millis(300));
    // The one mail process that has it serves it.
    untouched(&mut client);
    let mut through = UnixStream::from(fd);
    std::io::Write::write_all(&mut through, b"* OK\r\n").unwrap();
    let mut got = [0u8; 6];
    client.set_nonblocking(false).unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"* OK\r\n");
    // A new return that reuses the id (imap-idle restarted) with another
    // socket is no re-send: it is placed.
    let n = t
        .log()
        .matches(&format!("conn={}: parked in", bob.conn))
        .count();
    a.send(&Message::Released {
        conn: bob.conn,
        how: Release::Parked {
            idle_id: 77,
            idle_pid: std::process::id(),
            mailbox: "INBOX".into(),
        },
    });
    wait_for(
        || {
            t.log()
                .matches(&format!("conn={}: parked in", bob.conn))
                .count()
                > n
        },
        "the second park",
    );
    let (_client2, server2) = UnixStream::pair().unwrap();
    second.send_fd(&return_msg(77, "bob", bob.cookie), server2.as_fd());
    let (again, _fd2) = assigned(&mut a);
    assert_eq!(again.conn, bob.conn);
    assert_eq!(second.msg(), Message::Accepted { id: 77 });
    drop((a, login, second, server, server2, through));
    t.expect_baseline_fds();
}

/// Problem 4: out of descriptors, the tracker pauses accepting instead of
/// spinning, and takes what queued up once it has descriptors again.
#[test]
fn out_of_descriptors_the_tracker_pauses_and_resumes() {
    util::raise_fd_limit();
    let t = Tracker::start_with_fd_limit(32, &[]);
    let mut peers = Vec::new();
    for _ in 0..40 {
        let p = Peer::open(&t.socket());
        p.send(&Message::Hello {
            role: Role::Login,
            pid: 0,
        });
        peers.push(p);
    }
    t.wait_log("(out of descriptors); pausing accepts for 100 ms");
    let cpu = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .skip(11)
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    let before = cpu(t.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu(t.child.id()) - before;
    assert!(ticks < 30, "{ticks} ticks of CPU in a second: spinning");
    // The first ones were taken; the last waits in the backlog.
    let mut last = peers.pop().unwrap();
    last.quiet_for(Duration::from_millis(200));
    let (mut taken, mut waiting): (Vec<Peer>, Vec<Peer>) = (Vec::new(), Vec::new());
    for mut p in peers {
        p.sock
            .set_recv_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match native::recv(&p.sock, &mut p.buf) {
            Ok(_) => taken.push(p),
            Err(_) => waiting.push(p),
        }
    }
    assert!(!taken.is_empty() && !waiting.is_empty());
    // Room again: everyone left is taken, with no new connection to wake it.
    drop(taken);
    drop(waiting);
    assert!(matches!(last.msg(), Message::Hello { .. }));
    drop(last);
    let mut m = mail(&t, 1);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    logged_in(&mut login, &mut m, 1, "bob");
    drop((m, login));
    t.expect_baseline_fds();
}

/// Problem 4: past `--max-peers`, a connection is told why and closed;
/// admins still get in.
#[test]
fn past_max_peers_a_connection_is_refused() {
    let t = Tracker::start(&["--max-peers", "4"]);
    let peers: Vec<Peer> = (0..4)
        .map(|_| Peer::hello(&t.socket(), Role::Login))
        .collect();
    let mut extra = Peer::open(&t.socket());
    match extra.msg() {
        Message::Error { reason } => assert_eq!(
            reason,
            "the tracker is full: 4 connections already (--max-peers)"
        ),
        other => panic!("expected Error, got {other:?}"),
    }
    t.wait_log("refusing a connection from pid=");
    t.wait_log(": 4 connections already (--max-peers)");
    assert!(t.who().contains("0 users"), "admins have their own room");
    drop(peers);
    drop(extra);
    t.expect_baseline_fds();
    let mut m = mail(&t, 1);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    logged_in(&mut login, &mut m, 1, "bob");
    drop((m, login));
    t.expect_baseline_fds();
}

/// Problem 4: past `--max-waiting`, a login or a return is refused at
/// once instead of queued; those waiting are placed when there is room.
#[test]
fn past_max_waiting_a_client_is_refused() {
    let t = Tracker::start(&["--max-waiting", "2", "--wait-secs", "60"]);
    let mut a = mail(&t, 1);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    let (bob, _c) = logged_in(&mut login, &mut a, 1, "bob");
    // A is full: two wait, the third is refused.
    let _w2 = hand_in(&login, 2, "bob");
    let _w3 = hand_in(&login, 3, "carol");
    let _w4 = hand_in(&login, 4, "dave");
    let reason = "too many clients waiting for a mail process (2, --max-waiting)";
    assert_eq!(
        login.msg(),
        Message::LoginRefused {
            seq: 4,
            reason: reason.into()
        }
    );
    t.wait_log(&format!("user=dave: refused: {reason}"));
    // A return finds the queue full too: bob parks, which lets seq 2 in,
    // seq 5 waits in its place, and bob's return is refused.
    parked(&t, &a, bob.conn, 77);
    let (placed, _fd) = assigned(&mut a);
    assert_eq!(placed.user, "bob");
    assert!(matches!(login.msg(), Message::LoginAccepted { seq: 2, .. }));
    let _w5 = hand_in(&login, 5, "erin");
    let mut idle = Peer::hello(&t.socket(), Role::Idle);
    let (_client, server) = UnixStream::pair().unwrap();
    // The queue is seen full only after seq 5 is in it.
    wait_for(
        || t.log().contains("user=erin: waiting for a mail process"),
        "erin to wait",
    );
    idle.send_fd(&return_msg(77, "bob", bob.cookie), server.as_fd());
    assert_eq!(
        idle.msg(),
        Message::Rejected {
            id: 77,
            reason: reason.into()
        }
    );
    // Room: the ones waiting go in, oldest first.
    a.send(&Message::Released {
        conn: placed.conn,
        how: Release::Closed,
    });
    let (next, _fd) = assigned(&mut a);
    assert_eq!(next.user, "carol");
    drop((a, login, idle, server));
    t.expect_baseline_fds();
}

/// Problem 4: a peer that hands clients in and never reads the answers is
/// closed once `--max-outbox` bytes wait for it; others go on.
#[test]
fn a_peer_that_does_not_read_is_closed_past_max_outbox() {
    let t = Tracker::start(&["--max-outbox", "4096", "--max-waiting", "1"]);
    let flood = Peer::open(&t.socket());
    native::send(
        &flood.sock,
        &Message::Hello {
            role: Role::Login,
            pid: 0,
        },
        None,
    )
    .unwrap();
    // No mail process: one waits, every other is refused, and the
    // refusals pile up unread.
    let mut sent = 0;
    for seq in 0..20_000 {
        let (_client, server) = UnixStream::pair().unwrap();
        if native::send(&flood.sock, &login_msg(seq, "bob"), Some(server.as_fd())).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent < 20_000, "never closed");
    t.wait_log("more than 4096 bytes of answers unread (--max-outbox); closing");
    drop(flood);
    let mut m = mail(&t, 1);
    let mut login = Peer::hello(&t.socket(), Role::Login);
    logged_in(&mut login, &mut m, 1, "bob");
    drop((m, login));
    t.expect_baseline_fds();
}
