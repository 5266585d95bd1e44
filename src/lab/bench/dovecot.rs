//! A private Dovecot 2.3 under load, with its own imap-hibernate and with
//! imap-idle as its hibernation service, same machine, same run.

use std::path::Path;
use std::time::{Duration, Instant};

use super::figures::Figures;
use super::{from_reports, say, Sizes, DONE_RATE};
use crate::lab::load::{Delivery, Load, LoadOptions};
use crate::lab::rig::dovecot::{raise_inotify_instances, Dovecot, Hibernation, PASSWORD};
use crate::lab::rig::procfs;

const PER_USER: usize = 10;

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

pub fn run(
    bin: &Path,
    how: Hibernation,
    name: &str,
    title: &str,
    s: &Sizes,
    progress: bool,
) -> Result<Figures, String> {
    let mut f = Figures {
        name: name.into(),
        ..Figures::default()
    };
    let ours = matches!(how, Hibernation::ImapIdle);
    raise_inotify_instances(4 * s.n as u64 + 1024)?;
    let bulk = s.n - s.mass_k;
    let names: Vec<String> = (1..=bulk.div_ceil(PER_USER))
        .map(|i| format!("u{i}"))
        .collect();
    let split = s.n1.div_ceil(PER_USER);
    let mut all = names.clone();
    all.push("mass".into());
    // Dovecot's default keepalive interval, as in our native runs.
    let dc = Dovecot::start(&all, how, &bin.join("imap-idle"), 120)?;
    let settle = Duration::from_secs(600);

    say(&format!("{name}: {} idle clients", s.n1));
    let t = Instant::now();
    let mut a = Load::connect(&load_opts(dc.port, s.n1, &names[..split], progress))?;
    all_hibernated(&dc, title, settle)?;
    let mut park_secs = t.elapsed().as_secs_f64();
    let h = Holder::find(&dc, title);
    let (pss1, fds1, ino1) = (h.pss_kb(), h.fds(), h.inotify());

    say(&format!(
        "{name}: {} more, {} of them on one mailbox",
        s.n - s.n1,
        s.mass_k
    ));
    let t = Instant::now();
    let b = Load::connect(&load_opts(dc.port, bulk - s.n1, &names[split..], progress))?;
    let mass = vec!["mass".to_owned()];
    let mut c = Load::connect(&load_opts(dc.port, s.mass_k, &mass, progress))?;
    all_hibernated(&dc, title, settle)?;
    park_secs += t.elapsed().as_secs_f64();
    let h = Holder::find(&dc, title);
    let (pss2, fds2, ino2) = (h.pss_kb(), h.fds(), h.inotify());
    let grown = (s.n - s.n1) as f64;
    f.parked = s.n;
    f.park_secs = Some(park_secs);
    f.pss_kb = Some(pss2);
    f.bytes_per_conn = Some((pss2 as f64 - pss1 as f64) * 1024.0 / grown);
    f.fds_per_conn = Some((fds2 as f64 - fds1 as f64) / grown);
    f.inotify_per_conn = Some((ino2 as f64 - ino1 as f64) / grown);

    say(&format!(
        "{name}: watching the idle hibernation process for {:.0} s",
        s.idle_window.as_secs_f64()
    ));
    let before = h.wakeups();
    std::thread::sleep(s.idle_window);
    f.wakeup_window_secs = s.idle_window.as_secs_f64();
    f.wakeups_per_sec = Some((h.wakeups() - before) as f64 / f.wakeup_window_secs);

    let maildir = Delivery::Maildir(format!("{}/mail/%u/Maildir", dc.dir.display()));
    say(&format!(
        "{name}: {} deliveries, {PER_USER} clients per user",
        s.deliveries
    ));
    a.deliver(&maildir, s.deliveries, 100.0)?;
    a.wait_exists(Duration::from_secs(60));
    if ours {
        f.wake_ms = dc
            .stats()?
            .wake_us
            .iter()
            .map(|&u| u as f64 / 1000.0)
            .collect();
    }
    say(&format!(
        "{name}: one delivery to a mailbox {} hibernated clients watch",
        s.mass_k
    ));
    all_hibernated(&dc, title, settle)?;
    c.deliver(&maildir, 1, 0.0)?;
    c.wait_exists(Duration::from_secs(120));

    let reports = [a.finish_paced(DONE_RATE), b.hang_up(), c.hang_up()];
    from_reports(&mut f, &reports, s.mass_k);
    Ok(f)
}

/// PSS of Dovecot's imap processes per idle client when nothing
/// hibernates, bytes.
pub fn imap_process_bytes(bin: &Path, clients: usize, progress: bool) -> Result<f64, String> {
    let names: Vec<String> = (1..=clients.div_ceil(PER_USER))
        .map(|i| format!("u{i}"))
        .collect();
    let dc = Dovecot::start(&names, Hibernation::Off, &bin.join("imap-idle"), 120)?;
    let load = Load::connect(&load_opts(dc.port, clients, &names, progress))?;
    std::thread::sleep(Duration::from_secs(1));
    let kb: u64 = dc
        .processes("dovecot/imap")
        .iter()
        .map(|&p| procfs::pss_kb(p as u32))
        .sum();
    drop(load);
    Ok(kb as f64 * 1024.0 / clients as f64)
}
