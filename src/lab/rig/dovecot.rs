//! A private Dovecot 2.3 for the bench and the tests: own base_dir, own
//! port on 127.0.0.1, passwd-file users, Maildir under a private dir,
//! hibernation after 1 s, and either imap-idle or Dovecot's own
//! imap-hibernate as the service. Needs Dovecot installed and root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{procfs, wait_until, PrivateDir};
use crate::proto::native::Stats;

pub const PASSWORD: &str = "secret";

/// The snippet operators install, used as it is (paths substituted).
const SNIPPET: &str = include_str!("../../../contrib/dovecot/95-imap-idle.conf");

pub fn installed() -> bool {
    Path::new("/usr/sbin/dovecot").exists()
}

/// Raise the per-uid inotify instance limit: every hibernated client of
/// Dovecot holds one (its notify fd), and all mail runs as one uid here.
pub fn raise_inotify_instances(at_least: u64) -> Result<(), String> {
    let path = "/proc/sys/fs/inotify/max_user_instances";
    let now: u64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if now < at_least {
        io(
            "raising fs.inotify.max_user_instances",
            std::fs::write(path, at_least.to_string()),
        )?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hibernation {
    /// Our binary as Dovecot's imap-hibernate service executable.
    ImapIdle,
    /// Dovecot's own imap-hibernate.
    Dovecot,
    /// Dovecot's listener disabled (`mode = 0`); our binary started on its
    /// own with `--dovecot-base-dir`, binding the listener itself.
    Standalone,
    /// No hibernation: every idle client keeps its imap process.
    Off,
}

/// The imap-hibernate service's limits; `None` keeps what the snippet (or
/// Dovecot's default) says. With `client_limit` C and `process_limit` P
/// the master starts another hibernation process whenever every running
/// one holds C clients, up to P processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceLimits {
    pub client_limit: Option<u32>,
    pub process_limit: Option<u32>,
}

impl ServiceLimits {
    /// A later `service imap-hibernate` section: Dovecot merges it into
    /// the earlier one, its settings winning.
    fn conf(&self) -> String {
        let set = [
            ("client_limit", self.client_limit),
            ("process_limit", self.process_limit),
        ];
        let lines: String = set
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("  {k} = {v}\n")))
            .collect();
        if lines.is_empty() {
            return lines;
        }
        format!("service imap-hibernate {{\n{lines}}}\n")
    }
}

