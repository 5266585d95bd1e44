//! `imap-idle-lab bench`: start everything, drive it with `load`, and
//! print one table of what imap-idle costs and how fast it is, beside
//! Dovecot's own imap-hibernate when asked.

mod dovecot;
mod figures;
pub mod mass_wake;
mod memory;
mod native;
pub mod park_rate;
mod plots;
mod table;
pub mod tracker_restart;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::lab::rig::dovecot::{installed, DovecotRoot, Hibernation};
pub use figures::Figures;

const USAGE: &str = "\
Usage: imap-idle-lab bench [--quick] [--dovecot] [--dovecot-root DIR]...
                           [--clients N] [--rounds K] [--plots DIR]

Starts imap-idle, imap-tracker and the reference login and mail processes
(from the directory of this binary: build them all first, e.g. with
`cargo build --release`), holds N idle IMAP clients with `load` (10 per
user) until they are all parked, and measures: memory per parked
connection (user-space PSS growth, and the whole machine's growth with the
client side subtracted), fds and inotify instances per parked connection,
time to park them, park rate straight into the daemon, the daemon's own
wake latency (paced deliveries and the mass wake apart), delivery ->
EXISTS at the client (the clock starts at the rename into new/), DONE ->
OK (paced, and under load), one delivery to a mailbox K parked clients
watch, and the idle daemon's wake-ups per second. Every figure is the
median of K rounds with its min..max. Prints one table and checks the
targets. Runs as any user; --dovecot needs root.

  --quick       about 1,000 clients, one round; under a minute
  --clients N   parked connections [default: what the open-file limit
                allows one daemon, about 19,000 with a limit of 20,000]
  --rounds K    run everything K times [default: 3, or 1 with --quick]
  --plots DIR   also write SVG plots there: memory against connections,
                and latency CDFs
  --dovecot     also run a private Dovecot three times, same sizes (at
                most what 2 fds per client allow): once with its own
                imap-hibernate, once with imap-idle as its hibernation
                service (notify fds shared per mailbox), once more with
                the binary given cap_dac_read_search (notify fds reopened
                by handle), once with nothing hibernated (memory only).
                Needs root and Dovecot (apt-get install dovecot-imapd); the
                host's, or the one in the chroot IMAP_IDLE_DOVECOT_ROOT
                names (its /proc mounted), 2.3 or 2.4.
  --dovecot-root DIR  (repeatable; implies --dovecot) also bench the
                Dovecot installed in the chroot DIR (its /proc mounted),
                with the same setups: e.g. the host's 2.3 and a Debian 13
                chroot's 2.4 side by side, each against its own
                imap-hibernate, in one run
  --quiet       no progress on stderr

Exit code 0 when every client of every round was parked and woken as
expected (missed targets are reported, not failed); 1 otherwise, with the
failures printed and the setup's figures marked INVALID.
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

/// Clients per user, as on a server where people have a few devices.
pub const PER_USER: usize = 10;

/// DONEs per second when timing DONE -> OK on the first N/5 clients:
/// clients typing now and then.
pub const DONE_RATE: f64 = 100.0;
/// DONEs per second for the same figure under load (on the first step of
/// the bulk clients; the others just hang up): many clients typing at
/// once, which queues in the server.
pub const DONE_LOAD_RATE: f64 = 2000.0;

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

