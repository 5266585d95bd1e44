//! Hand-over to a successor daemon: SIGUSR2 (or `--take-over` by hand)
//! moves every parked client to a new imap-idle, none woken, none lost;
//! and a hand-over that breaks off half-way leaves each client with
//! exactly one of the two daemons.

mod util;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use imap_idle::link::Link;
use imap_idle::proto::native::{self, Message, Park, Role, WakeReason, MAX_PACKET};
use imap_idle::sys::SeqPacket;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;

const KEEPALIVE: &str = "* OK Still here\r\n";

/// The pid of the daemon that answers on `park` (its Hello says).
fn pid_at(park: &Path) -> u32 {
    Link::connect(park, Role::Admin)
        .expect("reach the park socket")
        .peer_pid()
}

/// Kills a daemon we did not start ourselves (a successor) when the test
/// ends, however it ends.
struct Reaped(u32);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// Every line each client received, with when it came.
type Lines = Arc<Mutex<Vec<Vec<(Instant, String)>>>>;

fn read_lines(clients: &[UnixStream]) -> Lines {
    let lines: Lines = Arc::new(Mutex::new(vec![Vec::new(); clients.len()]));
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.try_clone().expect("clone client");
        c.set_read_timeout(None).expect("blocking");
        let lines = lines.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut line = Vec::new();
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    line.push(b);
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        lines.lock().unwrap()[i].push((Instant::now(), text));
                        line.clear();
                    }
                }
            }
        });
    }
    lines
}

fn park_for(user: &str, watch: &Path, keepalive_secs: u32) -> Park {
    let mut p = idle_park(user, vec![watch.to_path_buf()]);
    p.keepalive_secs = keepalive_secs;
    p
}

/// `n` clients of 5 users, each user watching its own file.
fn park_many(
    d: &Daemon,
    m: &mut Mail,
    n: usize,
    keepalive: u32,
) -> (Vec<UnixStream>, Vec<PathBuf>) {
    let files: Vec<PathBuf> = (0..5)
        .map(|u| d.dir.path().join(format!("box{u}")))
        .collect();
    for f in &files {
        std::fs::write(f, b"").expect("watched file");
    }
    let clients = (0..n)
        .map(|i| {
            m.park_ok(&park_for(
                &format!("user{}", i % 5),
                &files[i % 5],
                keepalive,
            ))
            .0
        })
        .collect();
    (clients, files)
}

#[test]
fn sigusr2_hands_every_client_over_none_woken_none_lost() {
    const N: usize = 40;
    const PARTIAL: usize = 5;
    let mut d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let mut m = Mail::connect(&d);
    let (mut clients, files) = park_many(&d, &mut m, N, 2);
    // The first few type half a DONE before the hand-over.
    for c in &mut clients[..PARTIAL] {
        c.write_all(b"DO").unwrap();
    }
    let lines = read_lines(&clients);
    wait_for(|| d.stats().keepalives >= N as u64, "a round of keepalives");
    let old = d.pid();
    let started = Instant::now();
    d.signal(Signal::SIGUSR2);
    let status = d.wait_exit(Duration::from_secs(20));
    let took = started.elapsed();
    assert!(status.success(), "old daemon: {status}; log:\n{}", d.log());
    let new = pid_at(&d.park);
    let _reaped = Reaped(new);
    assert_ne!(new, old);
    let log = d.log();
    assert!(
        log.contains(&format!("handed {N} connections to successor pid {new}")),
        "{log}"
    );
    eprintln!("hand-over of {N} took {took:?} until the old daemon exited");

    let s = d.stats();
    assert_eq!(
        (s.parked, s.taken_over, s.parks),
        (N as u64, N as u64, 0),
        "{s:?}"
    );
    let woken = s.wake_done + s.wake_bad_done + s.wake_input + s.wake_changed + s.wake_shutdown;
    assert_eq!(woken, 0, "nobody woken: {s:?}");
    t.nothing_for(Duration::from_millis(300));

    // Keepalives go on from the successor, never further apart than the
    // interval (plus scheduling slack).
    thread::sleep(Duration::from_millis(4500));
    for (i, got) in lines.lock().unwrap().iter().enumerate() {
        assert!(
            got.iter().all(|(_, l)| l == KEEPALIVE),
            "client {i}: {got:?}"
        );
        let after = got.iter().filter(|(at, _)| *at > started + took).count();
        assert!(
            after >= 2,
            "client {i}: {after} keepalives after the hand-over"
        );
        let gap = got
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        assert!(
            gap < Duration::from_millis(2600),
            "client {i}: keepalive gap {gap:?}"
        );
    }

    // The half-typed DONE completes over there.
    for c in &mut clients[..PARTIAL] {
        c.write_all(b"NE\r\n").unwrap();
    }
    for _ in 0..PARTIAL {
        let (r, _fd) = t.returned();
        assert_eq!(r.reason, WakeReason::Done, "{r:?}");
        assert!(r.input.is_empty());
    }
    // A delivery to every user still wakes each of the others.
    for f in &files {
        std::fs::OpenOptions::new()
            .append(true)
            .open(f)
            .unwrap()
            .write_all(b"x")
            .unwrap();
    }
    let mut ids = HashSet::new();
    let mut one = None;
    for _ in PARTIAL..N {
        let (r, fd) = t.returned();
        assert_eq!(r.reason, WakeReason::Changed, "{r:?}");
        assert!(ids.insert(r.id), "returned twice: {r:?}");
        one.get_or_insert((r.park.user.clone(), fd));
    }
    t.nothing_for(Duration::from_millis(300));
    // The returned descriptor is one of our clients' very sockets.
    let (_, fd) = one.unwrap();
    let mut through = UnixStream::from(fd.as_fd().try_clone_to_owned().unwrap());
    through.write_all(b"* 1 EXISTS\r\n").unwrap();
    wait_for(
        || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.iter().any(|(_, t)| t == "* 1 EXISTS\r\n"))
        },
        "a line through a returned descriptor",
    );
}

