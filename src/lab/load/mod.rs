//! `imap-idle-lab load`: hold many idle IMAP clients against any IMAP
//! server, optionally deliver mail, and report what happened.

mod client;
mod report;
mod run;
pub mod source;
pub mod worker;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub use report::{quantile, Report};
pub use run::{Delivery, Load, LoadOptions, PER_WORKER};

use crate::args::Args;

const USAGE: &str = "\
Usage: imap-idle-lab load --clients N (--users FILE | --user-pattern P
                           --user-count K) [OPTIONS]

Opens N IMAP connections (plain TCP, no TLS), each doing LOGIN, SELECT and
IDLE, and keeps them idle. Client processes are added as needed so that
none holds more than 8,000 connections (the per-process open-file limit);
past 25,000 connections to a 127.x.x.x server they come from source
addresses 127.0.0.2, 127.0.0.3, ... (one address reaches one server
address with at most about 28,000, its ephemeral ports).
Optionally delivers messages and measures, per client, the time from the
delivery to the `* N EXISTS` it receives. At the end each client sends
DONE (timed until the tagged OK) and LOGOUT. Prints a summary; exit code 0
when every client got idle and every expected EXISTS arrived, else 1.
Works against any IMAP server: Dovecot with or without hibernation, or
imap-idle-lab serve.

Options:
  --host HOST             [default: 127.0.0.1]
  --port PORT             [default: 143]
  --clients N             connections to open
  --users FILE            accounts, one per line: `user:password`, or
                          `user` with --password
  --user-pattern P        user names from a pattern, %d = 1..K
                          (e.g. user%d), with --user-count K and --password
  --user-count K          [default: 1]
  --password PW           password for --user-pattern and bare users
  --mailbox NAME          [default: INBOX]
  --connect-rate R        connections started per second [default: as fast
                          as the server takes them, at most 256 pending
                          per client process]
  --procs K               client processes [default: N / 8000, at least 1]
  --source-addrs K        bind the clients to 127.0.0.2 .. 127.0.0.(K+1) in
                          turn; 0 lets the kernel pick [default: none up to
                          25,000 clients, else N / 25,000 rounded up]
  --hold SECS             stay idle this long once all are connected
                          [default: 0]
  --deliver-maildir PAT   deliver into the Maildir PAT (%u = user name):
                          written in tmp/, renamed into new/ (the
                          time counted starts at the rename)
  --deliver-cmd CMD       deliver by running `sh -c CMD` (%u = user name);
                          the time counted starts before the command
  --deliveries M          messages to deliver, round-robin over the users
                          that have idle clients [default: 0]
  --deliver-rate R        deliveries per second [default: 10]
  --timeout SECS          for each step of a client (connect, LOGIN,
                          SELECT, IDLE, DONE) and for the EXISTS to arrive
                          [default: 30]
  --json FILE             also write the summary as JSON (- for stdout)
  --quiet                 no progress on stderr
";

