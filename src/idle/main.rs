//! Entry point of the `imap-idle` binary: flags, logging, run.

use std::io::Write;

use super::config::{self, Parsed, USAGE};
use super::daemon::Daemon;

pub fn main() -> std::process::ExitCode {
    let cfg = match config::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("imap-idle {}", env!("CARGO_PKG_VERSION"));
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("imap-idle: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&cfg.log_level);
    match Daemon::new(cfg).and_then(Daemon::run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `LEVEL message` on stderr with a timestamp; RUST_LOG, when set, wins
/// over `--log-level` so module-level filters work.
pub fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    env_logger::Builder::from_env(env)
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}
