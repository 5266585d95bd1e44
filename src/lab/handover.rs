//! `imap-idle-lab handover`: park N idle clients (our native stack, or a
//! private Dovecot with imap-idle standalone), send the daemon SIGUSR2 and
//! measure the hand-over to its successor as the clients see it: how long
//! until the old daemon exited, how many were woken or lost, the longest
//! gap between keepalives any client saw, and whether a delivery to every
//! user afterwards reached every client. The clients are the load tool's
//! worker processes, so N may pass one process's open-file limit.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::args::Args;
use crate::lab::load::{Delivery, Load, LoadOptions, Report};
use crate::lab::rig::dovecot::{raise_inotify_instances, Dovecot, Hibernation, PASSWORD};
use crate::lab::rig::native::{NativeOptions, NativeStack};
use crate::lab::rig::procfs::exited;
use crate::lab::rig::wait_until;
use crate::link::{self, Link};
use crate::proto::native::{Role, Stats};

const USAGE: &str = "\
Usage: imap-idle-lab handover [--clients N] [--dovecot] [--keepalive SECS]

Parks N idle IMAP clients (10 per user) in imap-idle: behind our native
stack, or with --dovecot behind a private Dovecot 2.3 (imap-idle run
standalone; needs Dovecot and root). Once every client has seen a
keepalive, sends the daemon SIGUSR2, which starts a successor that takes
every client over. Prints the time from SIGUSR2 to the old daemon's exit,
the clients taken over, woken (target 0) and lost (target 0), the longest
gap between two keepalives any client saw (target: the interval; the
daemon schedules them exactly one interval apart, and the figure holds a
few ms of timer and loop latency, so up to 50 ms over passes),
and how many clients a delivery to every user after the hand-over reached
(target: all). Exit code 0 when every target was met.

Options:
  --clients N       idle clients [default: 500]
  --dovecot         behind Dovecot instead of the native stack
  --keepalive SECS  keepalive interval [default: 10]
";

const PER_USER: usize = 10;
/// The daemon schedules a user's keepalives exactly one interval apart;
/// what a client measures also holds the timer's and both sides' loop
/// latency, a few milliseconds.
const JITTER_MS: f64 = 50.0;

