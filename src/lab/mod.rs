//! Lab tools for trying imap-idle out: `imap-idle-lab demo` for now.

mod demo;

use std::process::ExitCode;

const USAGE: &str = "\
Usage: imap-idle-lab COMMAND [OPTIONS]

Commands:
  demo    park a connection in a running imap-idle and show every way it
          wakes (acts as the daemon's tracker and as a mail process)

Run `imap-idle-lab COMMAND --help` for the command's options.
";

pub fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("demo") => demo::main(args.collect()),
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