/// Plays a successor that takes the first batch and dies on the second.
fn successor_dying_after_one_batch(park: &Path) -> Vec<OwnedFd> {
    let sock = SeqPacket::connect(park, false).expect("connect");
    sock.set_recv_timeout(Some(WAIT)).unwrap();
    let hello = Message::Hello {
        role: Role::Successor,
        pid: std::process::id(),
    };
    native::send(&sock, &hello, None).unwrap();
    let mut buf = vec![0; MAX_PACKET + 1];
    let got = native::recv(&sock, &mut buf).expect("Hello");
    assert!(
        matches!(
            got.msg,
            Message::Hello {
                role: Role::Idle,
                ..
            }
        ),
        "{:?}",
        got.msg
    );
    let got = native::recv(&sock, &mut buf).expect("Listeners");
    assert!(
        matches!(got.msg, Message::Listeners { .. }),
        "{:?}",
        got.msg
    );
    assert_eq!(got.fds.len(), 1, "the park socket's listener");
    let got = native::recv(&sock, &mut buf).expect("first batch");
    let Message::Handing { batch, conns } = got.msg else {
        panic!("expected a batch, got {:?}", got.msg);
    };
    assert_eq!(got.fds.len(), conns.len(), "one descriptor per client");
    assert!(
        conns.len() <= 253,
        "at most SCM_MAX_FD descriptors a packet"
    );
    let ids = conns.iter().map(|c| c.id).collect();
    native::send(&sock, &Message::TookOver { batch, ids }, None).unwrap();
    let second = native::recv(&sock, &mut buf).expect("second batch");
    assert!(
        matches!(second.msg, Message::Handing { .. }),
        "{:?}",
        second.msg
    );
    // Dies here: the second batch is never confirmed.
    got.fds
}

