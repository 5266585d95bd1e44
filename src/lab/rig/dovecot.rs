//! A private Dovecot (2.3 or 2.4, on the host or in a chroot) for the bench and the tests: own base_dir, own
//! port on 127.0.0.1, passwd-file users, Maildir under a private dir,
//! hibernation after 1 s, and either imap-idle or Dovecot's own
//! imap-hibernate as the service. Needs Dovecot installed and root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dovecot_conf::Conf;
pub use super::dovecot_conf::ServiceLimits;
pub use super::dovecot_root::{DovecotRoot, Version};
pub use super::inotify_limit::{raise_inotify_instances, InstanceLimit};
use super::{procfs, wait_until, PrivateDir};
use crate::proto::native::Stats;

pub const PASSWORD: &str = "secret";

/// Whether the Dovecot `IMAP_IDLE_DOVECOT_ROOT` names (else the host's) is there.
pub fn installed() -> bool {
    DovecotRoot::from_env().installed()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hibernation {
    /// Our binary as Dovecot's imap-hibernate service executable.
    ImapIdle,
    /// The same, the binary given CAP_DAC_READ_SEARCH (`setcap
    /// cap_dac_read_search+ep`): notify fds are reopened by handle.
    ImapIdleCap,
    /// Dovecot's own imap-hibernate.
    Dovecot,
    /// Dovecot's listener disabled (`mode = 0`); our binary started on its
    /// own with `--dovecot-base-dir`, binding the listener itself.
    Standalone,
    /// No hibernation: every idle client keeps its imap process.
    Off,
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
    /// uid and gid the mail belongs to.
    pub mail_owner: (u32, u32),
    root: DovecotRoot,
    version: Version,
    standalone: Option<std::process::Child>,
    _private: PrivateDir,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

fn io<T>(what: impl std::fmt::Display, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

impl Dovecot {
    /// Start Dovecot (it must be installed, and we must be root); the
    /// imap-idle binary used is `idle_bin`; idle clients get `* OK Still
    /// here` every `keepalive_secs` (Dovecot's imap_idle_notify_interval).
    /// The Dovecot is the one `IMAP_IDLE_DOVECOT_ROOT` names, else the host's.
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
        let root = DovecotRoot::from_env();
        Dovecot::start_in(&root, users, hibernation, idle_bin, keepalive_secs, limits)
    }

    /// [`Dovecot::start_with`] with the Dovecot in `root`: its config, base
    /// dir and mail are under it; the fields hold host paths.
    pub fn start_in(
        root: &DovecotRoot,
        users: &[String],
        hibernation: Hibernation,
        idle_bin: &Path,
        keepalive_secs: u32,
        limits: ServiceLimits,
    ) -> Result<Dovecot, String> {
        root.check()?;
        let version = root.version()?;
        let private = PrivateDir::new_in(&root.temp_dir(), "dovecot")?;
        let dir = private.path().to_path_buf();
        let d = dir.as_path();
        // What Dovecot sees: the same tree without the root in front.
        let inner = root.inner_path(d);
        let i = inner.as_path();
        for sub in ["bin", "base", "state", "mail", "idle-run"] {
            io(sub, std::fs::create_dir(d.join(sub)))?;
        }
        let mail_owner = match limits.own_mail_uid {
            true => super::unused_uid().map(|u| (u, u)).ok_or("no unused uid")?,
            false => root.user("nobody")?,
        };
        chown(&d.join("mail"), mail_owner)?;
        // Under Dovecot's master imap-idle becomes the dovecot user, as
        // Dovecot's own imap-hibernate does; standalone it is us.
        if hibernation != Hibernation::Standalone {
            root.chown(&d.join("idle-run"), "dovecot")?;
        }
        // The service runs as the dovecot user: our copy is where it can
        // reach it (and inside the root, where the master can).
        let bin = d.join("bin/imap-idle");
        io("copying imap-idle", std::fs::copy(idle_bin, &bin))?;
        if hibernation == Hibernation::ImapIdleCap {
            let granted = crate::sys::caps::grant_read_search(&bin);
            io("setcap cap_dac_read_search+ep", granted)?;
        }
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}\n"))
            .collect();
        io("passwd", std::fs::write(d.join("passwd"), passwd))?;
        let port = free_port()?;
        let internal_user = Conf::internal_user(version);
        let service = match hibernation {
            // The snippet operators copy, with our paths: proves it works.
            Hibernation::ImapIdle | Hibernation::ImapIdleCap => Conf::snippet(version)
                .replace(
                    "/usr/local/bin/imap-idle",
                    &i.join("bin/imap-idle").display().to_string(),
                )
                .replace(
                    "--runtime-dir /run/imap-idle",
                    &format!(
                        "--runtime-dir {} --log-level debug{}",
                        i.join("idle-run").display(),
                        limits.idle_args()
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
            Hibernation::ImapIdle | Hibernation::ImapIdleCap => String::new(),
            _ => format!("service imap {{\n  unix_listener imap-master {{\n    user = {internal_user}\n  }}\n}}\n"),
        };
        let conf = d.join("dovecot.conf");
        let tail = format!("{service}{imap_master}{}", limits.conf());
        let text = Conf {
            version,
            dir: i,
            port,
            keepalive_secs,
            mail_owner,
            tail: &tail,
        }
        .text();
        io("dovecot.conf", std::fs::write(&conf, text))?;
        let ok = io(
            "running dovecot",
            root.command("dovecot")
                .arg("-c")
                .arg(root.inner_path(&conf))
                .status(),
        )?;
        if !ok.success() {
            return Err(format!("dovecot {version} did not start: {ok}"));
        }
        let mut dc = Dovecot {
            port,
            base: d.join("base"),
            run_dir: d.join("idle-run"),
            stats_socket: d.join("idle-run/park"),
            hibernation,
            mail_owner,
            conf,
            dir: dir.clone(),
            root: root.clone(),
            version,
            standalone: None,
            _private: private,
        };
        if standalone {
            // Inside the root, as an operator's would be: the group it
            // gives its listener is the root's Dovecot group.
            let log = io("log", std::fs::File::create(dir.join("imap-idle.log")))?;
            let child = root
                .command(&i.join("bin/imap-idle").display().to_string())
                .args(["--dovecot", "--log-level", "debug", "--dovecot-base-dir"])
                .arg(i.join("base"))
                .arg("--runtime-dir")
                .arg(i.join("idle-run"))
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

    /// The Dovecot release running (`dovecot --version`).
    pub fn version(&self) -> Version {
        self.version
    }

    /// `doveadm ARGS` against this Dovecot (inside its root): its output,
    /// or its error output when it fails.
    pub fn doveadm(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .root
            .command("doveadm")
            .arg("-c")
            .arg(self.root.inner_path(&self.conf))
            .args(args)
            .output()
            .map_err(|e| format!("running doveadm: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "doveadm {args:?}: {}: {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Where this Dovecot lives (the host, or a chroot).
    pub fn root(&self) -> &DovecotRoot {
        &self.root
    }

    /// `doveadm reload`: the master rereads its config and starts a new
    /// generation of every service; old processes are told through their
    /// death pipe.
    pub fn reload(&self) -> Result<(), String> {
        self.dovecot_command(&["reload"])
    }

    /// Stop the master (what `systemctl stop dovecot` does), leaving what
    /// `shutdown_clients` lets live.
    pub fn stop_master(&self) -> Result<(), String> {
        self.dovecot_command(&["stop"])?;
        wait_until(
            || !self.base.join("master.pid").exists(),
            "Dovecot's master to exit",
            Duration::from_secs(20),
        )
    }

    /// Start the master again with the same configuration.
    pub fn start_master(&self) -> Result<(), String> {
        self.dovecot_command(&[])?;
        wait_until(
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            "dovecot to listen",
            Duration::from_secs(10),
        )
    }

    fn dovecot_command(&self, args: &[&str]) -> Result<(), String> {
        let status = io(
            "running dovecot",
            self.root
                .command("dovecot")
                .arg("-c")
                .arg(self.root.inner_path(&self.conf))
                .args(args)
                .status(),
        )?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("dovecot {args:?}: {status}"))
        }
    }

    /// Every imap-idle process running our copy of the binary, whichever
    /// master (if any) is its parent now.
    pub fn idle_processes(&self) -> Vec<i32> {
        let bin = self.dir.join("bin/imap-idle");
        procfs::running(&bin)
            .into_iter()
            .map(|p| p as i32)
            .collect()
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
        chown(&tmp, self.mail_owner)?;
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
            Hibernation::ImapIdle | Hibernation::ImapIdleCap | Hibernation::Standalone => Ok(self
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
        let _ = self.dovecot_command(&["stop"]);
        // Give the master time to take its children down before the
        // directory goes away.
        for _ in 0..100 {
            if !self.base.join("master.pid").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Ones the master left running (shutdown_clients = no).
        for pid in self.idle_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
