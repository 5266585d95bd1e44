//! Entry point of the `imap-idle` binary: flags, logging, run.

use std::io::Write;

use super::config::{self, Parsed, USAGE};
use super::daemon::Daemon;

pub fn main() -> std::process::ExitCode {
    let cfg = match config::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(cfg)) => *cfg,
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
/// over `--log-level` so module-level filters work. Under Dovecot's master
/// (which sets LOG_SERVICE), lines use Dovecot's internal log format so
/// they land in Dovecot's log with the right level.
pub fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    let mut builder = env_logger::Builder::from_env(env);
    if std::env::var_os("DOVECOT_CHILD_PROCESS").is_some()
        && std::env::var("LOG_SERVICE").as_deref() == Ok("1")
    {
        let pid = std::process::id();
        builder.format(move |buf, record| {
            // 0x01, the log type + 1 (debug 1 .. fatal 5), the pid, a space.
            let kind: u8 = match record.level() {
                log::Level::Trace | log::Level::Debug => 1,
                log::Level::Info => 2,
                log::Level::Warn => 3,
                log::Level::Error => 4,
            };
            buf.write_all(&[1, kind])?;
            writeln!(buf, "{pid} imap-idle: {}", record.args())
        });
        builder.init();
        return;
    }
    builder
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
