//! `imap-idle-lab dovecot-reload`: a private Dovecot with imap-idle as its
//! hibernation service, N idle clients hibernated, then `doveadm reload`.
//! Counts the clients the reload woke and the ones it lost, then checks
//! that a delivery to every user still reaches every client.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::bench::{bin_dir, PER_USER};
use super::load::{Delivery, Load, LoadOptions};
use super::rig::dovecot::{raise_inotify_instances, Dovecot, Hibernation, ServiceLimits, PASSWORD};
use crate::proto::native::Stats;

const USAGE: &str = "\
Usage: imap-idle-lab dovecot-reload [--clients N] [--shutdown-clients yes|no]

Starts a private Dovecot (needs root and dovecot-imapd) with imap-idle as
its imap-hibernate service, connects N idle clients (default 1000, ten
per user) and waits until all are hibernated, runs `doveadm reload`, and
waits 15 s (past the master's SIGTERM to the old generation, sent 6 s
after a reload with shutdown_clients = yes). Prints the clients the
reload woke (target 0 with shutdown_clients = no, the default here) and
lost (target 0), then delivers one message per user (100 a second, as the
bench does) and prints how many clients saw it, and whether the old
imap-idle exited once it held nobody.
";

pub fn main(args: Vec<String>) -> ExitCode {
    let mut args = crate::args::Args::new(args);
    let mut clients = 1000usize;
    let mut shutdown_clients = false;
    while let Some(flag) = args.next_flag() {
        let r = match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--clients" => args.number(&flag).map(|n| clients = n),
            "--shutdown-clients" => args.value(&flag).and_then(|v| match v.as_str() {
                "yes" | "no" => {
                    shutdown_clients = v == "yes";
                    Ok(())
                }
                _ => Err(format!("--shutdown-clients takes yes or no, not {v:?}")),
            }),
            _ => Err(format!("unknown argument {flag:?}")),
        };
        if let Err(e) = r {
            eprintln!("imap-idle-lab dovecot-reload: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let _ = crate::sys::limits::raise_nofile();
    match run(clients, shutdown_clients) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imap-idle-lab dovecot-reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Wakes of every kind, from the daemons' counters.
fn woken(s: &Stats) -> u64 {
    s.wake_done + s.wake_bad_done + s.wake_input + s.wake_changed + s.wake_shutdown
}

/// Clients connected per step.
const CHUNK: usize = 2000;
/// Deliveries a second after the reload (one per user).
const DELIVERY_RATE: f64 = 100.0;

fn run(n: usize, shutdown_clients: bool) -> Result<bool, String> {
    let bin = bin_dir()?;
    let names: Vec<String> = (1..=n.div_ceil(PER_USER))
        .map(|i| format!("r{i}"))
        .collect();
    raise_inotify_instances(4 * n as u64 + 1024)?;
    let limits = ServiceLimits {
        shutdown_clients: Some(shutdown_clients),
        ..ServiceLimits::default()
    };
    let dc = Dovecot::start_with(
        &names,
        Hibernation::ImapIdle,
        &bin.join("imap-idle"),
        120,
        limits,
    )?;
    // In steps, each hibernated before the next: Dovecot's imap
    // process_limit bounds the clients not yet handed off.
    let mut loads = Vec::new();
    for chunk in names.chunks(CHUNK / PER_USER) {
        let opts = LoadOptions {
            port: dc.port,
            clients: (chunk.len() * PER_USER).min(n - loads.len() * CHUNK),
            accounts: chunk
                .iter()
                .map(|u| (u.clone(), PASSWORD.to_owned()))
                .collect(),
            progress: true,
            timeout_secs: 120,
            ..LoadOptions::default()
        };
        loads.push((Load::connect(&opts)?, chunk.len()));
        let idle: usize = loads.iter().map(|(l, _)| l.idle()).sum();
        dc.wait_for(
            || dc.hibernated().is_ok_and(|h| h >= idle),
            "every client to hibernate",
            Duration::from_secs(600),
        )?;
    }
    let idle: usize = loads.iter().map(|(l, _)| l.idle()).sum();
    let before = dc.stats()?;
    let old = dc.idle_processes();
    println!(
        "{idle} clients idle, {} hibernated in {} imap-idle process(es)",
        before.parked,
        old.len()
    );
    dc.reload()?;
    std::thread::sleep(Duration::from_secs(15));
    let after = dc.stats()?;
    let woken_by_reload = woken(&after).saturating_sub(woken(&before));
    println!(
        "after doveadm reload (shutdown_clients = {}): {} hibernated, woken by the reload: {}, returned: {}",
        if shutdown_clients { "yes" } else { "no" },
        after.parked,
        woken_by_reload,
        after.returned.saturating_sub(before.returned),
    );
    let maildir = Delivery::Maildir(format!("{}/mail/%u/Maildir", dc.dir.display()));
    // Paced as the bench does: every woken client gets an imap process
    // back for a moment, and Dovecot's process_limit bounds them.
    let t = Instant::now();
    for (load, users) in &mut loads {
        load.deliver(&maildir, *users, DELIVERY_RATE)?;
    }
    let mut report = super::load::Report::default();
    for (load, _) in &mut loads {
        load.wait_exists(Duration::from_secs(300));
    }
    let lost: usize = loads.iter().map(|(l, _)| l.failed()).sum();
    let delivered_secs = t.elapsed().as_secs_f64();
    for (load, _) in loads {
        // Hung up rather than ended: a DONE to every client at once
        // would measure Dovecot's process_limit, not the reload.
        let r = load.hang_up();
        report.exists_received += r.exists_received;
        report.exists_expected += r.exists_expected;
        report.failures.extend(r.failures);
    }
    let exited = dc
        .wait_for(
            || old.iter().all(|p| !dc.idle_processes().contains(p)),
            "the old imap-idle to exit",
            Duration::from_secs(60),
        )
        .is_ok();
    println!(
        "one delivery per user ({DELIVERY_RATE}/s): {} of {} EXISTS seen in {delivered_secs:.1} s; \
         clients lost: {lost} ({} failures reported at hang-up); old imap-idle {}",
        report.exists_received,
        report.exists_expected,
        report.failed(),
        if exited { "exited once empty" } else { "still running" },
    );
    for (why, count) in &report.failures {
        println!("  {count} failed: {why}");
    }
    let ok = report.complete() && (shutdown_clients || woken_by_reload == 0);
    println!("woken {woken_by_reload}, lost {lost}");
    Ok(ok)
}
