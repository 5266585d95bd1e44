//! The whole native system as real processes in a private directory:
//! imap-idle, imap-tracker, the reference login process and mail
//! processes. Used by `imap-idle-lab bench` and by the tests. With
//! [`NativeOptions::idles`] above 1, several imap-idle daemons serve the
//! one tracker (see `idles`); the figures here add them up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod restart;

use super::idles::{self, IdleSpec};
use super::{wait_until, PrivateDir};
use crate::link;
use crate::proto::native::Stats;

pub const PASSWORD: &str = "secret";

pub struct NativeOptions {
    pub policy: String,
    /// Mail processes started up front.
    pub mails: usize,
    /// Let the tracker start mail processes itself (`--spawn`).
    pub spawn: bool,
    /// Seconds in IDLE before a mail process parks a client; 0 never.
    pub park_after: u32,
    /// (user, uid) accounts, uid 0 meaning the caller's; every password is
    /// [`PASSWORD`].
    pub users: Vec<(String, u32)>,
    /// Clients per mail process.
    pub capacity: u32,
    pub log_level: String,
    /// More arguments for the login process (`--auth-timeout 1`).
    pub login_args: Vec<String>,
    /// More arguments for every mail process, spawned ones included.
    pub mail_args: Vec<String>,
    /// imap-idle daemons, each with its own runtime directory and park
    /// socket, all returning to the one tracker; the mail processes get
    /// every park socket and spread their parks over them.
    pub idles: usize,
    /// `--max-parked` of daemon i (daemons past the list, or all when it
    /// is empty, keep their default: what their open-file limit allows).
    pub idle_max_parked: Vec<usize>,
    /// More arguments for every imap-idle.
    pub idle_args: Vec<String>,
}

impl Default for NativeOptions {
    fn default() -> Self {
        NativeOptions {
            policy: "prefer-user".into(),
            mails: 1,
            spawn: false,
            park_after: 1,
            users: ["alice", "bob", "carol"]
                .iter()
                .map(|u| (u.to_string(), 0))
                .collect(),
            capacity: 1000,
            log_level: "debug".into(),
            login_args: Vec::new(),
            mail_args: Vec::new(),
            idles: 1,
            idle_max_parked: Vec::new(),
            idle_args: Vec::new(),
        }
    }
}

pub struct NativeStack {
    pub dir: PathBuf,
    pub run: PathBuf,
    pub mail_root: PathBuf,
    pub port: u16,
    /// The first imap-idle (its runtime directory is `run`).
    pub idle: Child,
    /// The others, when [`NativeOptions::idles`] is above 1.
    pub more_idles: Vec<Child>,
    /// Every imap-idle's park socket, the first one's first.
    park_sockets: Vec<PathBuf>,
    pub tracker: Child,
    /// How the tracker was started, to start it again.
    tracker_args: Vec<String>,
    /// More arguments of every imap-idle, to start one again.
    idle_args: Vec<String>,
    login: Child,
    pub mails: Vec<Child>,
    bin: PathBuf,
    park_after: u32,
    capacity: u32,
    log_level: String,
    mail_args: Vec<String>,
    _private: PrivateDir,
}

pub(super) fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))
}

/// The uid a user's mail belongs to: 0 in the options means the caller's
/// own, so that the mail processes we start (which run as the caller) may
/// serve them whether or not the caller is root.
fn mail_uid(uid: u32) -> u32 {
    if uid == 0 {
        nix::unistd::getuid().as_raw()
    } else {
        uid
    }
}

