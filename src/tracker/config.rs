//! Command-line flags of imap-tracker.

use std::path::PathBuf;

use super::policy::Policy;
use crate::args::Args;
use crate::idle::config::default_runtime_dir;

pub const USAGE: &str = "\
Usage: imap-tracker [OPTIONS]
       imap-tracker who [USER] [--runtime-dir DIR | --control-socket PATH]

Routes authenticated IMAP connections from login processes to mail
processes, gives each user a 128-bit cookie, and takes connections back
from imap-idle only with the right cookie.

Options:
  --runtime-dir DIR       directory for the default sockets [default: as
                          imap-idle: $RUNTIME_DIRECTORY, else /run/imap-idle
                          as root, else $XDG_RUNTIME_DIR/imap-idle, else
                          /tmp/imap-idle-UID]; created mode 0750 if missing
  --socket PATH           where login processes, mail processes and
                          imap-idle connect [default: RUNTIME_DIR/tracker]
  --control-socket PATH   where `imap-tracker who` asks
                          [default: RUNTIME_DIR/tracker-control], mode 0600
  --idle-socket PATH      imap-idle's park socket, asked about parked
                          connections by `who`; once per imap-idle when
                          several serve this tracker [default:
                          RUNTIME_DIR/park]
  --socket-mode MODE      permissions of --socket, octal [default: 0660]
  --cookie-file PATH      users' cookies, kept across a restart of the
                          tracker (mode 0600, replaced atomically)
                          [default: RUNTIME_DIR/tracker.cookies]
  --rejoin-secs N         after a restart, how long a kept cookie waits for
                          imap-idle or a mail process to report one of its
                          user's connections before it is dropped [default: 30]
  --policy POLICY         user: a mail process serves one user only;
                          uid: one UNIX uid only; prefer-user: prefer a
                          process that already serves the user, else the
                          least loaded [default: prefer-user]
  --spawn CMD             start a mail process with `sh -c CMD` when none may
                          take a connection (IMAP_TRACKER_SOCKET is set to
                          --socket in its environment)
  --max-processes N       most mail processes alive or starting at once, for
                          --spawn [default: 16]
  --wait-secs N           how long a login or a returned connection waits for
                          a mail process before it is refused [default: 10]

Who may take which role (checked with SO_PEERCRED when a peer says Hello;
root always may; without its flag a role is the tracker's own uid's only):
  --login-uid UID[,UID]   login processes: they hand over authenticated clients
  --mail-uid UID[,UID]    mail processes; one may register only its own uid
                          and receives only that uid's users
  --idle-uid UID          imap-idle: returns clients and reports them gone
  --admin-group NAME      admins (`who`) besides root and the tracker's uid:
                          peers whose gid is NAME's or who are listed in it;
                          the control socket is then group NAME, mode 0660

Bounds (each logged when reached; past one, a newcomer is refused):
  --max-peers N           connections on --socket at once [default: 4096]
  --max-waiting N         clients waiting for a mail process [default: 10000]
  --max-outbox BYTES      answers a peer leaves unread before it is closed
                          [default: 4194304]

Other:
  --log-level LEVEL       error, warn, info, debug or trace [default: info;
                          RUST_LOG overrides it when set]
  -h, --help              print this help
  -V, --version           print the version

Signals: SIGTERM/SIGINT stop the tracker; SIGUSR1 logs a one-line summary.

Under systemd: sockets passed by socket activation (LISTEN_FDS, named
`tracker` and `tracker-control` by FileDescriptorName=, or the first and
second) are used instead of binding --socket and --control-socket;
READY=1, STATUS=, STOPPING=1 and watchdog pings go to $NOTIFY_SOCKET.
See imap-tracker(8).
";

