//! Lab tools for trying imap-idle out: the reference IMAP server, the
//! demo, statistics.

pub mod bench;
mod demo;
mod dovecot_reload;
pub mod fuzz;
pub mod handover;
mod hold;
pub mod load;
pub mod plot;
mod probe;
pub mod rig;
pub mod serve;

use std::process::ExitCode;

const USAGE: &str = "\
Usage: imap-idle-lab COMMAND [OPTIONS]

Commands:
  demo    park a connection in a running imap-idle and show every way it
          wakes (acts as the daemon's tracker and as a mail process)
  bench   start our stack (and with --dovecot a private Dovecot three
          times: its own imap-hibernate, imap-idle, none), hold thousands
          of idle clients, print one table of costs and latencies, each
          the median of rounds; --quick takes under a minute
  park-rate  parks per second straight into a private imap-idle, one at
          a time and pipelined [--parks N] [--window W]
  dovecot-reload  N clients hibernated in imap-idle under a private
          Dovecot, then `doveadm reload`: clients woken and lost
          [--clients N] [--shutdown-clients yes|no]
  mass-wake  one delivery to N hibernated clients of one mailbox under a
          private Dovecot: its own imap-hibernate against imap-idle at
          each --master-connections value [--clients N] [--rounds K]
  tracker-restart  park N clients, kill -9 imap-tracker, start it again,
          wake every client; prints the clients lost and the times
          [--clients N] [--per-user K]
  load    hold N idle IMAP clients against any IMAP server, deliver mail,
          measure delivery -> EXISTS
  serve   the reference IMAP login and mail processes (a reference peer
          for tests, demos and benchmarks, not a production mail server)
  handover  park N idle clients (native, or --dovecot), make imap-idle hand
          them to a successor (SIGUSR2), print the exit time, clients
          woken and lost, the longest keepalive gap, and whether a
          delivery afterwards reached everyone [--clients N]
  hold    a bare IMAP stand-in that answers OK and holds connections
          (the bench's client-side memory baseline)
  probe   connect to a park or tracker socket as the calling user, claim
          a role, and report what the daemon allowed
  stats   print a running imap-idle's counters
          [--runtime-dir DIR | --park-socket PATH]
  fuzz    feed mutated inputs to every decoder (native protocol, session
          state, Dovecot lines, IDLE input, IMAP commands); reports
          panics and hangs [--target NAME|all] [--execs N] [--seed S]

Run `imap-idle-lab COMMAND --help` for the command's options.
";

pub fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("demo") => demo::main(args.collect()),
        Some("serve") => serve::main(args.collect()),
        Some("load") => load::main(args.collect()),
        Some("dovecot-reload") => dovecot_reload::main(args.collect()),
        Some("bench") => bench::main(args.collect()),
        Some("park-rate") => bench::park_rate::main(args.collect()),
        Some("mass-wake") => bench::mass_wake::main(args.collect()),
        Some("tracker-restart") => bench::tracker_restart::main(args.collect()),
        // Started by `load` itself, one per client process.
        Some("load-worker") => load::worker::main(),
        Some("probe") => probe::main(args.collect()),
        Some("hold") => hold::main(args.collect()),
        Some("handover") => handover::main(args.collect()),
        Some("stats") => stats(args.collect()),
        Some("fuzz") => fuzz::main(args.collect()),
        Some("-h" | "--help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("imap-idle-lab {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("imap-idle-lab: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn stats(args: Vec<String>) -> ExitCode {
    let mut dir = crate::idle::config::default_runtime_dir();
    let mut socket = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            println!("Usage: imap-idle-lab stats [--runtime-dir DIR | --park-socket PATH]\n\nPrints a running imap-idle's counters and a summary of its latest wake\nlatencies. DIR defaults to imap-idle's default runtime directory; when\nDovecot's master runs several imap-idle processes there (DIR/park and\nDIR/park.PID), prints each one's parked count and the sum of all.");
            return ExitCode::SUCCESS;
        }
        match (a.as_str(), it.next()) {
            ("--runtime-dir", Some(d)) => dir = std::path::PathBuf::from(d),
            ("--park-socket", Some(p)) => socket = Some(std::path::PathBuf::from(p)),
            _ => {
                eprintln!("imap-idle-lab stats: unknown or incomplete argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let all = match socket {
        Some(p) => crate::link::stats(&p)
            .map(|s| vec![(p.clone(), s)])
            .map_err(|e| (p, e)),
        None => crate::link::stats_in(&dir),
    };
    let all = match all {
        Ok(all) if all.is_empty() => {
            eprintln!(
                "imap-idle-lab stats: no imap-idle answers in {}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        Ok(all) => all,
        Err((path, e)) => {
            eprintln!("imap-idle-lab stats: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut sum = crate::proto::native::Stats::default();
    for (path, s) in &all {
        if all.len() > 1 {
            println!("{}: {} parked", path.display(), s.parked);
        }
        sum.add(s);
    }
    print_stats(sum);
    ExitCode::SUCCESS
}

fn print_stats(mut s: crate::proto::native::Stats) {
    let wake_ms: Vec<f64> = s.wake_us.iter().map(|&u| u as f64 / 1000.0).collect();
    s.wake_us.clear();
    let text = format!("{s:#?}");
    // Everything but the latency samples, which get a summary.
    for line in text.lines().filter(|l| !l.contains("wake_us")) {
        println!("{line}");
    }
    let q = |p| load::quantile(&wake_ms, p).map_or("-".into(), |v| format!("{v:.3}"));
    println!(
        "wake latency (change noticed -> descriptor sent back), last {} wakes: \
         median {} ms, p99 {} ms",
        wake_ms.len(),
        q(0.5),
        q(0.99)
    );
}
