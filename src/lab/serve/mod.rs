//! `imap-idle-lab serve`: a reference login process and mail process over
//! Maildir, to try the native system with real IMAP clients. A reference
//! peer for tests, demos and benchmarks, not a mail server for production.
//! Still, no client may take it down: `bounds` says what each may do.

pub mod bounds;
pub(crate) mod imap;
pub mod login;
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
  --auth-timeout SECS     a client not logged in SECS after connecting is
                          sent `* BYE Authentication timed out.` and closed,
                          whatever it sends meanwhile [default: 60]

mail: registers with imap-tracker and serves the clients it assigns over
Maildir (PATTERN with %u for the user, e.g. /srv/mail/%u/Maildir; INBOX
is created if missing, other mailboxes are Maildir++ folders `.NAME`).
A client idle in IDLE for --park-after seconds is parked in imap-idle;
when imap-idle hands it back the session is restored (mailbox reopened by
name + GUID + UIDVALIDITY, `* BYE` if it is gone) and the client is sent
the EXPUNGE / FETCH / EXISTS / RECENT that happened meanwhile. When the
tracker link drops (the tracker restarted) it keeps its clients and
registers again with what it serves; it exits after 60 s without a
tracker, or at once when the tracker socket's directory is gone.
  --maildir PATTERN       where each user's Maildir is
  --tracker-socket PATH   [default: $IMAP_TRACKER_SOCKET, else
                          RUNTIME_DIR/tracker]
  --idle-socket PATH      imap-idle's park socket [default: RUNTIME_DIR/park];
                          given again (or as PATH,PATH..) for several
                          imap-idle daemons: a user's parks go to its home
                          daemon (a hash of the name), and one that is
                          full passes the client to the next
  --park-after SECS       idle this long before parking; 0 never parks
                          [default: 10]
  --keepalive SECS        `* OK Still here` interval while parked
                          [default: 120]
  --capacity N            most clients at once [default: 1000]
  --stall-timeout SECS    a client with 256 KiB of answers unread that
                          takes none of them for SECS is disconnected
                          [default: 60]

Both:
  --runtime-dir DIR       as imap-idle's [default: its default]
  --log-level LEVEL       [default: info; RUST_LOG overrides it]

Bounds (each refusal is logged with the user or address):
  - Once 256 KiB of a client's answers wait unread, its input is not read
    until it takes them: a slow reader is slowed down, not disconnected
    (the answer in progress is queued whole, so one may pass the mark).
  - X-STATE refuses, with NO, a state whose \\Recent UIDs go past the
    mailbox's UIDNEXT, and never expands the ranges it carries.
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
    let mut idle_sockets: Vec<PathBuf> = Vec::new();
    let mut maildir = None;
    let mut park_after = 10u64;
    let mut keepalive = 120u32;
    let mut capacity = 1000u32;
    let mut auth_timeout = bounds::DEFAULT_AUTH_TIMEOUT.as_secs();
    let mut stall_timeout = bounds::DEFAULT_STALL_TIMEOUT.as_secs();
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
            "--idle-socket" => idle_sockets.extend(
                args.value(&flag)?
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from),
            ),
            "--maildir" => maildir = Some(args.value(&flag)?),
            "--park-after" => park_after = args.number(&flag)?,
            "--keepalive" => keepalive = args.number(&flag)?,
            "--capacity" => capacity = args.number(&flag)?,
            "--auth-timeout" => auth_timeout = args.number(&flag)?,
            "--stall-timeout" => stall_timeout = args.number(&flag)?,
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
    if auth_timeout == 0 || stall_timeout == 0 {
        return Err("--auth-timeout and --stall-timeout must be at least 1".into());
    }
    if role == Some("login") {
        let cfg = login::LoginConfig {
            listen: listen
                .parse()
                .map_err(|_| format!("--listen: {listen:?} is not ADDR:PORT"))?,
            passwd: passwd.ok_or("login needs --passwd FILE")?,
            tracker_socket,
            auth_timeout: Duration::from_secs(auth_timeout),
        };
        return Ok(Some(Box::new(move || login::run(cfg))));
    }
    let maildir = maildir.ok_or("mail needs --maildir PATTERN")?;
    if capacity == 0 {
        return Err("--capacity must be at least 1".into());
    }
    let cfg = mail::MailConfig {
        tracker_socket,
        idle_sockets: if idle_sockets.is_empty() {
            vec![runtime_dir.join("park")]
        } else {
            idle_sockets
        },
        maildir,
        park_after: (park_after > 0).then(|| Duration::from_secs(park_after)),
        keepalive_secs: keepalive,
        capacity,
        stall_timeout: Duration::from_secs(stall_timeout),
    };
    Ok(Some(Box::new(move || mail::run(cfg))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_tells_the_bounds_as_they_are() {
        let kib = format!("{} KiB", bounds::MAX_QUEUED_OUTPUT / 1024);
        assert_eq!(USAGE.matches(&kib).count(), 2, "{USAGE}");
        let auth = bounds::DEFAULT_AUTH_TIMEOUT.as_secs();
        let stall = bounds::DEFAULT_STALL_TIMEOUT.as_secs();
        for (flag, default) in [("--auth-timeout", auth), ("--stall-timeout", stall)] {
            let at = USAGE.find(flag).unwrap();
            let tail = &USAGE[at..];
            let end = tail.find("]").unwrap();
            assert!(
                tail[..end].ends_with(&format!("[default: {default}")),
                "{flag}: {}",
                &tail[..end]
            );
        }
    }
}
