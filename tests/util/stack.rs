//! The whole native system as real processes: imap-idle, imap-tracker, the
//! reference login process and mail processes, in a private directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{wait_for, WAIT};
use imap_idle::link;

pub const PASSWORD: &str = "secret";

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub run: PathBuf,
    pub mail_root: PathBuf,
    pub port: u16,
    idle: Child,
    tracker: Child,
    login: Child,
    pub mails: Vec<Child>,
    park_after: u32,
}

pub struct Options<'a> {
    pub policy: &'a str,
    /// Mail processes started up front.
    pub mails: usize,
    /// Let the tracker start mail processes itself (`--spawn`).
    pub spawn: bool,
    pub park_after: u32,
    /// `user:uid` accounts; every password is PASSWORD.
    pub users: &'a [(&'a str, u32)],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            policy: "prefer-user",
            mails: 1,
            spawn: false,
            park_after: 1,
            users: &[("alice", 0), ("bob", 0), ("carol", 0)],
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn")
}

impl Stack {
    pub fn start(o: Options<'_>) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let mail_root = dir.path().join("mail");
        let passwd = dir.path().join("passwd");
        let accounts: String = o
            .users
            .iter()
            .map(|(u, uid)| format!("{u}:{PASSWORD}:{uid}\n"))
            .collect();
        std::fs::write(&passwd, accounts).expect("passwd");
        let idle = spawn(
            Command::new(env!("CARGO_BIN_EXE_imap-idle"))
                .arg("--runtime-dir")
                .arg(&run)
                .args(["--log-level", "debug"]),
            &dir.path().join("imap-idle.log"),
        );
        wait_for(
            || link::stats(&run.join("park")).is_ok(),
            "imap-idle to listen",
        );
        let lab = env!("CARGO_BIN_EXE_imap-idle-lab");
        let mail_cmd = format!(
            "{lab} serve mail --runtime-dir {} --maildir {}/%u/Maildir --park-after {} --log-level debug 2>>{}/mail-spawned.log",
            run.display(),
            mail_root.display(),
            o.park_after,
            dir.path().display()
        );
        let mut tracker_cmd = Command::new(env!("CARGO_BIN_EXE_imap-tracker"));
        tracker_cmd.arg("--runtime-dir").arg(&run).args([
            "--policy",
            o.policy,
            "--log-level",
            "debug",
        ]);
        if o.spawn {
            tracker_cmd.args(["--spawn", &mail_cmd, "--max-processes", "8"]);
        }
        let tracker = spawn(&mut tracker_cmd, &dir.path().join("imap-tracker.log"));
        wait_for(
            || run.join("tracker-control").exists(),
            "imap-tracker to listen",
        );
        let mut login = Command::new(lab)
            .args(["serve", "login", "--listen", "127.0.0.1:0", "--passwd"])
            .arg(&passwd)
            .arg("--runtime-dir")
            .arg(&run)
            .args(["--log-level", "debug"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("login.log")).expect("log"))
            .spawn()
            .expect("spawn login");
        let mut first = String::new();
        let out = login.stdout.take().expect("login stdout");
        BufReader::new(out)
            .read_line(&mut first)
            .expect("login's first line");
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("login said {first:?}"));
        let mut s = Stack {
            dir,
            run,
            mail_root,
            port,
            idle,
            tracker,
            login,
            mails: Vec::new(),
            park_after: o.park_after,
        };
        for _ in 0..o.mails {
            s.add_mail();
        }
        s
    }

    /// Start one more mail process and wait until the tracker has it.
    pub fn add_mail(&mut self) -> u32 {
        let n = self.mails.len();
        let child = spawn(
            Command::new(env!("CARGO_BIN_EXE_imap-idle-lab"))
                .args(["serve", "mail", "--runtime-dir"])
                .arg(&self.run)
                .arg("--maildir")
                .arg(format!("{}/%u/Maildir", self.mail_root.display()))
                .args(["--park-after", &self.park_after.to_string()])
                .args(["--log-level", "debug"]),
            &self.dir.path().join(format!("mail-{n}.log")),
        );
        let pid = child.id();
        self.mails.push(child);
        wait_for(
            || self.tracker_log().contains(&format!("pid={pid} uid=")),
            "the mail process to register",
        );
        pid
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.mail_root.join(user).join("Maildir")
    }

    pub fn park_socket(&self) -> PathBuf {
        self.run.join("park")
    }

    pub fn who(&self, user: Option<&str>) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_imap-tracker"))
            .arg("who")
            .args(user)
            .arg("--runtime-dir")
            .arg(&self.run)
            .output()
            .expect("run imap-tracker who");
        assert!(out.status.success(), "who failed: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `who` rows as (user, process column, state).
    pub fn who_rows(&self) -> Vec<(String, String, String)> {
        self.who(None)
            .lines()
            .skip(1)
            .filter(|l| !l.contains("connections:") && !l.starts_with("not answered"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].to_owned(),
                    format!("{} {}", f[2], f[3]),
                    f[4].to_owned(),
                )
            })
            .collect()
    }

    pub fn parked(&self) -> u64 {
        link::stats(&self.park_socket()).map_or(0, |s| s.parked)
    }

    pub fn wait_parked(&self, n: u64, timeout: Duration) {
        let end = std::time::Instant::now() + timeout;
        while self.parked() != n {
            assert!(
                std::time::Instant::now() < end,
                "{} parked, expected {n}; who:\n{}",
                self.parked(),
                self.who(None)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn tracker_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("imap-tracker.log")).unwrap_or_default()
    }

    pub fn kill_mail(&mut self, i: usize) {
        let _ = self.mails[i].kill();
        let _ = self.mails[i].wait();
    }
}

/// How many TCP connections a process holds (its IMAP clients).
pub fn tcp_sockets_of(pid: u32) -> usize {
    let mut tcp_inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            if let Some(inode) = line.split_whitespace().nth(9) {
                tcp_inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| tcp_inodes.contains(&*t.to_string_lossy()))
                })
                .count()
        })
        .unwrap_or(0)
}

impl Drop for Stack {
    fn drop(&mut self) {
        for c in self
            .mails
            .iter_mut()
            .chain([&mut self.login, &mut self.tracker, &mut self.idle])
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Processes the tracker spawned end when their tracker link closes.
        if std::thread::panicking() {
            for f in [
                "imap-tracker.log",
                "imap-idle.log",
                "login.log",
                "mail-0.log",
            ] {
                let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {f} (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

pub fn wait() -> Duration {
    WAIT
}
