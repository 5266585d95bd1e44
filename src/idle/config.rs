//! Command-line flags of the imap-idle daemon.

use std::path::PathBuf;

use super::core::Tuning;

pub const USAGE: &str = "\
Usage: imap-idle [OPTIONS]

Parks idle IMAP connections handed over by mail processes, and returns
them to the tracker when the client types or the mailbox changes.

Options:
  --runtime-dir DIR      directory for the default sockets
                         [default: $RUNTIME_DIRECTORY, else /run/imap-idle as
                         root, else $XDG_RUNTIME_DIR/imap-idle, else
                         /tmp/imap-idle-UID]; created mode 0750 if missing;
                         refused if another user owns it or others may
                         write to it
  --runtime-dir-mode MODE  octal mode the runtime directory is created
                         with, and the most an existing one may allow
                         others [default: 0750]
  --park-socket PATH     where mail processes park connections
                         [default: RUNTIME_DIR/park]
  --park-socket-mode MODE  octal mode of the park socket [default: 0660]
  --park-socket-group NAME group of the park socket [default: ours]
  --mail-uid UID[,UID..] uids (or user names) whose processes may park
                         clients [default: none besides root and our own]
  --admin-group NAME     members may ask for `who` and statistics [default:
                         none besides root and our own uid]
  --max-controls N       control connections at once [default: what the
                         open-file limit leaves, at most 512]
  --max-controls-per-uid N  control connections one uid other than root
                         and ours may hold open [default: 64]
  --handshake-timeout SECS  a control connection that has not said Hello
                         by then is closed [default: 10]
  --tracker-socket PATH  where woken connections are returned; the link
                         stays up while anybody is parked, and each new
                         link first reports what is held (a restarted
                         tracker knows them again) [default:
                         RUNTIME_DIR/tracker]
  --max-parked N         most connections parked at once [default: the
                         open-file limit (soft raised to hard) minus a
                         reserve for control connections (and, with
                         --dovecot, hand-offs, imap-master links and
                         closing); with --dovecot, kept notify fds share
                         this room]
  --log-level LEVEL      error, warn, info, debug or trace [default: info;
                         RUST_LOG overrides it when set]
  --dovecot              speak Dovecot's (2.3, 2.4) hibernation protocol instead of
                         the native one: take clients from imap processes
                         on BASE_DIR/imap-hibernate and return them through
                         BASE_DIR/imap-master. Started by Dovecot's master
                         as the imap-hibernate executable it uses the
                         listener the master passes; otherwise it binds
                         BASE_DIR/imap-hibernate itself. The park socket
                         then only answers statistics requests. Imap
                         processes' notify fds are shared per mailbox, or
                         with CAP_DAC_READ_SEARCH (setcap
                         cap_dac_read_search+ep on the binary: kept alone
                         when Dovecot's master makes us its user) reopened
                         by handle and closed.
  --dovecot-base-dir DIR Dovecot's base_dir [default: the directory of the
                         listener the master passes; required standalone]
  --dovecot-group NAME   standalone: group of BASE_DIR/imap-hibernate (mode
                         0660), as Dovecot's own [default: dovecot]
  --dovecot-shutdown-clients yes|no  set as Dovecot's shutdown_clients:
                         with yes, when Dovecot's master stops every parked
                         client is handed back at once (as Dovecot's own
                         imap-hibernate does); with no they stay parked and
                         go back to whichever master runs when they wake. A
                         reload itself wakes nobody. [default: yes, as
                         Dovecot's own default]
  --master-connections N  with --dovecot: imap-master connections open at
                         once, each returning one woken client (the rest
                         wait their turn) [default: 16]
  --take-over            take over from the imap-idle running on the park
                         socket (same uid only): its listening sockets and
                         every parked connection, none woken; it exits
                         once it holds nothing. Not under Dovecot's master
  -h, --help             print this help
  -V, --version          print the version

Timing (the defaults are Dovecot imap-hibernate's):
  --keepalive-min SECS   `* OK Still here` at most this often, whatever
                         interval the session asks for (battery) [default: 1]
  --keepalive-max SECS   at least this often, also for sessions that ask for
                         none (NAT and firewall timeouts) [default: as the
                         session asks]
  --return-timeout-input SECS  a woken client that typed is given up (BYE)
                         if the return path has not taken it by then
                         [default: 10; 40 with --dovecot, as Dovecot's own
                         imap-hibernate: 10 s to connect, 30 s to answer]
  --return-timeout-change SECS  the same for one woken by a mailbox change
                         [default: 300; 330 with --dovecot]
  --return-timeout-shutdown SECS  at SIGTERM, how long returns may take
                         before whoever is left gets a BYE [default: 30]
  --return-retry-min MS  first wait before a refused return is sent again,
                         doubling each time [default: 100]
  --return-retry-max MS  longest such wait [default: 2000]
  --return-window N      returns sent to the tracker and not yet answered,
                         at most [default: 64]

Signals: SIGTERM/SIGINT return every parked connection to the tracker and
exit (a second one gives up at once); SIGUSR1 logs a one-line summary;
SIGUSR2 starts this program again with the same arguments plus
--take-over, which takes every parked connection over (a new version
replaces the running one without waking anybody).
Under Dovecot's master, SIGINT (\"you look idle\") is obeyed only with
nothing parked, and a closed death pipe (a reload or a stop) means: take
no new clients, keep the parked ones, exit when none is left.

Under systemd: a park socket passed by socket activation (LISTEN_FDS, named
`park` by FileDescriptorName=, or the first when unnamed) is used instead
of binding --park-socket; READY=1, STATUS=, STOPPING=1 and watchdog pings
go to $NOTIFY_SOCKET. See imap-idle(8).
";

#[derive(Debug, Clone)]
pub struct Config {
    pub runtime_dir: PathBuf,
    pub park_socket: PathBuf,
    pub tracker_socket: PathBuf,
    pub max_parked: Option<usize>,
    pub log_level: String,
    pub dovecot: bool,
    pub dovecot_base_dir: Option<PathBuf>,
    pub dovecot_group: String,
    /// Return everyone when Dovecot's master stops, as its own
    /// imap-hibernate does with `shutdown_clients = yes`.
    pub dovecot_shutdown_clients: bool,
    pub runtime_dir_mode: u32,
    pub park_socket_mode: u32,
    pub park_socket_group: Option<String>,
    pub mail_uids: Vec<u32>,
    pub admin_group: Option<String>,
    pub max_controls: Option<usize>,
    pub max_controls_per_uid: usize,
    pub handshake_timeout_secs: u64,
    pub tuning: Tuning,
    /// Returns in flight to the tracker, at most.
    pub return_window: usize,
    pub master_connections: usize,
    pub take_over: bool,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    Help,
    Version,
}

pub fn default_runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd's RuntimeDirectory= may list several, colon-separated.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return PathBuf::from("/run/imap-idle");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("imap-idle"),
        _ => PathBuf::from(format!("/tmp/imap-idle-{uid}")),
    }
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut runtime_dir = None;
    let mut park_socket = None;
    let mut tracker_socket = None;
    let mut max_parked = None;
    let mut log_level = "info".to_owned();
    let mut dovecot = false;
    let mut take_over = false;
    let mut dovecot_base_dir = None;
    let mut dovecot_group = "dovecot".to_owned();
    let mut dovecot_shutdown_clients = true;
    let mut park_socket_mode = 0o660;
    let mut runtime_dir_mode = 0o750;
    let mut park_socket_group = None;
    let mut mail_uids = Vec::new();
    let mut admin_group = None;
    let mut max_controls = None;
    let mut max_controls_per_uid = 64;
    let mut handshake_timeout_secs = 10;
    let mut tuning = Tuning::default();
    // Their defaults depend on --dovecot, which may come later.
    let (mut input_timeout, mut change_timeout) = (None, None);
    let mut return_window = 64;
    let mut master_connections = crate::idle::budget::MAX_MASTERS;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--runtime-dir" => runtime_dir = Some(PathBuf::from(value()?)),
            "--park-socket" => park_socket = Some(PathBuf::from(value()?)),
            "--tracker-socket" => tracker_socket = Some(PathBuf::from(value()?)),
            "--max-parked" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--max-parked: {v:?} is not a number"))?;
                if n == 0 {
                    return Err("--max-parked must be at least 1".into());
                }
                max_parked = Some(n);
            }
            "--dovecot" => dovecot = true,
            "--take-over" => take_over = true,
            "--dovecot-base-dir" => dovecot_base_dir = Some(PathBuf::from(value()?)),
            "--dovecot-group" => dovecot_group = value()?,
            "--dovecot-shutdown-clients" => {
                dovecot_shutdown_clients = match value()?.as_str() {
                    "yes" => true,
                    "no" => false,
                    other => {
                        return Err(format!(
                            "--dovecot-shutdown-clients takes yes or no, not {other:?}"
                        ))
                    }
                }
            }
            "--park-socket-mode" => park_socket_mode = octal(&flag, &value()?)?,
            "--runtime-dir-mode" => runtime_dir_mode = octal(&flag, &value()?)?,
            "--park-socket-group" => park_socket_group = Some(value()?),
            "--mail-uid" => mail_uids.extend(crate::access::parse_uids(&value()?)?),
            "--admin-group" => admin_group = Some(value()?),
            "--max-controls" => max_controls = Some(number(&flag, &value()?)?),
            "--max-controls-per-uid" => {
                max_controls_per_uid = number(&flag, &value()?)?;
            }
            "--handshake-timeout" => {
                handshake_timeout_secs = number(&flag, &value()?)? as u64;
            }
            "--keepalive-min" => tuning.keepalive_min_secs = secs(&flag, &value()?)? as u32,
            "--keepalive-max" => tuning.keepalive_max_secs = Some(secs(&flag, &value()?)? as u32),
            "--return-timeout-input" => input_timeout = Some(ms(&flag, &value()?)?),
            "--return-timeout-change" => change_timeout = Some(ms(&flag, &value()?)?),
            "--return-timeout-shutdown" => tuning.give_up_at_shutdown_ms = ms(&flag, &value()?)?,
            "--return-retry-min" => tuning.backoff_min_ms = number(&flag, &value()?)? as u64,
            "--return-retry-max" => tuning.backoff_max_ms = number(&flag, &value()?)? as u64,
            "--return-window" => return_window = number(&flag, &value()?)?,
            "--master-connections" => master_connections = number(&flag, &value()?)?,
            "--log-level" => {
                let v = value()?;
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(format!("--log-level: unknown level {v:?}"));
                }
                log_level = v;
            }
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        }
    }
    let defaults = Tuning::defaults(dovecot);
    tuning.give_up_with_input_ms = input_timeout.unwrap_or(defaults.give_up_with_input_ms);
    tuning.give_up_without_input_ms = change_timeout.unwrap_or(defaults.give_up_without_input_ms);
    tuning.validate()?;
    let runtime_dir = runtime_dir.unwrap_or_else(default_runtime_dir);
    Ok(Parsed::Run(Box::new(Config {
        park_socket: park_socket.unwrap_or_else(|| runtime_dir.join("park")),
        tracker_socket: tracker_socket.unwrap_or_else(|| runtime_dir.join("tracker")),
        runtime_dir,
        max_parked,
        log_level,
        dovecot,
        dovecot_base_dir,
        dovecot_group,
        dovecot_shutdown_clients,
        runtime_dir_mode,
        park_socket_mode,
        park_socket_group,
        mail_uids,
        admin_group,
        max_controls,
        max_controls_per_uid,
        handshake_timeout_secs,
        tuning,
        return_window,
        master_connections,
        take_over,
    })))
}

