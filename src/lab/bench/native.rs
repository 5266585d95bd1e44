//! The native stack under load: imap-idle, imap-tracker and the reference
//! login and mail processes, driven by `load`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::figures::Figures;
use super::park_rate::raw_park_rate;
use super::{from_reports, say, Sizes, DONE_RATE};
use crate::lab::load::{Delivery, Load, LoadOptions};
use crate::lab::rig::native::{NativeOptions, NativeStack, PASSWORD};
use crate::lab::rig::procfs;

/// Clients per user, as on a server where people have a few devices.
const PER_USER: usize = 10;

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

/// Parked connections, fds and memory of the daemon at one size.
struct Size {
    pss_kb: u64,
    fds: usize,
    inotify: usize,
}

fn measure(pid: u32) -> Size {
    Size {
        fds: procfs::settled_fds(pid),
        pss_kb: procfs::pss_kb(pid),
        inotify: procfs::inotify_instances(pid),
    }
}

pub fn run(bin: &Path, s: &Sizes, progress: bool) -> Result<Figures, String> {
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
        ..NativeOptions::default()
    };
    let stack = NativeStack::start(bin, &opts)?;
    let idle_pid = stack.idle.id();
    let settle = Duration::from_secs(600);

    say(&format!("native: {} idle clients, parked after 1 s", s.n1));
    let t = Instant::now();
    let mut a = Load::connect(&load_opts(
        stack.port,
        s.n1,
        accounts("a", users_a),
        progress,
    ))?;
    stack.wait_parked(a.idle() as u64, settle)?;
    let mut park_secs = t.elapsed().as_secs_f64();
    let small = measure(idle_pid);

    say(&format!(
        "native: {} more, {} of them on one mailbox",
        s.n - s.n1,
        s.mass_k
    ));
    let t = Instant::now();
    let b = Load::connect(&load_opts(
        stack.port,
        bulk - s.n1,
        accounts("b", users_b),
        progress,
    ))?;
    let mass_account = vec![("mass".to_owned(), PASSWORD.to_owned())];
    let mut c = Load::connect(&load_opts(stack.port, s.mass_k, mass_account, progress))?;
    // Clients that failed to get idle are reported; the rest must park.
    let idle = (a.idle() + b.idle() + c.idle()) as u64;
    stack.wait_parked(idle, settle)?;
    park_secs += t.elapsed().as_secs_f64();
    let large = measure(idle_pid);
    let grown = (s.n - s.n1) as f64;
    f.parked = idle as usize;
    f.park_secs = Some(park_secs);
    f.pss_kb = Some(large.pss_kb);
    f.bytes_per_conn = Some((large.pss_kb as f64 - small.pss_kb as f64) * 1024.0 / grown);
    f.fds_per_conn = Some((large.fds as f64 - small.fds as f64) / grown);
    f.inotify_per_conn = Some((large.inotify as f64 - small.inotify as f64) / grown);

    say(&format!(
        "native: watching the idle daemon's wake-ups for {:.0} s",
        s.idle_window.as_secs_f64()
    ));
    let before = procfs::wakeups(idle_pid);
    std::thread::sleep(s.idle_window);
    let after = procfs::wakeups(idle_pid);
    f.wakeup_window_secs = s.idle_window.as_secs_f64();
    f.wakeups_per_sec = Some((after - before) as f64 / f.wakeup_window_secs);

    let maildir = Delivery::Maildir(format!("{}/%u/Maildir", stack.mail_root.display()));
    say(&format!(
        "native: {} deliveries, {PER_USER} clients per user",
        s.deliveries
    ));
    a.deliver(&maildir, s.deliveries, 100.0)?;
    a.wait_exists(Duration::from_secs(60));
    f.wake_ms = stack
        .stats()?
        .wake_us
        .iter()
        .map(|&u| u as f64 / 1000.0)
        .collect();
    say(&format!(
        "native: one delivery to a mailbox {} parked clients watch",
        s.mass_k
    ));
    // The mass clients have been parked all along; wait until the wave of
    // restores from the deliveries above has parked again.
    stack.wait_parked(idle, settle)?;
    c.deliver(&maildir, 1, 0.0)?;
    c.wait_exists(Duration::from_secs(60));

    let reports = [a.finish_paced(DONE_RATE), b.hang_up(), c.hang_up()];
    from_reports(&mut f, &reports, s.mass_k);
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
    f.server_bytes_per_client = Some(mail_process_bytes(bin, s.ref_clients, progress)?);
    Ok(f)
}

/// PSS growth per idle client of the reference mail process when it keeps
/// its clients (parking off), between two sizes.
fn mail_process_bytes(bin: &Path, (n1, n2): (usize, usize), progress: bool) -> Result<f64, String> {
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
    let rest = accounts("r", users).split_off(n1.div_ceil(PER_USER));
    let second = Load::connect(&load_opts(stack.port, n2 - n1, rest, progress))?;
    std::thread::sleep(Duration::from_millis(500));
    let large = procfs::pss_kb(pid);
    drop((first, second));
    Ok((large as f64 - small as f64) * 1024.0 / (n2 - n1) as f64)
}
