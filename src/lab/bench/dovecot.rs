//! A private Dovecot (2.3 or 2.4) under load, with its own imap-hibernate and with
//! imap-idle as its hibernation service, same machine, same run.

use std::path::Path;
use std::time::{Duration, Instant};

use super::figures::Figures;
use super::memory::{ClientSide, Point, Size, Unparked};
use super::{say, Sizes, PER_USER};
use crate::lab::load::{Delivery, Load, LoadOptions};
use crate::lab::rig::dovecot::{
    raise_inotify_instances, Dovecot, DovecotRoot, Hibernation, ServiceLimits, PASSWORD,
};
use crate::lab::rig::procfs;
use crate::proto::native::Stats;

fn accounts(names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|u| (u.clone(), PASSWORD.to_owned()))
        .collect()
}

fn load_opts(port: u16, clients: usize, names: &[String], progress: bool) -> LoadOptions {
    LoadOptions {
        port,
        clients,
        accounts: accounts(names),
        progress,
        timeout_secs: 120,
        ..LoadOptions::default()
    }
}

/// Hibernation processes of this Dovecot, summed.
struct Holder {
    pids: Vec<i32>,
}

impl Holder {
    fn find(dc: &Dovecot, title: &str) -> Holder {
        Holder {
            pids: dc.processes(title),
        }
    }

    fn pss_kb(&self) -> u64 {
        self.pids.iter().map(|&p| procfs::pss_kb(p as u32)).sum()
    }

    fn fds(&self) -> usize {
        self.pids
            .iter()
            .map(|&p| procfs::settled_fds(p as u32))
            .sum()
    }

    fn inotify(&self) -> usize {
        self.pids
            .iter()
            .map(|&p| procfs::inotify_instances(p as u32))
            .sum()
    }

    fn wakeups(&self) -> u64 {
        self.pids.iter().map(|&p| procfs::wakeups(p as u32)).sum()
    }
}

/// Until no client is left in an imap process and the hibernation process
/// is up.
fn all_hibernated(dc: &Dovecot, title: &str, timeout: Duration) -> Result<(), String> {
    dc.wait_for(
        || dc.processes("dovecot/imap").is_empty() && !dc.processes(title).is_empty(),
        "every client to hibernate",
        timeout,
    )?;
    // The last hand-offs settle.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn measure(dc: &Dovecot, title: &str, loads: &[&Load]) -> Size {
    let h = Holder::find(dc, title);
    let parked = hibernated(dc);
    Size {
        parked,
        pss_kb: h.pss_kb(),
        fds: h.fds(),
        inotify: h.inotify(),
        point: Point::take(parked, loads, &server_pids(dc)),
    }
}

/// Every process of this Dovecot: its master and everything below it.
fn server_pids(dc: &Dovecot) -> Vec<u32> {
    let master = dc.master_pid() as u32;
    std::iter::once(master)
        .chain(procfs::descendants(master))
        .collect()
}

/// Clients the hibernation processes hold, counted (see
/// [`Dovecot::hibernated`]); 0 when that cannot be read.
fn hibernated(dc: &Dovecot) -> usize {
    dc.hibernated().unwrap_or(0)
}

/// Bulk clients are connected in this many steps, for the memory curve.
const STEPS: usize = 4;