impl NativeStack {
    /// Start everything from the binaries in `bin` (imap-idle,
    /// imap-tracker, imap-idle-lab).
    pub fn start(bin: &Path, o: &NativeOptions) -> Result<NativeStack, String> {
        let private = PrivateDir::new("native")?;
        let dir = private.path().to_path_buf();
        let run = dir.join("run");
        let mail_root = dir.join("mail");
        let passwd = dir.join("passwd");
        let accounts: String = o
            .users
            .iter()
            .map(|(u, uid)| format!("{u}:{PASSWORD}:{}\n", mail_uid(*uid)))
            .collect();
        std::fs::write(&passwd, accounts).map_err(|e| e.to_string())?;
        let mut children = Vec::new();
        for i in 0..o.idles.max(1) {
            let spec = IdleSpec {
                bin,
                dir: &dir,
                run: &run,
                log_level: &o.log_level,
                max_parked: o.idle_max_parked.get(i).copied(),
                args: &o.idle_args,
            };
            match idles::start(&spec, i) {
                Ok(c) => children.push(c),
                Err(e) => {
                    for mut c in children {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(e);
                }
            }
        }
        let mut children = children.into_iter();
        let Some(idle) = children.next() else {
            return Err("no imap-idle started".into());
        };
        let more_idles: Vec<Child> = children.collect();
        let park_sockets: Vec<PathBuf> = (0..=more_idles.len())
            .map(|i| idles::runtime_dir(&dir, &run, i).join("park"))
            .collect();
        // One daemon: the defaults (RUNTIME_DIR/park) say it already.
        let idle_args = if park_sockets.len() > 1 {
            idles::socket_args(&park_sockets)
        } else {
            Vec::new()
        };
        let lab = bin.join("imap-idle-lab");
        let mut mail_args = idle_args.clone();
        mail_args.extend(o.mail_args.iter().cloned());
        let mail_cmd = format!(
            "{} serve mail --runtime-dir {} --maildir {}/%u/Maildir --park-after {} \
             --capacity {} --log-level {} {} 2>>{}/mail-spawned.log",
            lab.display(),
            run.display(),
            mail_root.display(),
            o.park_after,
            o.capacity,
            o.log_level,
            mail_args.join(" "),
            dir.display()
        );
        let mut tracker_cmd = Command::new(bin.join("imap-tracker"));
        // At least info: registrations are how we know a mail process is up.
        let tracker_level = if o.log_level == "debug" {
            "debug"
        } else {
            "info"
        };
        let mut tracker_args = vec!["--runtime-dir".to_owned(), run.display().to_string()];
        tracker_args
            .extend(["--policy", &o.policy, "--log-level", tracker_level].map(String::from));
        tracker_args.extend(idle_args.iter().cloned());
        if o.spawn {
            tracker_args.extend(["--spawn", &mail_cmd, "--max-processes", "8"].map(String::from));
        }
        tracker_cmd.args(&tracker_args);
        let tracker = spawn(&mut tracker_cmd, &dir.join("imap-tracker.log"))?;
        let control = run.join("tracker-control");
        let mut login = Command::new(&lab)
            .args(["serve", "login", "--listen", "127.0.0.1:0", "--passwd"])
            .arg(&passwd)
            .arg("--runtime-dir")
            .arg(&run)
            .args(["--log-level", &o.log_level])
            .args(&o.login_args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("login.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting the login process: {e}"))?;
        let mut first = String::new();
        if let Some(out) = login.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut first);
        }
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut s = NativeStack {
            dir,
            run,
            mail_root,
            port,
            idle,
            more_idles,
            park_sockets,
            tracker,
            tracker_args,
            idle_args: o.idle_args.clone(),
            login,
            mails: Vec::new(),
            bin: bin.to_path_buf(),
            park_after: o.park_after,
            capacity: o.capacity,
            log_level: o.log_level.clone(),
            mail_args,
            _private: private,
        };
        if port == 0 {
            return Err(format!("the login process said {first:?}"));
        }
        wait_until(
            || control.exists(),
            "imap-tracker to listen",
            Duration::from_secs(10),
        )?;
        for _ in 0..o.mails {
            s.add_mail()?;
        }
        Ok(s)
    }

    /// Start one more mail process and wait until the tracker has it.
    pub fn add_mail(&mut self) -> Result<u32, String> {
        let n = self.mails.len();
        let child = spawn(
            Command::new(self.bin.join("imap-idle-lab"))
                .args(["serve", "mail", "--runtime-dir"])
                .arg(&self.run)
                .arg("--maildir")
                .arg(format!("{}/%u/Maildir", self.mail_root.display()))
                .args(["--park-after", &self.park_after.to_string()])
                .args(["--capacity", &self.capacity.to_string()])
                .args(["--log-level", &self.log_level])
                .args(&self.mail_args),
            &self.dir.join(format!("mail-{n}.log")),
        )?;
        let pid = child.id();
        self.mails.push(child);
        wait_until(
            || self.tracker_log().contains(&format!("pid={pid} uid=")),
            "the mail process to register",
            Duration::from_secs(10),
        )
        .map_err(|e| {
            format!(
                "{e}\nmail process log:\n{}\ntracker log:\n{}",
                self.log(&format!("mail-{n}.log")),
                self.tracker_log()
            )
        })?;
        Ok(pid)
    }

    /// The login process's pid.
    pub fn login_pid(&self) -> u32 {
        self.login.id()
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.mail_root.join(user).join("Maildir")
    }

    /// The first imap-idle's park socket.
    pub fn park_socket(&self) -> PathBuf {
        self.run.join("park")
    }

    /// Every imap-idle's park socket, in the order of [`Self::idle_pids`].
    pub fn park_sockets(&self) -> &[PathBuf] {
        &self.park_sockets
    }

    /// Every imap-idle's pid, the first one's first (the bench measures
    /// memory per process).
    pub fn idle_pids(&self) -> Vec<u32> {
        std::iter::once(&self.idle)
            .chain(&self.more_idles)
            .map(Child::id)
            .collect()
    }

    /// The log of imap-idle `i`.
    pub fn idle_log(&self, i: usize) -> String {
        self.log(&idles::log_name(i))
    }

    /// Each imap-idle's counters, in the order of [`Self::idle_pids`].
    pub fn idle_stats(&self) -> Result<Vec<Stats>, String> {
        self.park_sockets
            .iter()
            .map(|p| link::stats(p).map_err(|e| format!("{}: {e}", p.display())))
            .collect()
    }

    /// What `imap-tracker who [USER]` prints.
    pub fn who(&self, user: Option<&str>) -> Result<String, String> {
        let out = Command::new(self.bin.join("imap-tracker"))
            .arg("who")
            .args(user)
            .arg("--runtime-dir")
            .arg(&self.run)
            .output()
            .map_err(|e| format!("running imap-tracker who: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The counters of every imap-idle added up.
    pub fn stats(&self) -> Result<Stats, String> {
        Ok(idles::sum(&self.idle_stats()?))
    }

    pub fn parked(&self) -> u64 {
        self.stats().map_or(0, |s| s.parked)
    }

    pub fn wait_parked(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            let now = self.parked();
            if now == n {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!("{now} parked after {timeout:?}, expected {n}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    pub fn tracker_log(&self) -> String {
        self.log("imap-tracker.log")
    }

    pub fn kill_mail(&mut self, i: usize) {
        if let Some(c) = self.mails.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NativeStack {
    fn drop(&mut self) {
        for c in self
            .mails
            .iter_mut()
            .chain([&mut self.login, &mut self.tracker, &mut self.idle])
            .chain(self.more_idles.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Processes the tracker spawned end once the tracker is gone and
        // so is its directory (the private one, removed after this).
    }
}