#[derive(Debug, Clone)]
pub struct Config {
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    /// Users' cookies, kept across a restart.
    pub cookie_file: PathBuf,
    /// After a restart, how long kept cookies wait to be claimed.
    pub rejoin_secs: u64,
    /// Every imap-idle's park socket, for `who`.
    pub idle_sockets: Vec<PathBuf>,
    pub socket_mode: u32,
    pub policy: Policy,
    pub spawn: Option<String>,
    pub max_processes: usize,
    pub wait_secs: u64,
    /// Role credentials; None: the tracker's own uid (and root) only.
    pub login_uids: Option<Vec<u32>>,
    pub mail_uids: Option<Vec<u32>>,
    pub idle_uid: Option<u32>,
    pub admin_group: Option<String>,
    pub max_peers: usize,
    pub max_waiting: usize,
    pub max_outbox: usize,
    pub log_level: String,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    Who {
        user: Option<String>,
        control_socket: PathBuf,
    },
    Help,
    Version,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args::new(args);
    let mut runtime_dir = None;
    let mut socket = None;
    let mut control_socket = None;
    let mut cookie_file = None;
    let mut rejoin_secs = 30;
    let mut idle_sockets = Vec::new();
    let mut socket_mode = 0o660;
    let mut policy = Policy::PreferUser;
    let mut spawn = None;
    let mut max_processes = 16;
    let mut wait_secs = 10;
    let mut login_uids = None;
    let mut mail_uids = None;
    let mut idle_uid = None;
    let mut admin_group = None;
    let mut max_peers = DEFAULT_MAX_PEERS;
    let mut max_waiting = DEFAULT_MAX_WAITING;
    let mut max_outbox = DEFAULT_MAX_OUTBOX;
    let mut log_level = "info".to_owned();
    let mut who = false;
    let mut who_user = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "who" if !who => who = true,
            "--runtime-dir" => runtime_dir = Some(PathBuf::from(args.value(&flag)?)),
            "--socket" => socket = Some(PathBuf::from(args.value(&flag)?)),
            "--control-socket" => control_socket = Some(PathBuf::from(args.value(&flag)?)),
            "--cookie-file" => cookie_file = Some(PathBuf::from(args.value(&flag)?)),
            "--rejoin-secs" => rejoin_secs = args.number(&flag)?,
            "--idle-socket" => idle_sockets.push(PathBuf::from(args.value(&flag)?)),
            "--socket-mode" => {
                let v = args.value(&flag)?;
                socket_mode = u32::from_str_radix(&v, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("--socket-mode: {v:?} is not an octal mode"))?;
            }
            "--policy" => {
                let v = args.value(&flag)?;
                policy = Policy::parse(&v).ok_or_else(|| {
                    format!("--policy: {v:?} is not one of user, uid, prefer-user")
                })?;
            }
            "--spawn" => spawn = Some(args.value(&flag)?),
            "--max-processes" => {
                max_processes = args.number(&flag)?;
                if max_processes == 0 {
                    return Err("--max-processes must be at least 1".into());
                }
            }
            "--wait-secs" => wait_secs = args.number(&flag)?,
            "--allow-uid" => {
                return Err("--allow-uid is gone: each role has its own uids now, \
                            --login-uid, --mail-uid and --idle-uid (see --help)"
                    .into())
            }
            "--login-uid" => login_uids = Some(uid_list(&flag, &args.value(&flag)?)?),
            "--mail-uid" => mail_uids = Some(uid_list(&flag, &args.value(&flag)?)?),
            "--idle-uid" => idle_uid = Some(args.number(&flag)?),
            "--admin-group" => admin_group = Some(args.value(&flag)?),
            "--max-peers" => max_peers = at_least_one(&flag, args.number(&flag)?)?,
            "--max-waiting" => max_waiting = args.number(&flag)?,
            "--max-outbox" => max_outbox = at_least_one(&flag, args.number(&flag)?)?,
            "--log-level" => log_level = args.log_level(&flag)?,
            u if who && who_user.is_none() && !u.starts_with('-') => who_user = Some(flag),
            _ => return Err(format!("unknown argument {flag:?} (see --help)")),
        }
    }
    let runtime_dir = runtime_dir.unwrap_or_else(default_runtime_dir);
    let control_socket = control_socket.unwrap_or_else(|| runtime_dir.join("tracker-control"));
    if who {
        return Ok(Parsed::Who {
            user: who_user,
            control_socket,
        });
    }
    if idle_sockets.is_empty() {
        idle_sockets.push(runtime_dir.join("park"));
    }
    Ok(Parsed::Run(Box::new(Config {
        socket: socket.unwrap_or_else(|| runtime_dir.join("tracker")),
        idle_sockets,
        control_socket,
        cookie_file: cookie_file.unwrap_or_else(|| runtime_dir.join("tracker.cookies")),
        rejoin_secs,
        runtime_dir,
        socket_mode,
        policy,
        spawn,
        max_processes,
        wait_secs,
        login_uids,
        mail_uids,
        idle_uid,
        admin_group,
        max_peers,
        max_waiting,
        max_outbox,
        log_level,
    })))
}