pub struct Dovecot {
    pub dir: PathBuf,
    conf: PathBuf,
    pub port: u16,
    pub base: PathBuf,
    /// imap-idle's runtime directory: `park`, and `park.PID` for each
    /// further process the master starts.
    pub run_dir: PathBuf,
    pub stats_socket: PathBuf,
    hibernation: Hibernation,
    standalone: Option<std::process::Child>,
    _private: PrivateDir,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn chown(path: &Path, user: &str) -> Result<(), String> {
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no user {user}"))?;
    nix::unistd::chown(path, Some(u.uid), Some(u.gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

fn io<T>(what: impl std::fmt::Display, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

impl Dovecot {
    /// Start Dovecot (it must be installed, and we must be root); the
    /// imap-idle binary used is `idle_bin`; idle clients get `* OK Still
    /// here` every `keepalive_secs` (Dovecot's imap_idle_notify_interval).
    pub fn start(
        users: &[String],
        hibernation: Hibernation,
        idle_bin: &Path,
        keepalive_secs: u32,
    ) -> Result<Dovecot, String> {
        let limits = ServiceLimits::default();
        Dovecot::start_with(users, hibernation, idle_bin, keepalive_secs, limits)
    }

    /// [`Dovecot::start`] with the imap-hibernate service's limits set.
    pub fn start_with(
        users: &[String],
        hibernation: Hibernation,
        idle_bin: &Path,
        keepalive_secs: u32,
        limits: ServiceLimits,
    ) -> Result<Dovecot, String> {
        let private = PrivateDir::new("dovecot")?;
        let dir = private.path().to_path_buf();
        let d = dir.as_path();
        for sub in ["bin", "base", "state", "mail", "idle-run"] {
            io(sub, std::fs::create_dir(d.join(sub)))?;
        }
        chown(&d.join("mail"), "nobody")?;
        // Under Dovecot's master imap-idle becomes the dovecot user, as
        // Dovecot's own imap-hibernate does; standalone it is us.
        if !matches!(hibernation, Hibernation::Standalone) {
            chown(&d.join("idle-run"), "dovecot")?;
        }
        // The service runs as the dovecot user: our copy is where it can
        // reach it.
        let bin = d.join("bin/imap-idle");
        io("copying imap-idle", std::fs::copy(idle_bin, &bin))?;
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}\n"))
            .collect();
        io("passwd", std::fs::write(d.join("passwd"), passwd))?;
        let port = free_port()?;
        let service = match hibernation {
            // The snippet operators copy, with our paths: proves it works.
            Hibernation::ImapIdle => SNIPPET
                .replace("/usr/local/bin/imap-idle", &bin.display().to_string())
                .replace(
                    "--runtime-dir /run/imap-idle",
                    &format!(
                        "--runtime-dir {} --log-level debug",
                        d.join("idle-run").display()
                    ),
                )
                .replace(
                    "imap_hibernate_timeout = 30s",
                    "imap_hibernate_timeout = 1s",
                ),
            Hibernation::Dovecot => String::new(),
            // Later settings win in Dovecot's config: this turns it off.
            Hibernation::Off => "imap_hibernate_timeout = 0\n".into(),
            Hibernation::Standalone => {
                "service imap-hibernate {\n  unix_listener imap-hibernate {\n    mode = 0\n  }\n}\n"
                    .into()
            }
        };
        let standalone = matches!(hibernation, Hibernation::Standalone);
        // The snippet sets this for imap-idle; the others need it too.
        let imap_master = match hibernation {
            Hibernation::ImapIdle => "",
            _ => "service imap {\n  unix_listener imap-master {\n    user = $default_internal_user\n  }\n}\n",
        };
        let conf = d.join("dovecot.conf");
        let text = format!(
            "base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_max_userip_connections = 2000
default_process_limit = 3000
default_client_limit = 5000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%u
}}
mail_location = maildir:{d}/mail/%u/Maildir
imap_idle_notify_interval = {keepalive_secs} secs
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  service_count = 0
  client_limit = 2000
}}
service imap {{
  process_limit = 3000
}}
imap_hibernate_timeout = 1s
{service}{imap_master}{limits}",
            d = d.display(),
            limits = limits.conf()
        );
        io("dovecot.conf", std::fs::write(&conf, text))?;
        let ok = io(
            "running dovecot",
            Command::new("dovecot").arg("-c").arg(&conf).status(),
        )?;
        if !ok.success() {
            return Err(format!("dovecot did not start: {ok}"));
        }
        let mut dc = Dovecot {
            port,
            base: d.join("base"),
            run_dir: d.join("idle-run"),
            stats_socket: d.join("idle-run/park"),
            hibernation,
            conf,
            dir: dir.clone(),
            standalone: None,
            _private: private,
        };
        if standalone {
            let log = io("log", std::fs::File::create(dir.join("imap-idle.log")))?;
            let child = Command::new(idle_bin)
                .args(["--dovecot", "--log-level", "debug", "--dovecot-base-dir"])
                .arg(&dc.base)
                .arg("--runtime-dir")
                .arg(dir.join("idle-run"))
                .stderr(log)
                .spawn();
            dc.standalone = Some(io("starting imap-idle", child)?);
            let path = dc.base.join("imap-hibernate");
            wait_until(
                || path.exists(),
                "imap-idle to bind imap-hibernate",
                Duration::from_secs(10),
            )?;
        }
        wait_until(
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "dovecot to listen",
            Duration::from_secs(10),
        )?;
        Ok(dc)
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user).join("Maildir")
    }

    /// Deliver a message the way an MDA does: write in tmp/, rename into
    /// new/. The files belong to the mail uid, as Dovecot's own would.
    pub fn deliver(&self, user: &str, name: &str) -> Result<(), String> {
        let md = self.maildir(user);
        let tmp = md.join("tmp").join(name);
        io(
            "writing a message",
            std::fs::write(&tmp, "Subject: test\r\n\r\nhello\r\n"),
        )?;
        chown(&tmp, "nobody")?;
        io(
            "delivering",
            std::fs::rename(&tmp, md.join("new").join(name)),
        )
    }

    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("dovecot.log"), read("imap-idle.log"))
    }

    /// Our daemons' counters, summed over every imap-idle process (not
    /// with Hibernation::Dovecot).
    pub fn stats(&self) -> Result<Stats, String> {
        let each = self.stats_each()?;
        if each.is_empty() {
            return Err(format!(
                "no imap-idle answers in {}",
                self.run_dir.display()
            ));
        }
        let mut sum = Stats::default();
        for (_, s) in &each {
            sum.add(s);
        }
        Ok(sum)
    }

    /// Each imap-idle process's counters, with its park socket.
    pub fn stats_each(&self) -> Result<Vec<(PathBuf, Stats)>, String> {
        crate::link::stats_in(&self.run_dir).map_err(|(p, e)| format!("{}: {e}", p.display()))
    }

    /// Clients hibernated right now, measured: with imap-idle, the sum of
    /// its processes' parked counts; with Dovecot's own imap-hibernate (or
    /// none), the TCP sockets its processes hold, read from /proc (they
    /// hold nothing else over TCP).
    pub fn hibernated(&self) -> Result<usize, String> {
        match self.hibernation {
            Hibernation::ImapIdle | Hibernation::Standalone => Ok(self
                .stats_each()?
                .iter()
                .map(|(_, s)| s.parked as usize)
                .sum()),
            Hibernation::Dovecot | Hibernation::Off => Ok(self
                .processes("dovecot/imap-hibernate")
                .iter()
                .map(|&p| procfs::tcp_sockets(p as u32))
                .sum()),
        }
    }

    /// The imap-idle started standalone, while it is ours.
    pub fn standalone_pid(&self) -> Option<u32> {
        self.standalone.as_ref().map(|c| c.id())
    }

    pub fn master_pid(&self) -> i32 {
        std::fs::read_to_string(self.base.join("master.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Child processes of this Dovecot whose title's first word is `name`.
    pub fn processes(&self, name: &str) -> Vec<i32> {
        procfs::children_named(self.master_pid() as u32, name)
            .into_iter()
            .map(|p| p as i32)
            .collect()
    }

    pub fn fds(pid: i32) -> usize {
        procfs::fds(pid as u32)
    }

    /// TCP sockets (IMAP clients) the process holds.
    pub fn tcp_sockets(pid: i32) -> usize {
        procfs::tcp_sockets(pid as u32)
    }

    /// The fd count once it stops moving (our own stats connection may
    /// still be closing).
    pub fn settled_fds(pid: i32) -> usize {
        procfs::settled_fds(pid as u32)
    }

    pub fn wait_for(
        &self,
        cond: impl FnMut() -> bool,
        what: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        wait_until(cond, what, timeout)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut c) = self.standalone.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("dovecot")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .status();
        // Give the master time to take its children down before the
        // directory goes away.
        for _ in 0..100 {
            if !self.base.join("master.pid").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