pub fn main(args: Vec<String>) -> ExitCode {
    let (opts, plan) = match parse(Args::new(args)) {
        Ok(Some(x)) => x,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("imap-idle-lab load: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_once(&opts, &plan) {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = &plan.json {
                let json = report.json();
                let written = if path == "-" {
                    print!("{json}");
                    Ok(())
                } else {
                    std::fs::write(path, json)
                };
                if let Err(e) = written {
                    eprintln!("imap-idle-lab load: writing {path}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if report.complete() {
                println!("OK: every client idle, every expected EXISTS received");
                ExitCode::SUCCESS
            } else {
                println!(
                    "INCOMPLETE: {} clients failed, {} of {} expected EXISTS missing",
                    report.failed(),
                    report.exists_expected - report.exists_received,
                    report.exists_expected
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("imap-idle-lab load: {e}");
            ExitCode::FAILURE
        }
    }
}

pub struct Plan {
    pub hold: Duration,
    pub delivery: Option<Delivery>,
    pub deliveries: usize,
    pub deliver_rate: f64,
    pub json: Option<String>,
}

fn run_once(opts: &LoadOptions, plan: &Plan) -> Result<Report, String> {
    let mut load = Load::connect(opts)?;
    std::thread::sleep(plan.hold);
    if let Some(how) = &plan.delivery {
        if plan.deliveries > 0 && load.idle() > 0 {
            load.deliver(how, plan.deliveries, plan.deliver_rate)?;
            load.wait_exists(Duration::from_secs(opts.timeout_secs));
        }
    }
    Ok(load.finish())
}

fn parse(mut args: Args) -> Result<Option<(LoadOptions, Plan)>, String> {
    let mut o = LoadOptions::default();
    let mut users_file = None;
    let mut pattern = None;
    let mut count = 1usize;
    let mut password = None;
    let mut clients = None;
    let mut plan = Plan {
        hold: Duration::ZERO,
        delivery: None,
        deliveries: 0,
        deliver_rate: 10.0,
        json: None,
    };
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--host" => o.host = args.value(&flag)?,
            "--port" => o.port = args.number(&flag)?,
            "--clients" => clients = Some(args.number::<usize>(&flag)?),
            "--users" => users_file = Some(args.value(&flag)?),
            "--user-pattern" => pattern = Some(args.value(&flag)?),
            "--user-count" => count = args.number(&flag)?,
            "--password" => password = Some(args.value(&flag)?),
            "--mailbox" => o.mailbox = args.value(&flag)?,
            "--connect-rate" => o.connect_rate = args.number(&flag)?,
            "--procs" => o.procs = args.number(&flag)?,
            "--source-addrs" => o.source_addrs = Some(args.number(&flag)?),
            "--hold" => plan.hold = Duration::from_secs(args.number(&flag)?),
            "--deliver-maildir" => plan.delivery = Some(Delivery::Maildir(args.value(&flag)?)),
            "--deliver-cmd" => plan.delivery = Some(Delivery::Command(args.value(&flag)?)),
            "--deliveries" => plan.deliveries = args.number(&flag)?,
            "--deliver-rate" => plan.deliver_rate = args.number(&flag)?,
            "--timeout" => o.timeout_secs = args.number(&flag)?,
            "--json" => plan.json = Some(args.value(&flag)?),
            "--quiet" => o.progress = false,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    o.clients = clients.ok_or("--clients N is required")?;
    if o.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    o.accounts = match (users_file, pattern) {
        (Some(f), None) => read_users(Path::new(&f), password.as_deref())?,
        (None, Some(p)) => {
            let pw = password.ok_or("--user-pattern needs --password")?;
            if count == 0 {
                return Err("--user-count must be at least 1".into());
            }
            (1..=count)
                .map(|i| (p.replace("%d", &i.to_string()), pw.clone()))
                .collect()
        }
        (Some(_), Some(_)) => return Err("--users and --user-pattern exclude each other".into()),
        (None, None) => return Err("give --users FILE or --user-pattern P".into()),
    };
    if plan.deliveries > 0 && plan.delivery.is_none() {
        return Err("--deliveries needs --deliver-maildir or --deliver-cmd".into());
    }
    Ok(Some((o, plan)))
}

fn read_users(path: &Path, password: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, pw) = match line.split_once(':') {
            Some((u, p)) => (u, p.split(':').next().unwrap_or(p)),
            None => (
                line,
                password.ok_or_else(|| {
                    format!(
                        "{}:{}: no password and no --password",
                        path.display(),
                        n + 1
                    )
                })?,
            ),
        };
        out.push((user.to_owned(), pw.to_owned()));
    }
    if out.is_empty() {
        return Err(format!("{}: no accounts", path.display()));
    }
    Ok(out)
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the
/// machine, so workers' arrival times compare with our delivery times.
pub fn mono_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