/// Connections on the main socket at once, by default.
pub const DEFAULT_MAX_PEERS: usize = 4096;
/// Clients waiting for a mail process, by default.
pub const DEFAULT_MAX_WAITING: usize = 10_000;
/// Bytes of answers one peer may leave unread, by default.
pub const DEFAULT_MAX_OUTBOX: usize = 4 << 20;

fn uid_list(flag: &str, v: &str) -> Result<Vec<u32>, String> {
    v.split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| format!("{flag}: {v:?} is not a list of uids"))
}

fn at_least_one(flag: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        return Err(format!("{flag} must be at least 1"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn defaults_and_flags() {
        let Ok(Parsed::Run(c)) = parse(s(&["--runtime-dir", "/x", "--policy=uid"])) else {
            panic!()
        };
        assert_eq!(c.socket, PathBuf::from("/x/tracker"));
        assert_eq!(c.control_socket, PathBuf::from("/x/tracker-control"));
        assert_eq!(c.idle_sockets, [PathBuf::from("/x/park")]);
        assert_eq!(c.policy, Policy::Uid);
        assert_eq!(c.socket_mode, 0o660);
        assert!(parse(s(&["--policy", "random"])).is_err());
        assert!(parse(s(&["--login-uid", "1,x"])).is_err());
        assert!(parse(s(&["--socket-mode", "999"])).is_err());
        assert_eq!(c.login_uids, None);
        assert_eq!(c.max_peers, DEFAULT_MAX_PEERS);
        let Ok(Parsed::Run(c)) = parse(s(&[
            "--login-uid",
            "8,9",
            "--mail-uid=10",
            "--idle-uid",
            "11",
            "--admin-group",
            "staff",
        ])) else {
            panic!()
        };
        assert_eq!(c.login_uids, Some(vec![8, 9]));
        assert_eq!(c.mail_uids, Some(vec![10]));
        assert_eq!(c.idle_uid, Some(11));
        assert_eq!(c.admin_group.as_deref(), Some("staff"));
        let gone = parse(s(&["--allow-uid", "8"])).unwrap_err();
        assert!(
            gone.contains("--login-uid") && gone.contains("--mail-uid"),
            "{gone}"
        );
        assert!(parse(s(&["--max-peers", "0"])).is_err());
    }

    #[test]
    fn several_idle_sockets() {
        let Ok(Parsed::Run(c)) =
            parse(s(&["--idle-socket", "/a/park", "--idle-socket", "/b/park"]))
        else {
            panic!()
        };
        assert_eq!(
            c.idle_sockets,
            [PathBuf::from("/a/park"), PathBuf::from("/b/park")]
        );
    }

    #[test]
    fn who_takes_a_user() {
        let Ok(Parsed::Who {
            user,
            control_socket,
        }) = parse(s(&["who", "alice", "--runtime-dir", "/r"]))
        else {
            panic!()
        };
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(control_socket, PathBuf::from("/r/tracker-control"));
        assert!(parse(s(&["who", "a", "b"])).is_err());
    }
}
