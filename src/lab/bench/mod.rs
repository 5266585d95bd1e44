//! `imap-idle-lab bench`: start everything, drive it with `load`, and
//! print one table of what imap-idle costs and how fast it is, beside
//! Dovecot's own imap-hibernate when asked.

mod dovecot;
mod figures;
mod native;
pub mod park_rate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::lab::rig::dovecot::{installed, Hibernation};
pub use figures::Figures;

const USAGE: &str = "\
Usage: imap-idle-lab bench [--quick] [--dovecot] [--clients N]

Starts imap-idle, imap-tracker and the reference login and mail processes
(from the directory of this binary: build them all first, e.g. with
`cargo build --release`), holds N idle IMAP clients with `load` (10 per
user) until they are all parked, and measures: memory (PSS growth between
N/5 and N), fds and inotify instances per parked connection, time to park
them, park rate straight into the daemon, the daemon's own wake latency,
delivery -> EXISTS at the client, DONE -> OK, one delivery to a mailbox K
parked clients watch, and the idle daemon's wake-ups per second. Prints
one table and checks the targets.

  --quick       about 1,000 clients; under a minute
  --clients N   parked connections [default: what the open-file limit
                allows one daemon, about 19,000 with a limit of 20,000]
  --dovecot     also run a private Dovecot 2.3 twice, same sizes (at most
                what 2 fds per client allow): once with its own
                imap-hibernate, once with imap-idle as its hibernation
                service. Needs root and Dovecot (apt-get install
                dovecot-imapd).
  --quiet       no progress on stderr

Exit code 0 when every client was parked and woken as expected (missed
targets are reported, not failed); 1 otherwise.
";

pub struct Sizes {
    /// Parked connections at the larger size.
    pub n: usize,
    /// The smaller size the memory slope starts from.
    pub n1: usize,
    /// Clients on the one mailbox of the mass wake.
    pub mass_k: usize,
    pub deliveries: usize,
    pub idle_window: Duration,
    pub raw_parks: usize,
    /// Sizes for the reference mail process holding clients itself.
    pub ref_clients: (usize, usize),
}

impl Sizes {
    fn quick(n: usize) -> Sizes {
        Sizes {
            n,
            n1: n / 5,
            mass_k: (n / 10).max(1),
            deliveries: (n / 50).max(1),
            idle_window: Duration::from_secs(5),
            raw_parks: 2000,
            ref_clients: (100, 500),
        }
    }

    fn full(n: usize) -> Sizes {
        Sizes {
            n,
            n1: n / 5,
            mass_k: (n / 20).clamp(1, 1000),
            deliveries: (n / 100).clamp(1, 200),
            idle_window: Duration::from_secs(30),
            raw_parks: 8000,
            ref_clients: (500, 2000),
        }
    }
}

/// DONEs per second when timing DONE -> OK (on the first N/5 clients; the
/// others just hang up): clients typing now and then, not a stampede of
/// thousands at once, which would measure queueing in Dovecot.
pub const DONE_RATE: f64 = 100.0;

/// What the three loads of a run (timed DONE, bulk, mass wake) saw.
pub fn from_reports(f: &mut Figures, reports: &[crate::lab::load::Report; 3], mass_k: usize) {
    let [timed, _, mass] = reports;
    f.exists_ms = timed.latency_ms.clone();
    f.exists_expected = timed.exists_expected;
    f.done_ms = timed.done_ms.clone();
    f.mass_k = mass_k;
    f.mass_ms = mass.latency_ms.clone();
    f.failures = merge_failures(reports);
    f.keepalives = reports.iter().map(|r| r.keepalives).sum();
    f.failed = reports.iter().map(|r| r.failed()).sum();
}

/// The failure reasons of several loads, most common first.
pub fn merge_failures(reports: &[crate::lab::load::Report]) -> Vec<(String, usize)> {
    let mut all: Vec<(String, usize)> = Vec::new();
    for (why, n) in reports.iter().flat_map(|r| r.failures.iter()) {
        match all.iter_mut().find(|(w, _)| w == why) {
            Some((_, m)) => *m += n,
            None => all.push((why.clone(), *n)),
        }
    }
    all.sort_by_key(|f| std::cmp::Reverse(f.1));
    all
}

/// Progress on stderr.
pub fn say(line: &str) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("bench: {line}");
    }
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Parked connections one daemon can hold here, rounded down to 1,000.
fn default_size(fds_per_client: u64) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(_, hard)| hard);
    // The daemon keeps a reserve of 1/16 of its limit (at most 576) for
    // its own sockets; stay a little under what is left.
    let usable = limit.saturating_sub((limit / 16).clamp(32, 576) + 200) / fds_per_client;
    ((usable / 1000) * 1000).max(1000) as usize
}

