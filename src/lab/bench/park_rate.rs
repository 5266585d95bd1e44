//! Parks per second straight into one fresh imap-idle, from one mail
//! process link, with socket pairs standing in for clients (no IMAP
//! involved): for the bench's table, and alone as `imap-idle-lab
//! park-rate`, which compares one park at a time with a pipelined window.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::lab::rig::{procfs, wait_until, PrivateDir};
use crate::mail::{IdleLink, NotParked, Parking, MAX_WINDOW};
use crate::proto::state::SessionState;

/// Parks in flight at once when none is asked for.
pub const DEFAULT_WINDOW: usize = 128;

const USAGE: &str = "\
Usage: imap-idle-lab park-rate [--parks N] [--window W]

Starts a private imap-idle (from the directory of this binary), parks N
socket pairs into it from one mail process link, first one at a time
(window 1), then with up to W parks in flight, and prints parks per second
for both. The daemon unparks each batch (we hang up) before the next.

  --parks N    parks per batch [default: 8000]
  --window W   parks in flight in the pipelined batch [default: 128]
";

/// Parks per second into a fresh imap-idle, pipelined with the default
/// window.
pub(super) fn raw_park_rate(bin: &Path, n: usize) -> Result<f64, String> {
    let daemon = Daemon::start(bin)?;
    Ok(daemon.rate(n, DEFAULT_WINDOW)?.per_sec)
}

/// One batch of parks.
struct Rate {
    per_sec: f64,
    /// The daemon's CPU time per park: what the rate would be bounded by
    /// with a core of its own.
    daemon_us: f64,
    /// Ours (the mail process's side).
    client_us: f64,
}

/// A private imap-idle without a tracker: the hang-ups between batches
/// would only be warnings.
struct Daemon {
    child: Child,
    park_socket: PathBuf,
    watched: PathBuf,
    _dir: PrivateDir,
}

impl Daemon {
    fn start(bin: &Path) -> Result<Daemon, String> {
        let dir = PrivateDir::new("parks")?;
        let run = dir.path().join("run");
        let watched = dir.path().join("new");
        std::fs::create_dir(&watched).map_err(|e| e.to_string())?;
        let child = Command::new(bin.join("imap-idle"))
            .arg("--runtime-dir")
            .arg(&run)
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting imap-idle: {e}"))?;
        let daemon = Daemon {
            child,
            park_socket: run.join("park"),
            watched,
            _dir: dir,
        };
        wait_until(
            || crate::link::stats(&daemon.park_socket).is_ok(),
            "imap-idle to listen",
            Duration::from_secs(10),
        )?;
        Ok(daemon)
    }

    /// Park `n` clients with up to `window` in flight; parks per second
    /// from the first request to the last answer. Every park must succeed.
    fn rate(&self, n: usize, window: usize) -> Result<Rate, String> {
        let mut link = IdleLink::connect(&self.park_socket).map_err(|e| e.to_string())?;
        let state = SessionState {
            user: "user".into(),
            mailbox: "INBOX".into(),
            uidvalidity: 1,
            watch: vec![self.watched.clone()],
            tag: "c".into(),
            keepalive_secs: 120,
            ..SessionState::default()
        };
        // Made before the clock starts: only parking is timed.
        let parks: Vec<Parking> = (0..n)
            .map(|i| Parking::idle(&format!("user{}", i % 1000), [7; 16], &state))
            .collect();
        let mut ours = Vec::with_capacity(n);
        let mut theirs = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
            ours.push(a);
            theirs.push(OwnedFd::from(b));
        }
        let mut parked = 0;
        let cpu = procfs::cpu_ns(self.child.id());
        let own = procfs::cpu_ns(std::process::id());
        let t = Instant::now();
        for (client, park) in theirs.into_iter().zip(&parks) {
            while link.in_flight() >= window {
                parked += settled(link.next_answer())?;
            }
            link.send_park(client, park)
                .map_err(|k| format!("park not sent: {}", k.reason))?;
        }
        while let Some(answer) = link.next_answer() {
            parked += settled(Some(answer))?;
        }
        let rate = Rate {
            per_sec: n as f64 / t.elapsed().as_secs_f64(),
            daemon_us: (procfs::cpu_ns(self.child.id()) - cpu) as f64 / 1000.0 / n as f64,
            client_us: (procfs::cpu_ns(std::process::id()) - own) as f64 / 1000.0 / n as f64,
        };
        if parked != n {
            return Err(format!("{parked} of {n} parked"));
        }
        drop(ours);
        // Hung up: wait until the daemon let them all go, so the next batch
        // starts from the same place.
        wait_until(
            || crate::link::stats(&self.park_socket).is_ok_and(|s| s.parked == 0),
            "imap-idle to notice the hang-ups",
            Duration::from_secs(60),
        )?;
        Ok(rate)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 1 for a park, an error for anything else.
fn settled(answer: Option<crate::mail::Answer>) -> Result<usize, String> {
    match answer {
        Some((_, Ok(_))) => Ok(1),
        Some((req, Err(NotParked::Kept(k)))) => Err(format!("park {req} refused: {}", k.reason)),
        Some((req, Err(lost))) => Err(format!("park {req}: {lost}")),
        None => Ok(0),
    }
}

pub fn main(args: Vec<String>) -> ExitCode {
    let mut args = Args::new(args);
    let mut n = 8000;
    let mut window = DEFAULT_WINDOW;
    while let Some(flag) = args.next_flag() {
        let r = match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--parks" => args.number(&flag).map(|v| n = v),
            "--window" => args.number(&flag).map(|v| window = v),
            _ => Err(format!("unknown argument {flag:?}")),
        };
        if let Err(e) = r {
            eprintln!("imap-idle-lab park-rate: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if n == 0 || !(1..=MAX_WINDOW).contains(&window) {
        eprintln!("imap-idle-lab park-rate: --parks must be > 0, --window 1..={MAX_WINDOW}");
        return ExitCode::from(2);
    }
    // Each batch holds two descriptors per client here until it is parked.
    let _ = crate::sys::limits::raise_nofile();
    let result = super::bin_dir().and_then(|bin| {
        let daemon = Daemon::start(&bin)?;
        let one = daemon.rate(n, 1)?;
        let many = daemon.rate(n, window)?;
        Ok((one, many))
    });
    match result {
        Ok((one, many)) => {
            println!("{n} parks into one imap-idle from one link:");
            let line = |w: usize, r: &Rate| {
                println!(
                    "  window {w:<6} {:>8.0} parks/s   CPU per park: daemon {:.1} us, \
                     mail process {:.1} us",
                    r.per_sec, r.daemon_us, r.client_us
                );
            };
            line(1, &one);
            line(window, &many);
            println!(
                "  pipelined / one at a time: {:.1}x",
                many.per_sec / one.per_sec
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imap-idle-lab park-rate: {e}");
            ExitCode::FAILURE
        }
    }
}
