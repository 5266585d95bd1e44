//! Lab tools for trying imap-idle out: the reference IMAP server, the
//! demo, statistics.

pub mod bench;
mod demo;
pub mod fuzz;
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
  bench   start our stack (and with --dovecot a private Dovecot twice),
          hold thousands of idle clients, print one table of costs and
          latencies; --quick takes under a minute
  park-rate  parks per second straight into a private imap-idle, one at
          a time and pipelined [--parks N] [--window W]
  load    hold N idle IMAP clients against any IMAP server, deliver mail,
          measure delivery -> EXISTS
  serve   the reference IMAP login and mail processes (a reference peer
          for tests, demos and benchmarks, not a production mail server)
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
        Some("bench") => bench::main(args.collect()),
        Some("park-rate") => bench::park_rate::main(args.collect()),
        // Started by `load` itself, one per client process.
        Some("load-worker") => load::worker::main(),
        Some("probe") => probe::main(args.collect()),
        Some("hold") => hold::main(args.collect()),
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
    let mut socket = crate::idle::config::default_runtime_dir().join("park");
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            println!("Usage: imap-idle-lab stats [--runtime-dir DIR | --park-socket PATH]\n\nPrints a running imap-idle's counters and a summary of its latest wake\nlatencies. DIR defaults to imap-idle's default runtime directory.");
            return ExitCode::SUCCESS;
        }
        match (a.as_str(), it.next()) {
            ("--runtime-dir", Some(d)) => socket = std::path::PathBuf::from(d).join("park"),
            ("--park-socket", Some(p)) => socket = std::path::PathBuf::from(p),
            _ => {
                eprintln!("imap-idle-lab stats: unknown or incomplete argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match crate::link::stats(&socket) {
        Ok(mut s) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imap-idle-lab stats: {}: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}