#[allow(clippy::too_many_arguments)]
pub fn run(
    bin: &Path,
    root: &DovecotRoot,
    how: Hibernation,
    name: &str,
    title: &str,
    s: &Sizes,
    client: &ClientSide,
    progress: bool,
) -> Result<Figures, String> {
    let mut f = Figures {
        name: name.into(),
        ..Figures::default()
    };
    let ours = matches!(how, Hibernation::ImapIdle | Hibernation::ImapIdleCap);
    raise_inotify_instances(4 * s.n as u64 + 1024)?;
    let bulk = s.n - s.mass_k;
    let names: Vec<String> = (1..=bulk.div_ceil(PER_USER))
        .map(|i| format!("u{i}"))
        .collect();
    let split = s.n1.div_ceil(PER_USER);
    let mut all = names.clone();
    all.push("mass".into());
    // Dovecot's default keepalive interval, as in our native runs.
    let idle = bin.join("imap-idle");
    let dc = Dovecot::start_in(root, &all, how, &idle, 120, ServiceLimits::default())?;
    let settle = Duration::from_secs(600);

    say(&format!("{name}: {} idle clients", s.n1));
    let t = Instant::now();
    let mut a = Load::connect(&load_opts(dc.port, s.n1, &names[..split], progress))?;
    all_hibernated(&dc, title, settle)?;
    let mut park_secs = t.elapsed().as_secs_f64();
    let small = measure(&dc, title, &[&a]);
    let mut points = vec![small.point];

    say(&format!(
        "{name}: {} more in {STEPS} steps, then {} on one mailbox",
        bulk - s.n1,
        s.mass_k
    ));
    let t = Instant::now();
    let rest = &names[split..];
    let mut left = bulk - s.n1;
    let mut bulk_loads: Vec<Load> = Vec::new();
    for chunk in rest.chunks(rest.len().div_ceil(STEPS).max(1)) {
        let clients = (chunk.len() * PER_USER).min(left);
        left -= clients;
        bulk_loads.push(Load::connect(&load_opts(
            dc.port, clients, chunk, progress,
        ))?);
        all_hibernated(&dc, title, settle)?;
        let loads: Vec<&Load> = std::iter::once(&a).chain(&bulk_loads).collect();
        points.push(Point::take(hibernated(&dc), &loads, &server_pids(&dc)));
    }
    let mass = vec!["mass".to_owned()];
    let mut c = Load::connect(&load_opts(dc.port, s.mass_k, &mass, progress))?;
    all_hibernated(&dc, title, settle)?;
    park_secs += t.elapsed().as_secs_f64();
    let loads: Vec<&Load> = std::iter::once(&a).chain(&bulk_loads).chain([&c]).collect();
    let large = measure(&dc, title, &loads);
    points.push(large.point);
    f.daemons = Holder::find(&dc, title).pids.len();
    f.sizes(&small, &large, &points, client);
    f.park_secs = Some(park_secs);

    say(&format!(
        "{name}: watching the idle hibernation process for {:.0} s",
        s.idle_window.as_secs_f64()
    ));
    let h = Holder::find(&dc, title);
    let before = h.wakeups();
    std::thread::sleep(s.idle_window);
    f.wakeup_window_secs = s.idle_window.as_secs_f64();
    let per = h.pids.len().max(1) as f64;
    f.wakeups_per_sec = Some((h.wakeups() - before) as f64 / f.wakeup_window_secs / per);

    let maildir = Delivery::Maildir(format!("{}/mail/%u/Maildir", dc.dir.display()));
    say(&format!(
        "{name}: {} deliveries, {PER_USER} clients per user",
        s.deliveries
    ));
    // Each imap-idle process's counters, in the same order each time.
    let each = || -> Result<Vec<Stats>, String> {
        Ok(dc.stats_each()?.into_iter().map(|(_, s)| s).collect())
    };
    let s0 = if ours { Some(each()?) } else { None };
    a.deliver(&maildir, s.deliveries, 100.0)?;
    a.wait_exists(Duration::from_secs(60));
    let s1 = if ours { Some(each()?) } else { None };
    say(&format!(
        "{name}: one delivery to a mailbox {} hibernated clients watch",
        s.mass_k
    ));
    all_hibernated(&dc, title, settle)?;
    let s2 = if ours { Some(each()?) } else { None };
    c.deliver(&maildir, 1, 0.0)?;
    c.wait_exists(Duration::from_secs(120));
    if let (Some(s0), Some(s1), Some(s2), Some(s3)) = (s0, s1, s2, ours.then(each).transpose()?) {
        f.wakes((&s0, &s1), (&s2, &s3));
    }
    f.end_loads(a, bulk_loads, c, s.mass_k);
    Ok(f)
}

/// Dovecot with nothing hibernated, at two sizes: PSS of its imap
/// processes per idle client, the machine's server side per client, and
/// the memory curve.
pub fn unhibernated(
    bin: &Path,
    root: &DovecotRoot,
    (n1, n2): (usize, usize),
    client: &ClientSide,
    progress: bool,
) -> Result<Unparked, String> {
    let names: Vec<String> = (1..=n2.div_ceil(PER_USER))
        .map(|i| format!("u{i}"))
        .collect();
    // Every imap process inside IDLE holds an inotify instance.
    raise_inotify_instances(2 * n2 as u64 + 1024)?;
    let idle = bin.join("imap-idle");
    let off = Hibernation::Off;
    let dc = Dovecot::start_in(root, &names, off, &idle, 120, ServiceLimits::default())?;
    let imap_kb = || -> u64 {
        dc.processes("dovecot/imap")
            .iter()
            .map(|&p| procfs::pss_kb(p as u32))
            .sum()
    };
    let split = n1.div_ceil(PER_USER);
    let first = Load::connect(&load_opts(dc.port, n1, &names[..split], progress))?;
    std::thread::sleep(Duration::from_secs(1));
    let (kb1, p1) = (
        imap_kb(),
        Point::take(first.idle(), &[&first], &server_pids(&dc)),
    );
    let second = Load::connect(&load_opts(dc.port, n2 - n1, &names[split..], progress))?;
    std::thread::sleep(Duration::from_secs(1));
    let p2 = Point::take(
        first.idle() + second.idle(),
        &[&first, &second],
        &server_pids(&dc),
    );
    let kb2 = imap_kb();
    drop((first, second));
    Ok(Unparked::between((kb1, kb2), p1, p2, client))
}
