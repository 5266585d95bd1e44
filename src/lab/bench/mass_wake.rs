//! `imap-idle-lab mass-wake`: one delivery to a mailbox that N hibernated
//! clients watch, under a private Dovecot, with Dovecot's own
//! imap-hibernate and with imap-idle at each `--master-connections`
//! value, same machine, same run. It measures what that flag is for: how
//! many returns to put in front of Dovecot's imap-master at once.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::Args;
use crate::lab::load::{quantile, Delivery, Load, LoadOptions};
use crate::lab::rig::dovecot::{
    installed, raise_inotify_instances, Dovecot, Hibernation, ServiceLimits, PASSWORD,
};

const USAGE: &str = "\
Usage: imap-idle-lab mass-wake [--clients N] [--master-connections A,B,..] [--rounds K]

Starts a private Dovecot 2.3 (as root), connects N IDLE clients of one
user on one mailbox, waits until all are hibernated, delivers one
message, and times delivery -> `* 1 EXISTS` at every client: first with
Dovecot's own imap-hibernate, then with imap-idle --dovecot at each
--master-connections value. Prints the median and the all-woken (max)
time of each, the median of K rounds with min..max, and each median as a
fraction of Dovecot's own.

  --clients N               hibernated clients [default: 450]
  --master-connections LIST values to compare [default: 8,16,32,64,128]
  --rounds K                rounds [default: 3]
";

struct Plan {
    clients: usize,
    limits: Vec<u32>,
    rounds: usize,
}

fn parse(mut args: Args) -> Result<Option<Plan>, String> {
    let mut p = Plan {
        clients: 450,
        limits: vec![8, 16, 32, 64, 128],
        rounds: 3,
    };
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--clients" => p.clients = args.number(&flag)?,
            "--rounds" => p.rounds = args.number(&flag)?,
            "--master-connections" => {
                let v = args.value(&flag)?;
                p.limits = v
                    .split(',')
                    .map(|n| n.trim().parse::<u32>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| {
                        format!("--master-connections: {v:?} is not a list of numbers")
                    })?;
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if p.clients == 0 || p.rounds == 0 {
        return Err("--clients and --rounds must be at least 1".into());
    }
    Ok(Some(p))
}

pub fn main(args: Vec<String>) -> ExitCode {
    let plan = match super::plan_or_exit(parse(Args::new(args)), "mass-wake", USAGE) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if !nix::unistd::geteuid().is_root() || !installed() {
        eprintln!(
            "imap-idle-lab mass-wake: needs root and Dovecot (apt-get install dovecot-imapd)"
        );
        return ExitCode::FAILURE;
    }
    match run(&plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imap-idle-lab mass-wake: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One mass wake: (median, max) delivery -> EXISTS in ms.
fn once(
    bin: &Path,
    how: Hibernation,
    limits: ServiceLimits,
    n: usize,
) -> Result<(f64, f64), String> {
    let user = "mass".to_owned();
    let dc = Dovecot::start_with(
        std::slice::from_ref(&user),
        how,
        &bin.join("imap-idle"),
        120,
        limits,
    )?;
    let opts = LoadOptions {
        port: dc.port,
        clients: n,
        accounts: vec![(user, PASSWORD.to_owned())],
        timeout_secs: 120,
        ..LoadOptions::default()
    };
    let mut load = Load::connect(&opts)?;
    if load.idle() != n {
        return Err(format!("{} of {n} clients idle", load.idle()));
    }
    dc.wait_for(
        || dc.processes("dovecot/imap").is_empty() && dc.hibernated().unwrap_or(0) == n,
        "every client to hibernate",
        Duration::from_secs(300),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let maildir = Delivery::Maildir(format!("{}/mail/%u/Maildir", dc.dir.display()));
    load.deliver(&maildir, 1, 0.0)?;
    load.wait_exists(Duration::from_secs(120));
    let report = load.hang_up();
    if report.latency_ms.len() != n {
        return Err(format!(
            "{} of {n} clients saw the EXISTS",
            report.latency_ms.len()
        ));
    }
    let median = quantile(&report.latency_ms, 0.5).unwrap_or(f64::NAN);
    let max = quantile(&report.latency_ms, 1.0).unwrap_or(f64::NAN);
    Ok((median, max))
}

fn spread(v: &[f64]) -> String {
    let med = quantile(v, 0.5).unwrap_or(f64::NAN);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{med:>7.0} ({min:.0}..{max:.0})")
}

fn run(plan: &Plan) -> Result<(), String> {
    let _ = crate::sys::limits::raise_nofile();
    raise_inotify_instances(4 * plan.clients as u64 + 1024)?;
    let bin = super::bin_dir()?;
    let mut setups: Vec<(String, Hibernation, ServiceLimits)> = vec![(
        "Dovecot imap-hibernate".into(),
        Hibernation::Dovecot,
        ServiceLimits::default(),
    )];
    for &m in &plan.limits {
        let limits = ServiceLimits {
            master_connections: Some(m),
            ..ServiceLimits::default()
        };
        setups.push((
            format!("imap-idle --master-connections {m}"),
            Hibernation::ImapIdle,
            limits,
        ));
    }
    // Per setup: the medians and the maxima of every round.
    let mut got: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); setups.len()];
    for r in 0..plan.rounds {
        for (i, (name, how, limits)) in setups.iter().enumerate() {
            let (med, max) = once(&bin, *how, *limits, plan.clients)?;
            eprintln!(
                "round {}: {name}: median {med:.0} ms, all woken {max:.0} ms",
                r + 1
            );
            got[i].0.push(med);
            got[i].1.push(max);
        }
    }
    println!(
        "imap-idle-lab mass-wake: {} hibernated clients on one mailbox, one delivery; \
         {} rounds, median (min..max), ms",
        plan.clients, plan.rounds
    );
    println!(
        "{:<36} {:>20} {:>20} {:>10}",
        "setup", "median", "all woken", "vs Dovecot"
    );
    let base = quantile(&got[0].0, 0.5).unwrap_or(f64::NAN);
    for ((name, _, _), (meds, maxes)) in setups.iter().zip(&got) {
        let ratio = quantile(meds, 0.5).unwrap_or(f64::NAN) / base;
        println!(
            "{name:<36} {:>20} {:>20} {ratio:>9.2}x",
            spread(meds),
            spread(maxes)
        );
    }
    Ok(())
}
