//! The native stack under load: imap-idle, imap-tracker and the reference
//! login and mail processes, driven by `load`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::figures::Figures;
use super::memory::{ClientSide, Point, Size, Unparked};
use super::park_rate::raw_park_rate;
use super::{say, Sizes, PER_USER};
use crate::lab::load::{Delivery, Load, LoadOptions};
use crate::lab::rig::native::{NativeOptions, NativeStack, PASSWORD};
use crate::lab::rig::procfs;

fn accounts(prefix: &str, users: usize) -> Vec<(String, String)> {
    (1..=users)
        .map(|i| (format!("{prefix}{i}"), PASSWORD.to_owned()))
        .collect()
}

fn load_opts(
    port: u16,
    clients: usize,
    accounts: Vec<(String, String)>,
    progress: bool,
) -> LoadOptions {
    LoadOptions {
        port,
        clients,
        accounts,
        progress,
        timeout_secs: 120,
        ..LoadOptions::default()
    }
}

/// Load `k` of a run with `total` clients: past what one source address
/// can open to one server (the ephemeral ports), each load gets its own.
fn from_source(o: LoadOptions, k: usize, total: usize) -> LoadOptions {
    if total <= crate::lab::load::source::PER_SOURCE {
        return o;
    }
    LoadOptions {
        source_addrs: Some(1),
        source_skip: k,
        ..o
    }
}

/// Every process of the stack's server side: the daemons, the tracker
/// and what it spawned, the login process, and the mail processes.
fn server_pids(stack: &NativeStack) -> Vec<u32> {
    let tracker = stack.tracker.id();
    let mut pids = stack.idle_pids();
    pids.push(tracker);
    pids.extend(procfs::descendants(tracker));
    pids.push(stack.login_pid());
    pids.extend(stack.mails.iter().map(std::process::Child::id));
    pids
}

fn measure(stack: &NativeStack, loads: &[&Load]) -> Size {
    let pids = stack.idle_pids();
    let parked = stack.parked() as usize;
    Size {
        parked,
        fds: pids.iter().map(|&p| procfs::settled_fds(p)).sum(),
        pss_kb: pids.iter().map(|&p| procfs::pss_kb(p)).sum(),
        inotify: pids.iter().map(|&p| procfs::inotify_instances(p)).sum(),
        point: Point::take(parked, loads, &server_pids(stack)),
    }
}

/// Bulk clients are connected in this many steps, for the memory curve.
const STEPS: usize = 4;

