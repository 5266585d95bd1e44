//! Dovecot's own imap-hibernate against imap-idle as Dovecot's
//! imap-hibernate service, same machine, same run: memory and fds of the
//! hibernation process and delivery-to-EXISTS latency with N idle clients.
//! Run as root with Dovecot installed: `cargo bench --bench dovecot_compare`
//! (N from DOVECOT_BENCH_CLIENTS, default 1000; sizes measured at N/5 and N;
//! DOVECOT_BENCH_ROUNDS alternates the two setups that many times, default 1).

#[path = "../tests/util/mod.rs"]
#[allow(unused_imports)]
mod util;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use util::dovecot::{raise_inotify_instances, Dovecot, Hibernation, PASSWORD};
use util::imap::Imap;

const PER_USER: usize = 10;

fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Row {
    name: &'static str,
    pss: (u64, u64),
    fds: (usize, usize),
    latencies: Vec<Duration>,
    hibernate_secs: f64,
}

fn open(
    dc: &Dovecot,
    names: &[String],
    range: std::ops::Range<usize>,
    clients: &mut Vec<(usize, Imap)>,
) {
    for i in range {
        let user = i / PER_USER;
        let mut c = Imap::login(dc.port, &names[user], PASSWORD);
        c.idle("c");
        clients.push((user, c));
    }
}

fn settle(dc: &Dovecot, process: &str) -> i32 {
    dc.wait_for(
        || dc.processes("dovecot/imap").is_empty() && !dc.processes(process).is_empty(),
        "every client to hibernate",
        Duration::from_secs(300),
    );
    std::thread::sleep(Duration::from_secs(1));
    dc.processes(process)[0]
}

fn run(name: &'static str, how: Hibernation, process: &str, n: usize) -> Row {
    let names: Vec<String> = (0..n.div_ceil(PER_USER)).map(|u| format!("u{u}")).collect();
    let dc = Dovecot::start(&names, how);
    let mut clients = Vec::with_capacity(n);
    let first = n / 5;
    open(&dc, &names, 0..first, &mut clients);
    let pid = settle(&dc, process);
    let (pss_a, fds_a) = (pss_kb(pid), Dovecot::fds(pid));
    let t = Instant::now();
    open(&dc, &names, first..n, &mut clients);
    let pid = settle(&dc, process);
    let hibernate_secs = t.elapsed().as_secs_f64();
    let (pss_b, fds_b) = (pss_kb(pid), Dovecot::fds(pid));
    // One delivery per user; each of its clients is timed when its own
    // EXISTS arrives (all of them watched at once, so the order in which
    // Dovecot restores them does not leak into the figures).
    let mut latencies = Vec::with_capacity(n);
    for (u, user) in names.iter().enumerate() {
        let mut pending: Vec<&mut Imap> = clients
            .iter_mut()
            .filter(|(cu, _)| *cu == u)
            .map(|(_, c)| c)
            .collect();
        let delivered = Instant::now();
        dc.deliver(user, "1.msg");
        while !pending.is_empty() {
            let ready: Vec<usize> = {
                let buffered: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].has_buffered())
                    .collect();
                if !buffered.is_empty() {
                    buffered
                } else {
                    let mut fds: Vec<PollFd> = pending
                        .iter()
                        .map(|c| PollFd::new(c.socket().as_fd(), PollFlags::POLLIN))
                        .collect();
                    poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
                    (0..fds.len())
                        .filter(|&i| fds[i].revents().is_some_and(|r| !r.is_empty()))
                        .collect()
                }
            };
            assert!(!ready.is_empty(), "no EXISTS within 10 s");
            let mut done = Vec::new();
            for i in ready {
                if pending[i].line().contains("EXISTS") {
                    latencies.push(delivered.elapsed());
                    done.push(i);
                }
            }
            for i in done.into_iter().rev() {
                pending.swap_remove(i);
            }
        }
    }
    Row {
        name,
        pss: (pss_a, pss_b),
        fds: (fds_a, fds_b),
        latencies,
        hibernate_secs,
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    if !util::dovecot::installed() || !nix::unistd::geteuid().is_root() {
        eprintln!("dovecot_compare: needs root and Dovecot (apt-get install dovecot-imapd)");
        std::process::exit(1);
    }
    let n: usize = std::env::var("DOVECOT_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    util::raise_fd_limit();
    raise_inotify_instances(4 * n as u64 + 1024);
    let rounds: usize = std::env::var("DOVECOT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rows = Vec::new();
    for _ in 0..rounds {
        rows.push(run(
            "Dovecot imap-hibernate",
            Hibernation::Dovecot,
            "dovecot/imap-hibernate",
            n,
        ));
        rows.push(run(
            "imap-idle --dovecot",
            Hibernation::ImapIdle,
            "dovecot/imap-idle",
            n,
        ));
    }
    let m = (n - n / 5) as f64;
    println!("dovecot_compare: {n} idle IMAP clients ({PER_USER} per user), Dovecot 2.3, same machine, same run");
    println!(
        "{:<24} {:>10} {:>12} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "hibernation process",
        "PSS kB",
        "B/client",
        "fds",
        "fds/cl",
        "EXISTS p50",
        "EXISTS p99",
        "park secs"
    );
    for r in &rows {
        let mut l = r.latencies.clone();
        l.sort();
        println!(
            "{:<24} {:>10} {:>12.0} {:>9} {:>9.2} {:>9.1}ms {:>9.1}ms {:>11.1}",
            r.name,
            r.pss.1,
            (r.pss.1 as f64 - r.pss.0 as f64) * 1024.0 / m,
            r.fds.1,
            (r.fds.1 as f64 - r.fds.0 as f64) / m,
            pct(&l, 0.5),
            pct(&l, 0.99),
            r.hibernate_secs
        );
    }
    let med = |r: &Row| {
        let mut l = r.latencies.clone();
        l.sort();
        pct(&l, 0.5)
    };
    for pair in rows.chunks(2) {
        println!(
            "EXISTS median ratio imap-idle / Dovecot: {:.2}",
            med(&pair[1]) / med(&pair[0])
        );
    }
}