fn bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding myself: {e}"))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for b in ["imap-idle", "imap-tracker"] {
        if !dir.join(b).exists() {
            return Err(format!(
                "{b} is not beside {} (build every binary first: cargo build --release)",
                exe.display()
            ));
        }
    }
    Ok(dir)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(_, hard)| hard);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "{cpus} CPUs, {mem_gib:.0} GiB, Linux {}, open-file limit {limit}",
        kernel.trim()
    )
}

pub fn main(args: Vec<String>) -> ExitCode {
    let mut args = Args::new(args);
    let mut quick = false;
    let mut with_dovecot = false;
    let mut clients: Option<usize> = None;
    while let Some(flag) = args.next_flag() {
        let r: Result<(), String> = match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--quick" => {
                quick = true;
                Ok(())
            }
            "--dovecot" => {
                with_dovecot = true;
                Ok(())
            }
            "--quiet" => {
                QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            "--clients" => args.number(&flag).map(|n| clients = Some(n)),
            _ => Err(format!("unknown argument {flag:?}")),
        };
        if let Err(e) = r {
            eprintln!("imap-idle-lab bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if clients.is_some_and(|n| n < 20) {
        eprintln!("imap-idle-lab bench: --clients must be at least 20");
        return ExitCode::from(2);
    }
    if with_dovecot && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "imap-idle-lab bench: --dovecot needs root: it starts a private Dovecot, whose \
             master runs as root to start imap processes as the mail user; run it as root, \
             or leave out --dovecot to bench our own stack as any user"
        );
        return ExitCode::FAILURE;
    }
    if with_dovecot && !installed() {
        eprintln!("imap-idle-lab bench: --dovecot needs Dovecot: apt-get install dovecot-imapd");
        return ExitCode::FAILURE;
    }
    match run(quick, with_dovecot, clients) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imap-idle-lab bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(true) when every client was parked and woken as expected.
fn run(quick: bool, with_dovecot: bool, clients: Option<usize>) -> Result<bool, String> {
    let _ = crate::sys::limits::raise_nofile();
    let bin = bin_dir()?;
    // A bar per load only on a terminal; logs get our own lines.
    let progress = !QUIET.load(std::sync::atomic::Ordering::Relaxed)
        && nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    let sizes = |n: usize| {
        if quick {
            Sizes::quick(n)
        } else {
            Sizes::full(n)
        }
    };
    let n = clients.unwrap_or(if quick { 1000 } else { default_size(1) });
    let started = Instant::now();
    let mut rows = vec![native::run(&bin, &sizes(n), progress)?];
    if with_dovecot {
        // Under Dovecot every parked client holds 2 fds.
        let nd = clients
            .unwrap_or(if quick { 1000 } else { default_size(2) })
            .min(default_size(2));
        let reference = dovecot::imap_process_bytes(&bin, 50, progress)?;
        for (how, name, title) in [
            (
                Hibernation::Dovecot,
                "Dovecot imap-hibernate",
                "dovecot/imap-hibernate",
            ),
            (
                Hibernation::ImapIdle,
                "imap-idle --dovecot",
                "dovecot/imap-idle",
            ),
        ] {
            let mut f = dovecot::run(&bin, how, name, title, &sizes(nd), progress)?;
            f.server_bytes_per_client = Some(reference);
            rows.push(f);
        }
    }
    println!(
        "imap-idle-lab bench{}{}: {} idle IMAP clients, 10 per user; same machine, same run ({:.0} s)",
        if quick { " --quick" } else { "" },
        if with_dovecot { " --dovecot" } else { "" },
        n,
        started.elapsed().as_secs_f64()
    );
    println!("machine: {}", machine());
    println!();
    print!("{}", figures::table(&rows));
    for r in rows.iter().filter(|r| !r.failures.is_empty()) {
        println!("why clients failed ({}):", r.name);
        for (why, n) in r.failures.iter().take(5) {
            println!("  {n:>6}  {why}");
        }
    }
    println!();
    println!("targets:");
    print!("{}", figures::targets(&rows));
    let complete = rows.iter().all(|r| {
        r.failed == 0 && r.exists_ms.len() == r.exists_expected && r.mass_ms.len() == r.mass_k
    });
    if complete {
        println!("OK: every client was parked, and woken by its delivery");
    } else {
        println!("INCOMPLETE: some clients failed or missed their EXISTS (see the table)");
    }
    Ok(complete)
}