/// The native stack with `s.n` clients, spread over `daemons` imap-idle
/// processes of at most `per_daemon` parked connections each.
pub fn run(
    bin: &Path,
    s: &Sizes,
    (daemons, per_daemon): (usize, usize),
    client: &ClientSide,
    progress: bool,
) -> Result<Figures, String> {
    let mut f = Figures {
        name: "imap-idle (native)".into(),
        ..Figures::default()
    };
    let bulk = s.n - s.mass_k;
    let users_a = s.n1.div_ceil(PER_USER);
    let users_b = (bulk - s.n1).div_ceil(PER_USER);
    let mut users: Vec<(String, u32)> = accounts("a", users_a)
        .into_iter()
        .chain(accounts("b", users_b))
        .map(|(u, _)| (u, 0))
        .collect();
    users.push(("mass".into(), 0));
    let opts = NativeOptions {
        spawn: true,
        mails: 0,
        park_after: 1,
        users,
        capacity: 4000,
        log_level: "warn".into(),
        idles: daemons,
        idle_max_parked: if daemons > 1 {
            vec![per_daemon; daemons]
        } else {
            Vec::new()
        },
        ..NativeOptions::default()
    };
    let stack = NativeStack::start(bin, &opts)?;
    let idle_pids = stack.idle_pids();
    let settle = Duration::from_secs(600);

    say(&format!("native: {} idle clients, parked after 1 s", s.n1));
    let t = Instant::now();
    let source = |o, k| from_source(o, k, s.n);
    let mut a = Load::connect(&source(
        load_opts(stack.port, s.n1, accounts("a", users_a), progress),
        0,
    ))?;
    stack.wait_parked(a.idle() as u64, settle)?;
    let mut park_secs = t.elapsed().as_secs_f64();
    let small = measure(&stack, &[&a]);
    let mut points = vec![small.point];

    say(&format!(
        "native: {} more in {STEPS} steps, then {} on one mailbox",
        bulk - s.n1,
        s.mass_k
    ));
    let t = Instant::now();
    let mut bulk_loads: Vec<Load> = Vec::new();
    let b_accounts = accounts("b", users_b);
    let per_step = users_b.div_ceil(STEPS);
    let mut left = bulk - s.n1;
    for chunk in b_accounts.chunks(per_step.max(1)) {
        let clients = (chunk.len() * PER_USER).min(left);
        left -= clients;
        let o = load_opts(stack.port, clients, chunk.to_vec(), progress);
        bulk_loads.push(Load::connect(&source(o, 1 + bulk_loads.len()))?);
        let idle: usize = a.idle() + bulk_loads.iter().map(Load::idle).sum::<usize>();
        stack.wait_parked(idle as u64, settle)?;
        let loads: Vec<&Load> = std::iter::once(&a).chain(&bulk_loads).collect();
        points.push(Point::take(
            stack.parked() as usize,
            &loads,
            &server_pids(&stack),
        ));
    }
    let mass_account = vec![("mass".to_owned(), PASSWORD.to_owned())];
    let o = load_opts(stack.port, s.mass_k, mass_account, progress);
    let mut c = Load::connect(&source(o, 1 + bulk_loads.len()))?;
    // Clients that failed to get idle are reported; the rest must park.
    let idle = (a.idle() + bulk_loads.iter().map(Load::idle).sum::<usize>() + c.idle()) as u64;
    stack.wait_parked(idle, settle)?;
    park_secs += t.elapsed().as_secs_f64();
    let loads: Vec<&Load> = std::iter::once(&a).chain(&bulk_loads).chain([&c]).collect();
    let large = measure(&stack, &loads);
    points.push(large.point);
    f.daemons = idle_pids.len();
    // Divide by what was parked, not by what was planned.
    f.sizes(&small, &large, &points, client);
    f.park_secs = Some(park_secs);

    say(&format!(
        "native: watching the idle daemon's wake-ups for {:.0} s",
        s.idle_window.as_secs_f64()
    ));
    let wakeups = || idle_pids.iter().map(|&p| procfs::wakeups(p)).sum::<u64>();
    let before = wakeups();
    std::thread::sleep(s.idle_window);
    let after = wakeups();
    f.wakeup_window_secs = s.idle_window.as_secs_f64();
    // Per daemon: each sleeps on its own, and the target is one daemon's.
    let per = idle_pids.len().max(1) as f64;
    f.wakeups_per_sec = Some((after - before) as f64 / f.wakeup_window_secs / per);

    let maildir = Delivery::Maildir(format!("{}/%u/Maildir", stack.mail_root.display()));
    say(&format!(
        "native: {} deliveries, {PER_USER} clients per user",
        s.deliveries
    ));
    let s0 = stack.idle_stats()?;
    a.deliver(&maildir, s.deliveries, 100.0)?;
    a.wait_exists(Duration::from_secs(60));
    let s1 = stack.idle_stats()?;
    say(&format!(
        "native: one delivery to a mailbox {} parked clients watch",
        s.mass_k
    ));
    // The mass clients have been parked all along; wait until the wave of
    // restores from the deliveries above has parked again.
    stack.wait_parked(idle, settle)?;
    let s2 = stack.idle_stats()?;
    c.deliver(&maildir, 1, 0.0)?;
    c.wait_exists(Duration::from_secs(60));
    let s3 = stack.idle_stats()?;
    f.wakes((&s0, &s1), (&s2, &s3));
    f.end_loads(a, bulk_loads, c, s.mass_k);
    drop(stack);

    say(&format!(
        "native: {} parks straight into a fresh daemon",
        s.raw_parks
    ));
    f.park_rate = Some(raw_park_rate(bin, s.raw_parks)?);
    say(&format!(
        "native: reference mail process holding {} then {} idle clients itself",
        s.ref_clients.0, s.ref_clients.1
    ));
    let u = mail_process_bytes(bin, s.ref_clients, client, progress)?;
    f.server_bytes_per_client = Some(u.pss);
    f.machine_server_per_client = u.machine;
    f.memory_curve_unparked = u.curve;
    Ok(f)
}

/// PSS growth per idle client of the reference mail process when it keeps
/// its clients (parking off), between two sizes; the whole machine's
/// server side too, and its curve.
fn mail_process_bytes(
    bin: &Path,
    (n1, n2): (usize, usize),
    client: &ClientSide,
    progress: bool,
) -> Result<Unparked, String> {
    let users = n2.div_ceil(PER_USER);
    let opts = NativeOptions {
        mails: 1,
        park_after: 0,
        users: accounts("r", users)
            .into_iter()
            .map(|(u, _)| (u, 0))
            .collect(),
        capacity: (n2 + 100) as u32,
        log_level: "warn".into(),
        ..NativeOptions::default()
    };
    let stack = NativeStack::start(bin, &opts)?;
    let pid = stack.mails[0].id();
    let first = Load::connect(&load_opts(
        stack.port,
        n1,
        accounts("r", n1.div_ceil(PER_USER)),
        progress,
    ))?;
    std::thread::sleep(Duration::from_millis(500));
    let small = procfs::pss_kb(pid);
    let p1 = Point::take(first.idle(), &[&first], &server_pids(&stack));
    let rest = accounts("r", users).split_off(n1.div_ceil(PER_USER));
    let second = Load::connect(&load_opts(stack.port, n2 - n1, rest, progress))?;
    std::thread::sleep(Duration::from_millis(500));
    let large = procfs::pss_kb(pid);
    let p2 = Point::take(
        first.idle() + second.idle(),
        &[&first, &second],
        &server_pids(&stack),
    );
    drop((first, second));
    Ok(Unparked::between((small, large), p1, p2, client))
}
