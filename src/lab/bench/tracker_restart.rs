//! `imap-idle-lab tracker-restart`: what a crash of the tracker costs the
//! clients parked behind it. Parks N real IMAP clients in our stack, kills
//! the tracker with SIGKILL, starts it again, and wakes every client: by
//! a delivery to each user (every client must see its EXISTS) and then by
//! DONE (every client must get its IDLE's OK). Prints the clients lost
//! (target 0) and how long after the kill wakes were taken again. The
//! clients are spread over load worker processes, as in the bench.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::lab::load::{Delivery, Load, LoadOptions};
use crate::lab::rig::native::{NativeOptions, NativeStack, PASSWORD};

const USAGE: &str = "\
Usage: imap-idle-lab tracker-restart [--clients N] [--per-user K]

Starts our stack (imap-idle, imap-tracker, the reference login and mail
processes, from the directory of this binary) in a private directory,
parks N idle IMAP clients (K per user), kills imap-tracker with SIGKILL
and starts it again. Then delivers one message to every user and waits
for every client's EXISTS, and ends every IDLE with DONE. Prints the
clients lost (no EXISTS, or no OK to DONE; the target is 0) and the
times from the kill: until the new tracker listens, until it knows every
parked client again, until the mail processes have registered again,
and until every client has seen its EXISTS (delivered once they have).

  --clients N    idle clients [default: 500]
  --per-user K   clients per user [default: 10]
";

pub fn main(args: Vec<String>) -> ExitCode {
    let mut args = Args::new(args);
    let (mut clients, mut per_user) = (500usize, 10usize);
    while let Some(flag) = args.next_flag() {
        let parsed = match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--clients" => args.number(&flag).map(|n| clients = n),
            "--per-user" => args.number(&flag).map(|n| per_user = n),
            _ => Err(format!("unknown argument {flag:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("imap-idle-lab tracker-restart: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let _ = crate::sys::limits::raise_nofile();
    match run(clients.max(1), per_user.max(1)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imap-idle-lab tracker-restart: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run the scenario; the number of clients lost.
fn run(clients: usize, per_user: usize) -> Result<usize, String> {
    let bin = super::bin_dir()?;
    let users = clients.div_ceil(per_user);
    let names: Vec<String> = (1..=users).map(|i| format!("t{i}")).collect();
    let opts = NativeOptions {
        users: names.iter().map(|u| (u.clone(), 0)).collect(),
        capacity: (clients + 100) as u32,
        log_level: "info".into(),
        ..NativeOptions::default()
    };
    let mut stack = NativeStack::start(&bin, &opts)?;
    let load_opts = LoadOptions {
        port: stack.port,
        clients,
        accounts: names.iter().map(|u| (u.clone(), PASSWORD.into())).collect(),
        timeout_secs: 120,
        progress: false,
        ..LoadOptions::default()
    };
    let mut load = Load::connect(&load_opts)?;
    let idle = load.idle();
    stack.wait_parked(idle as u64, Duration::from_secs(60 + clients as u64 / 100))?;
    println!("{idle} of {clients} clients idle and parked ({users} users)");

    let killed = Instant::now();
    stack.restart_tracker()?;
    let listening = killed.elapsed();
    let known = wait_known(&stack, idle, Duration::from_secs(60));
    stack.wait_mails_rejoined(Duration::from_secs(30))?;
    let rejoined = killed.elapsed();
    let maildir = format!("{}/%u/Maildir", stack.mail_root.display());
    load.deliver(&Delivery::Maildir(maildir), users, 0.0)?;
    load.wait_exists(Duration::from_secs(60 + clients as u64 / 100));
    let woken = killed.elapsed();
    let report = load.finish();
    let no_exists = report.exists_expected - report.exists_received.min(report.exists_expected);
    let no_done = report.idle.saturating_sub(report.done_ms.len());
    let refused = stack
        .tracker_log()
        .matches("wrong or unknown cookie")
        .count();
    let lost = no_exists.max(no_done) + report.failed();
    println!("tracker killed (SIGKILL) and started again:");
    println!("  listening again after      {:>8.1} ms", ms(listening));
    match known {
        Some(t) => println!("  all {idle} parked known again {:>8.1} ms", ms(t - killed)),
        None => println!("  not all {idle} parked clients known again within 60 s"),
    }
    println!("  mail processes registered  {:>8.1} ms", ms(rejoined));
    println!("  every EXISTS delivered by  {:>8.1} ms", ms(woken));
    println!(
        "woken by a delivery: {} of {} EXISTS seen; by DONE: {} of {} answered OK",
        report.exists_received,
        report.exists_expected,
        report.done_ms.len(),
        report.idle
    );
    println!("returns refused for their cookie: {refused}");
    println!("clients lost: {lost}");
    Ok(lost)
}

/// When the new tracker knew `n` parked clients again, from its log (its
/// own count of what imap-idle re-reported).
fn wait_known(stack: &NativeStack, n: usize, timeout: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let known: usize = stack
            .tracker_log()
            .lines()
            .filter_map(|l| l.split_once(" parked connections known again"))
            .filter_map(|(before, _)| before.rsplit(' ').next()?.parse::<usize>().ok())
            .sum();
        if known >= n {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
