//! Entry point of the `imap-tracker` binary: the daemon, or `who`.

use std::process::ExitCode;

use super::config::{self, Parsed, USAGE};
use super::daemon::Tracker;
use super::who;

pub fn main() -> ExitCode {
    let cfg = match config::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(cfg)) => *cfg,
        Ok(Parsed::Who {
            user,
            control_socket,
        }) => return print_who(user, &control_socket),
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("imap-tracker {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("imap-tracker: {e}");
            return ExitCode::from(2);
        }
    };
    crate::idle::init_logging(&cfg.log_level);
    match Tracker::new(cfg).and_then(Tracker::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn print_who(user: Option<String>, control: &std::path::Path) -> ExitCode {
    match who::ask(control, user) {
        Ok(answer) => {
            print!("{}", who::table(&answer));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imap-tracker who: {}: {e}", control.display());
            ExitCode::FAILURE
        }
    }
}