#[test]
fn a_successor_dying_half_way_leaves_the_rest_with_the_old_daemon() {
    raise_fd_limit();
    const N: usize = 300;
    let d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let mut m = Mail::connect(&d);
    let (mut clients, _) = park_many(&d, &mut m, N, 0);
    let taken = successor_dying_after_one_batch(&d.park);
    let k = taken.len();
    assert!(k > 100 && k < N, "first batch {k}");
    wait_for(
        || d.log().contains(&format!("failed after {k} connections")),
        "the old daemon to see the failure",
    );
    let s = d.stats();
    assert_eq!(
        (s.parked, s.handed_over),
        ((N - k) as u64, k as u64),
        "{s:?}"
    );
    // Those it let go of got nothing from it, not even a BYE: they live on
    // with the successor (here: the test holds them).
    for c in &mut clients[..k] {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(
            c.read(&mut b).map_err(|e| e.kind()),
            Err(ErrorKind::WouldBlock)
        );
    }
    drop(taken);
    // The rest are still parked here and wake as ever.
    for c in &mut clients[k..] {
        c.write_all(b"DONE\r\n").unwrap();
    }
    let mut ids = HashSet::new();
    for _ in k..N {
        let (r, _fd) = t.returned();
        assert_eq!(r.reason, WakeReason::Done);
        assert!(ids.insert(r.id));
    }
    t.nothing_for(Duration::from_millis(300));
    // And it takes new parks again.
    let (_c, _id) = Mail::connect(&d).park_ok(&idle_park("zoe", vec![]));
    assert_eq!(d.stats().parked, 1);
}

/// `imap-idle --take-over` by hand, for the daemon `d`, with `nofile`
/// descriptors at most.
fn take_over_by_hand(d: &Daemon, nofile: u32, log: &Path) -> Child {
    Command::new("sh")
        .args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_imap-idle"))
        .arg("--runtime-dir")
        .arg(d.park.parent().unwrap())
        .args(["--log-level", "debug", "--take-over"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start a successor")
}

#[test]
fn a_successor_short_of_descriptors_takes_what_it_can_and_nothing_is_lost() {
    raise_fd_limit();
    const N: usize = 300;
    let mut d = Daemon::start(&[]);
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let mut m = Mail::connect(&d);
    let (mut clients, _) = park_many(&d, &mut m, N, 0);
    let log = d.dir.path().join("successor.log");
    let mut successor = take_over_by_hand(&d, 120, &log);
    let _reaped = Reaped(successor.id());
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(
        || text().contains("take-over from pid"),
        "the successor to finish taking over",
    );
    let said = text();
    let line = said
        .lines()
        .find(|l| l.contains("take-over from pid"))
        .unwrap();
    let taken: usize = line
        .split(": ")
        .last()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(taken > 0 && taken < N, "{line}");
    // Its first batch brought more descriptors than it had room for.
    assert!(said.contains("out of descriptors"), "{said}");
    wait_for(|| d.log().contains("we keep"), "the old daemon to see it");
    // Both still run: each holds its own share.
    assert!(
        successor.try_wait().unwrap().is_none(),
        "successor exited:\n{said}"
    );
    assert!(d.exited().is_none(), "old daemon exited");
    t.nothing_for(Duration::from_millis(300));
    // Every client wakes exactly once, from whichever daemon holds it.
    for c in &mut clients {
        c.write_all(b"DONE\r\n").unwrap();
    }
    let mut fds = Vec::new();
    for _ in 0..N {
        let (r, fd) = t.returned();
        assert_eq!(r.reason, WakeReason::Done);
        fds.push(fd);
    }
    t.nothing_for(Duration::from_millis(500));
    let mut seen = HashSet::new();
    for fd in &fds {
        let mut through = UnixStream::from(fd.as_fd().try_clone_to_owned().unwrap());
        through.write_all(b"x").unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        seen.insert(i);
    }
    assert_eq!(seen.len(), N);
}

#[test]
fn a_successor_of_another_uid_is_refused() {
    if !root_for("a_successor_of_another_uid_is_refused") {
        return;
    }
    let d = Daemon::start(&["--park-socket-mode", "0666", "--runtime-dir-mode", "0755"]);
    d.open_to_everyone();
    let t = Tracker::start(&d.tracker, Policy::Accept);
    let mut m = Mail::connect(&d);
    let (_c, _) = m.park_ok(&idle_park("alice", vec![]));
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_imap-idle"))
        .arg("--runtime-dir")
        .arg(d.park.parent().unwrap())
        .arg("--take-over")
        .output()
        .expect("run a successor as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused") && err.contains("uid 65534 may not take over"),
        "{err}"
    );
    wait_for(|| d.log().contains("SECURITY: pid="), "the refusal logged");
    assert!(
        d.log().contains("claimed the Successor role; refused"),
        "{}",
        d.log()
    );
    let s = d.stats();
    assert_eq!((s.parked, s.handed_over), (1, 0));
    t.nothing_for(Duration::from_millis(200));
}
