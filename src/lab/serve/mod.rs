//! `imap-idle-lab serve`: a reference login process and mail process over
//! Maildir, to try the native system with real IMAP clients. A reference
//! peer for tests, demos and benchmarks, not a mail server for production.

pub(crate) mod imap;
mod login;
mod mail;
pub mod maildir;
pub(crate) mod session;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::Args;
use crate::idle::config::default_runtime_dir;

const USAGE: &str = "\
Usage: imap-idle-lab serve login --passwd FILE [OPTIONS]
       imap-idle-lab serve mail --maildir PATTERN [OPTIONS]

A small reference IMAP server in two roles, for tests, demos and
benchmarks. It is a reference peer for imap-idle and imap-tracker, NOT a
mail server for production: no TLS, LOGIN only, no literals, a handful of
commands (CAPABILITY, SELECT, EXAMINE, NOOP, IDLE/DONE, FETCH FLAGS/UID/
MODSEQ, STATUS, LOGOUT, X-STATE).

login: accepts TCP, greets, checks LOGIN against FILE (lines
`user:password[:uid]`; uid defaults to this process's), and hands the
client to imap-tracker. Prints `listening on ADDR` once ready.
  --listen ADDR:PORT      [default: 127.0.0.1:1143; port 0 picks one]
  --passwd FILE           the accounts
  --tracker-socket PATH   [default: RUNTIME_DIR/tracker]

mail: registers with imap-tracker and serves the clients it assigns over
Maildir (PATTERN with %u for the user, e.g. /srv/mail/%u/Maildir; INBOX
is created if missing, other mailboxes are Maildir++ folders `.NAME`).
A client idle in IDLE for --park-after seconds is parked in imap-idle;
when imap-idle hands it back the session is restored (mailbox reopened by
name + GUID + UIDVALIDITY, `* BYE` if it is gone) and the client is sent
the EXPUNGE / FETCH / EXISTS / RECENT that happened meanwhile.
  --maildir PATTERN       where each user's Maildir is
  --tracker-socket PATH   [default: $IMAP_TRACKER_SOCKET, else
                          RUNTIME_DIR/tracker]
  --idle-socket PATH      imap-idle's park socket [default: RUNTIME_DIR/park]
  --park-after SECS       idle this long before parking; 0 never parks
                          [default: 10]
  --keepalive SECS        `* OK Still here` interval while parked
                          [default: 120]
  --capacity N            most clients at once [default: 1000]

Both:
  --runtime-dir DIR       as imap-idle's [default: its default]
  --log-level LEVEL       [default: info; RUST_LOG overrides it]
";

pub fn main(args: Vec<String>) -> ExitCode {
    let mut it = args.into_iter();
    let role = it.next();
    match parse(role.as_deref(), Args::new(it)) {
        Ok(Some(run)) => match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imap-idle-lab serve: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

type Run = Box<dyn FnOnce() -> Result<(), String>>;

fn parse(role: Option<&str>, mut args: Args) -> Result<Option<Run>, String> {
    let mut runtime_dir = default_runtime_dir();
    let mut listen = "127.0.0.1:1143".to_owned();
    let mut passwd = None;
    let mut tracker_socket = None;
    let mut idle_socket = None;
    let mut maildir = None;
    let mut park_after = 10u64;
    let mut keepalive = 120u32;
    let mut capacity = 1000u32;
    let mut log_level = "info".to_owned();
    match role {
        Some("login" | "mail") => {}
        Some("-h" | "--help") | None => return Ok(None),
        Some(other) => return Err(format!("unknown role {other:?}: login or mail")),
    }
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runtime-dir" => runtime_dir = PathBuf::from(args.value(&flag)?),
            "--listen" => listen = args.value(&flag)?,
            "--passwd" => passwd = Some(PathBuf::from(args.value(&flag)?)),
            "--tracker-socket" => tracker_socket = Some(PathBuf::from(args.value(&flag)?)),
            "--idle-socket" => idle_socket = Some(PathBuf::from(args.value(&flag)?)),
            "--maildir" => maildir = Some(args.value(&flag)?),
            "--park-after" => park_after = args.number(&flag)?,
            "--keepalive" => keepalive = args.number(&flag)?,
            "--capacity" => capacity = args.number(&flag)?,
            "--log-level" => log_level = args.log_level(&flag)?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    crate::idle::init_logging(&log_level);
    // Each client is a descriptor: the default soft limit of 1024 would
    // cap a process far below its --capacity.
    if let Err(e) = crate::sys::limits::raise_nofile() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let tracker_socket = tracker_socket
        .or_else(|| std::env::var_os("IMAP_TRACKER_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| runtime_dir.join("tracker"));
    if role == Some("login") {
        let cfg = login::LoginConfig {
            listen: listen
                .parse()
                .map_err(|_| format!("--listen: {listen:?} is not ADDR:PORT"))?,
            passwd: passwd.ok_or("login needs --passwd FILE")?,
            tracker_socket,
        };
        return Ok(Some(Box::new(move || login::run(cfg))));
    }
    let maildir = maildir.ok_or("mail needs --maildir PATTERN")?;
    if capacity == 0 {
        return Err("--capacity must be at least 1".into());
    }
    let cfg = mail::MailConfig {
        tracker_socket,
        idle_socket: idle_socket.unwrap_or_else(|| runtime_dir.join("park")),
        maildir,
        park_after: (park_after > 0).then(|| Duration::from_secs(park_after)),
        keepalive_secs: keepalive,
        capacity,
    };
    Ok(Some(Box::new(move || mail::run(cfg))))
}
