//! What a parked connection costs the daemon: heap (PSS growth between two
//! sizes, divided by the difference) and descriptors, plus the park rate.
//! Run with `cargo bench --bench park_memory` (release build). Sizes can be
//! changed with PARK_BENCH_FROM / PARK_BENCH_TO.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imap_idle::link;
use imap_idle::mail::{IdleLink, Parking};
use imap_idle::proto::state::SessionState;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pss_kb(pid: u32) -> u64 {
    let rollup =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("read smaps_rollup");
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Pss line")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count()
}

/// A realistic session: each user its own Maildir with two watched paths.
fn state(home: &Path, i: usize) -> SessionState {
    let maildir = home.join(format!("u{i}"));
    let new = maildir.join("new");
    let log = maildir.join("dovecot.index.log");
    std::fs::create_dir_all(&new).expect("maildir");
    std::fs::write(&log, b"").expect("index log");
    SessionState {
        user: format!("user{i}"),
        mailbox: "INBOX".into(),
        mailbox_guid: (i as u128).to_le_bytes(),
        uidvalidity: 1_700_000_000,
        examined: false,
        highest_modseq: 1234 + i as u64,
        recent_uids: vec![],
        searchres: None,
        keywords_md5: [0x11; 16],
        watch: vec![new, log],
        tag: format!("A{:04}", i % 10_000),
        keepalive_secs: 120,
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Figures {
    pss_kb: (u64, u64),
    fds: (usize, usize),
    watches: u64,
    parks_per_sec: f64,
}

/// Park `to` connections, `per_mailbox` of them per user and mailbox, and
/// measure between `from` and `to`.
fn scenario(home: &Path, from: usize, to: usize, per_mailbox: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let run: PathBuf = dir.path().join("run");
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_imap-idle"))
            .arg("--runtime-dir")
            .arg(&run)
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start imap-idle"),
    );
    let pid = daemon.0.id();
    let park_socket = run.join("park");
    let start = Instant::now();
    while link::stats(&park_socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let states: Vec<SessionState> = (0..to.div_ceil(per_mailbox))
        .map(|i| state(home, i))
        .collect();
    let mut idle = IdleLink::connect(&park_socket).expect("connect");
    let mut clients = Vec::with_capacity(to);
    let mut park = |range: std::ops::Range<usize>| {
        for i in range {
            let m = i / per_mailbox;
            let (client, server) = UnixStream::pair().expect("socketpair");
            let parking = Parking::idle(&format!("user{m}"), [7; 16], &states[m]);
            if let Err(kept) = idle.park(OwnedFd::from(server), &parking) {
                panic!("park refused: {kept}");
            }
            clients.push(client);
        }
    };
    let settle = || {
        let s = link::stats(&park_socket).expect("stats");
        std::thread::sleep(Duration::from_millis(300));
        s
    };
    park(0..from);
    settle();
    let (pss_from, fds_from) = (pss_kb(pid), fds(pid));
    let t = Instant::now();
    park(from..to);
    let elapsed = t.elapsed();
    let stats = settle();
    assert_eq!(stats.parked as usize, to, "everything parked");
    Figures {
        pss_kb: (pss_from, pss_kb(pid)),
        fds: (fds_from, fds(pid)),
        watches: stats.watches,
        parks_per_sec: (to - from) as f64 / elapsed.as_secs_f64(),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let from = env_usize("PARK_BENCH_FROM", 1_000);
    let to = env_usize("PARK_BENCH_TO", 10_000);
    imap_idle::sys::limits::raise_nofile().expect("raise fd limit");
    let home = tempfile::tempdir().expect("tempdir");
    let blob = state(home.path(), 0).park_blob().len();
    println!(
        "imap-idle park_memory: PSS and fds of the daemon, {from} -> {to} parked, \
         {blob}-byte state blob, 2 watched paths per mailbox"
    );
    println!(
        "{:<40} {:>10} {:>10} {:>9} {:>8} {:>10}",
        "scenario", "B/conn", "fds/conn", "watches", "PSS kB", "parks/s"
    );
    let n = (to - from) as f64;
    for (name, per_mailbox) in [
        ("every connection its own user+mailbox", 1),
        ("4 connections per user+mailbox", 4),
        ("all connections on one user+mailbox", to),
    ] {
        let f = scenario(home.path(), from, to, per_mailbox);
        println!(
            "{:<40} {:>10.0} {:>10.3} {:>9} {:>8} {:>10.0}",
            name,
            (f.pss_kb.1 - f.pss_kb.0) as f64 * 1024.0 / n,
            (f.fds.1 - f.fds.0) as f64 / n,
            f.watches,
            f.pss_kb.1,
            f.parks_per_sec
        );
    }
}