/// The directory of our binaries (beside this one).
pub fn bin_dir() -> Result<PathBuf, String> {
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

/// What a run was asked for.
struct Plan {
    quick: bool,
    with_dovecot: bool,
    clients: Option<usize>,
    rounds: usize,
    plots: Option<PathBuf>,
    /// More Dovecots to bench beside the host's (or the one
    /// IMAP_IDLE_DOVECOT_ROOT names): chroots, each its own version.
    dovecot_roots: Vec<PathBuf>,
}

fn parse(mut args: Args) -> Result<Option<Plan>, String> {
    let mut p = Plan {
        quick: false,
        with_dovecot: false,
        clients: None,
        rounds: 0,
        plots: None,
        dovecot_roots: Vec::new(),
    };
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => p.quick = true,
            "--dovecot" => p.with_dovecot = true,
            "--quiet" => QUIET.store(true, std::sync::atomic::Ordering::Relaxed),
            "--clients" => p.clients = Some(args.number(&flag)?),
            "--rounds" => p.rounds = args.number(&flag)?,
            "--plots" => p.plots = Some(PathBuf::from(args.value(&flag)?)),
            "--dovecot-root" => {
                p.with_dovecot = true;
                p.dovecot_roots.push(PathBuf::from(args.value(&flag)?));
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if p.clients.is_some_and(|n| n < 20) {
        return Err("--clients must be at least 20".into());
    }
    if p.rounds == 0 {
        p.rounds = if p.quick { 1 } else { 3 };
    }
    Ok(Some(p))
}

/// A command's parsed plan, or how it exits: after `--help` (`None`
/// from the parser), or on a bad argument.
fn plan_or_exit<P>(
    parsed: Result<Option<P>, String>,
    cmd: &str,
    usage: &str,
) -> Result<P, ExitCode> {
    match parsed {
        Ok(Some(p)) => Ok(p),
        Ok(None) => {
            print!("{usage}");
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("imap-idle-lab {cmd}: {e}\n\n{usage}");
            Err(ExitCode::from(2))
        }
    }
}

pub fn main(args: Vec<String>) -> ExitCode {
    let plan = match plan_or_exit(parse(Args::new(args)), "bench", USAGE) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if plan.with_dovecot && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "imap-idle-lab bench: --dovecot needs root: it starts a private Dovecot, whose \
             master runs as root to start imap processes as the mail user; run it as root, \
             or leave out --dovecot to bench our own stack as any user"
        );
        return ExitCode::FAILURE;
    }
    if plan.with_dovecot && !installed() {
        eprintln!("imap-idle-lab bench: --dovecot needs Dovecot: apt-get install dovecot-imapd");
        return ExitCode::FAILURE;
    }
    match run(&plan) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imap-idle-lab bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One round of every setup: native, and with --dovecot Dovecot's own
/// imap-hibernate and imap-idle under Dovecot.
fn round(
    bin: &Path,
    plan: &Plan,
    n: usize,
    nd: usize,
    progress: bool,
) -> Result<Vec<Figures>, String> {
    let sizes = |n: usize| {
        if plan.quick {
            Sizes::quick(n)
        } else {
            Sizes::full(n)
        }
    };
    let s = sizes(n);
    let client = memory::client_side(bin, s.n1, s.n, progress)?;
    // Past what one daemon holds under the open-file limit, several.
    let per_daemon = plan.clients.map_or(n, |_| default_size(1)).min(n);
    let daemons = n.div_ceil(per_daemon.max(1));
    let mut rows = vec![native::run(
        bin,
        &s,
        (daemons, per_daemon),
        &client,
        progress,
    )?];
    // The Dovecot IMAP_IDLE_DOVECOT_ROOT names (else the host's), then
    // each --dovecot-root: every version against its own imap-hibernate.
    let roots = plan
        .with_dovecot
        .then(DovecotRoot::from_env)
        .into_iter()
        .chain(
            plan.dovecot_roots
                .iter()
                .map(|r| DovecotRoot::chroot(r.clone())),
        );
    let mut client_dovecot = None;
    for root in roots {
        let s = sizes(nd);
        let client = match client_dovecot.take() {
            Some(c) => c,
            None => memory::client_side(bin, s.n1, s.n, progress)?,
        };
        let u = dovecot::unhibernated(bin, &root, s.ref_clients, &client, progress)?;
        let v = root.version()?;
        for (how, name, title) in [
            (
                Hibernation::Dovecot,
                format!("Dovecot {v} imap-hibernate"),
                "dovecot/imap-hibernate",
            ),
            (
                Hibernation::ImapIdle,
                format!("imap-idle --dovecot ({v})"),
                "dovecot/imap-idle",
            ),
            (
                Hibernation::ImapIdleCap,
                format!("{} ({v})", table::WITH_CAP),
                "dovecot/imap-idle",
            ),
        ] {
            let mut f = dovecot::run(bin, &root, how, &name, title, &s, &client, progress)?;
            f.server_bytes_per_client = Some(u.pss);
            f.machine_server_per_client = u.machine;
            f.memory_curve_unparked = u.curve.clone();
            rows.push(f);
        }
        client_dovecot = Some(client);
    }
    Ok(rows)
}

/// Ok(true) when every client of every round was parked and woken as
/// expected.
fn run(plan: &Plan) -> Result<bool, String> {
    let _ = crate::sys::limits::raise_nofile();
    let bin = bin_dir()?;
    // A bar per load only on a terminal; logs get our own lines.
    let progress = !QUIET.load(std::sync::atomic::Ordering::Relaxed)
        && nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    let n = plan
        .clients
        .unwrap_or(if plan.quick { 1000 } else { default_size(1) });
    // Under Dovecot's own imap-hibernate every client holds 2 fds.
    let nd = plan
        .clients
        .unwrap_or(if plan.quick { 1000 } else { default_size(2) })
        .min(default_size(2));
    let started = Instant::now();
    // setups[i][r]: setup i in round r.
    let mut setups: Vec<Vec<Figures>> = Vec::new();
    for r in 0..plan.rounds {
        say(&format!("round {} of {}", r + 1, plan.rounds));
        for (i, f) in round(&bin, plan, n, nd, progress)?.into_iter().enumerate() {
            if setups.len() <= i {
                setups.push(Vec::new());
            }
            setups[i].push(f);
        }
    }
    println!(
        "imap-idle-lab bench{}{}: {} idle IMAP clients, 10 per user; same machine, same run; \
         {} round{} ({:.0} s)",
        if plan.quick { " --quick" } else { "" },
        if plan.with_dovecot { " --dovecot" } else { "" },
        n,
        plan.rounds,
        if plan.rounds == 1 {
            ""
        } else {
            "s, each figure the median (min..max)"
        },
        started.elapsed().as_secs_f64()
    );
    println!("machine: {}", machine());
    println!();
    print!("{}", table::table(&setups));
    let mut complete = true;
    for (r, f) in setups.iter().flat_map(|s| s.iter().enumerate()) {
        if let Some(why) = f.invalid() {
            complete = false;
            println!("INVALID: {}, round {}: {why}", f.name, r + 1);
            for (why, n) in f.failures.iter().take(5) {
                println!("  {n:>6}  {why}");
            }
        }
    }
    println!();
    println!("targets (on the medians):");
    print!("{}", table::targets(&setups));
    if let Some(dir) = &plan.plots {
        let written = plots::write(dir, &setups)?;
        println!("plots: {}", written.join(", "));
    }
    if complete {
        println!("OK: every client was parked, and woken by its delivery");
    } else {
        println!("INCOMPLETE: some clients failed or missed their EXISTS; figures marked INVALID");
    }
    Ok(complete)
}