fn octal(flag: &str, v: &str) -> Result<u32, String> {
    u32::from_str_radix(v.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{flag}: {v:?} is not an octal mode"))
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not a positive number")),
    }
}

/// Whole seconds that fit a keepalive interval (a `u32`), at least 1.
fn secs(flag: &str, v: &str) -> Result<u64, String> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n as u64),
        _ => Err(format!("{flag}: {v:?} is not a positive number of seconds")),
    }
}

/// Seconds given, milliseconds kept.
fn ms(flag: &str, v: &str) -> Result<u64, String> {
    Ok(secs(flag, v)? * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_runtime_dir() {
        let c = run(&["--runtime-dir", "/x"]).unwrap();
        assert_eq!(c.park_socket, PathBuf::from("/x/park"));
        assert_eq!(c.tracker_socket, PathBuf::from("/x/tracker"));
        assert_eq!(c.max_parked, None);
    }

    #[test]
    fn both_value_forms_and_errors() {
        let c = run(&["--max-parked=5", "--park-socket", "/p"]).unwrap();
        assert_eq!(c.max_parked, Some(5));
        assert_eq!(c.park_socket, PathBuf::from("/p"));
        assert!(run(&["--max-parked", "x"]).is_err());
        assert!(run(&["--max-parked"]).is_err());
        assert!(run(&["--bogus"]).is_err());
        assert!(run(&["--log-level", "loud"]).is_err());
        assert!(matches!(parse(["--help".to_string()]), Ok(Parsed::Help)));
        assert_eq!(run(&[]).unwrap().master_connections, 16);
        assert_eq!(
            run(&["--master-connections", "16"])
                .unwrap()
                .master_connections,
            16
        );
        assert!(run(&["--master-connections", "0"]).is_err());
    }

    #[test]
    fn timing_flags_default_to_the_old_constants_and_are_checked() {
        let c = run(&[]).unwrap();
        assert_eq!(c.tuning, Tuning::default());
        assert_eq!(c.tuning.give_up_with_input_ms, 10_000);
        assert_eq!(c.tuning.give_up_without_input_ms, 300_000);
        assert_eq!(c.tuning.give_up_at_shutdown_ms, 30_000);
        assert_eq!(
            (c.tuning.backoff_min_ms, c.tuning.backoff_max_ms),
            (100, 2000)
        );
        assert_eq!(c.return_window, 64);
        let c = run(&[
            "--keepalive-min=60",
            "--keepalive-max",
            "900",
            "--return-timeout-input=3",
            "--return-retry-min=50",
            "--return-window=8",
        ])
        .unwrap();
        assert_eq!(c.tuning.keepalive_min_secs, 60);
        assert_eq!(c.tuning.keepalive_max_secs, Some(900));
        assert_eq!(c.tuning.give_up_with_input_ms, 3000);
        assert_eq!(c.tuning.backoff_min_ms, 50);
        assert_eq!(c.return_window, 8);
        let e = run(&["--keepalive-min=60", "--keepalive-max=30"]).unwrap_err();
        assert!(e.contains("above"), "{e}");
        assert!(run(&["--keepalive-max=0"]).is_err());
        assert!(run(&["--return-timeout-change=-1"]).is_err());
        assert!(run(&["--return-retry-min=3000"]).is_err());
        assert!(run(&["--return-window=0"]).is_err());
    }

    #[test]
    fn under_dovecot_returns_get_dovecots_own_deadlines_unless_told() {
        let c = run(&["--dovecot"]).unwrap();
        assert_eq!(c.tuning.give_up_with_input_ms, 40_000);
        assert_eq!(c.tuning.give_up_without_input_ms, 330_000);
        assert_eq!(c.tuning.give_up_at_shutdown_ms, 30_000);
        let c = run(&["--return-timeout-input=5", "--dovecot"]).unwrap();
        assert_eq!(c.tuning.give_up_with_input_ms, 5_000);
        assert_eq!(c.tuning.give_up_without_input_ms, 330_000);
        let c = run(&["--dovecot", "--return-timeout-change", "60"]).unwrap();
        assert_eq!(c.tuning.give_up_with_input_ms, 40_000);
        assert_eq!(c.tuning.give_up_without_input_ms, 60_000);
    }
}