pub fn main(args: Vec<String>) -> ExitCode {
    let mut args = Args::new(args);
    let (mut n, mut dovecot, mut keepalive) = (500usize, false, 10u32);
    while let Some(flag) = args.next_flag() {
        let r = match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--clients" => args.number(&flag).map(|v| n = v),
            "--keepalive" => args.number(&flag).map(|v| keepalive = v),
            "--dovecot" => {
                dovecot = true;
                Ok(())
            }
            _ => Err(format!("unknown argument {flag:?}")),
        };
        if let Err(e) = r {
            eprintln!("imap-idle-lab handover: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let _ = crate::sys::limits::raise_nofile();
    let result = crate::lab::bench::bin_dir().and_then(|bin| match dovecot {
        true => behind_dovecot(&bin, n, keepalive),
        false => native(&bin, n, keepalive),
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imap-idle-lab handover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn names(n: usize) -> Vec<String> {
    (1..=n.div_ceil(PER_USER))
        .map(|i| format!("h{i}"))
        .collect()
}

fn connect(port: u16, n: usize, users: &[String]) -> Result<Load, String> {
    Load::connect(&LoadOptions {
        port,
        clients: n,
        accounts: users
            .iter()
            .map(|u| (u.clone(), PASSWORD.to_owned()))
            .collect(),
        timeout_secs: 120,
        ..LoadOptions::default()
    })
}

fn native(bin: &Path, n: usize, keepalive: u32) -> Result<bool, String> {
    let users = names(n);
    let opts = NativeOptions {
        spawn: true,
        mails: 0,
        users: users.iter().map(|u| (u.clone(), 0)).collect(),
        capacity: 4000,
        log_level: "info".into(),
        mail_args: vec!["--keepalive".into(), keepalive.to_string()],
        ..NativeOptions::default()
    };
    let stack = NativeStack::start(bin, &opts)?;
    let load = connect(stack.port, n, &users)?;
    stack.wait_parked(load.idle() as u64, Duration::from_secs(600))?;
    let old = stack.idle_pids()[0];
    let maildir = Delivery::Maildir(format!("{}/%u/Maildir", stack.mail_root.display()));
    let run = Run {
        name: "native",
        n,
        keepalive,
        old,
        park: stack.park_socket(),
    };
    run.hand_over(load, &maildir)
}

fn behind_dovecot(bin: &Path, n: usize, keepalive: u32) -> Result<bool, String> {
    let users = names(n);
    raise_inotify_instances(4 * n as u64 + 1024)?;
    let dc = Dovecot::start(
        &users,
        Hibernation::Standalone,
        &bin.join("imap-idle"),
        keepalive,
    )?;
    let load = connect(dc.port, n, &users)?;
    let want = load.idle();
    dc.wait_for(
        || dc.hibernated().unwrap_or(0) == want,
        "every client to hibernate",
        Duration::from_secs(600),
    )?;
    let old = dc.standalone_pid().ok_or("no standalone imap-idle")?;
    let maildir = Delivery::Maildir(format!("{}/mail/%u/Maildir", dc.dir.display()));
    let run = Run {
        name: "--dovecot",
        n,
        keepalive,
        old,
        park: dc.stats_socket.clone(),
    };
    run.hand_over(load, &maildir)
}

struct Run {
    name: &'static str,
    n: usize,
    keepalive: u32,
    old: u32,
    park: std::path::PathBuf,
}

/// Kills the successor (no rig started it) however the run ends.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGTERM);
    }
}

fn woken(s: &Stats) -> u64 {
    s.wake_done + s.wake_bad_done + s.wake_input + s.wake_changed + s.wake_shutdown
}

impl Run {
    fn hand_over(&self, mut load: Load, maildir: &Delivery) -> Result<bool, String> {
        let idle = load.idle();
        // Every client sees a keepalive first, so the gap measured spans
        // the hand-over.
        std::thread::sleep(Duration::from_secs(self.keepalive as u64 + 1));
        // Gaps before (a client's first after its mail process let go of
        // it is not the daemon's to keep) do not count.
        load.mark();
        let started = Instant::now();
        kill(Pid::from_raw(self.old as i32), Signal::SIGUSR2).map_err(|e| e.to_string())?;
        let exit = Duration::from_secs(600);
        wait_until(|| exited(self.old), "the old daemon to exit", exit)?;
        let took = started.elapsed();
        let pid = Link::connect(&self.park, Role::Admin)
            .map_err(|e| format!("reaching the successor: {e}"))?
            .peer_pid();
        let _successor = Successor(pid);
        // Two more keepalive rounds from the successor.
        std::thread::sleep(Duration::from_secs(2 * self.keepalive as u64 + 1));
        // Before the delivery: a woken client's keepalives are its mail
        // process's again.
        let gap = load.mark();
        let s = link::stats(&self.park).map_err(|e| format!("successor's stats: {e}"))?;
        let woken = (idle as u64).saturating_sub(s.taken_over) + woken(&s);
        let users = idle.div_ceil(PER_USER);
        load.deliver(maildir, users, 0.0)?;
        load.wait_exists(Duration::from_secs(120));
        // Hung up, not ended with DONE: under Dovecot every DONE would
        // start an imap process at once, and its process_limit is not what
        // this measures.
        let r = load.hang_up();
        let gap_ms = gap.as_secs_f64() * 1e3;
        self.print(took, &s, woken, gap_ms, &r);
        let interval_ms = self.keepalive as f64 * 1000.0;
        Ok(woken == 0
            && r.failed() == 0
            && gap_ms < interval_ms + JITTER_MS
            && r.exists_received == r.exists_expected)
    }

    fn print(&self, took: Duration, s: &Stats, woken: u64, gap_ms: f64, r: &Report) {
        println!(
            "hand-over ({}): {} clients, keepalive {} s",
            self.name, self.n, self.keepalive
        );
        let rows = [
            (
                "SIGUSR2 to the old daemon's exit",
                format!("{:.1} ms", took.as_secs_f64() * 1e3),
            ),
            ("clients taken over", s.taken_over.to_string()),
            ("clients woken (target 0)", woken.to_string()),
            ("clients lost (target 0)", r.failed().to_string()),
            (
                "longest keepalive gap (target < interval + 50 ms)",
                format!("{gap_ms:.0} ms"),
            ),
            (
                "delivery afterwards reached",
                format!("{} of {} clients", r.exists_received, r.exists_expected),
            ),
        ];
        for (what, v) in rows {
            println!("  {what:<44} {v}");
        }
    }
}
