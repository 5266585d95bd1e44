//! A private Dovecot 2.3 for tests: own base_dir, own port on 127.0.0.1,
//! passwd-file users, Maildir under a temp dir, hibernation after 1 s, and
//! either our imap-idle or Dovecot's own imap-hibernate as the service.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imap_idle::proto::native::Stats;

pub const PASSWORD: &str = "secret";

/// Whether Dovecot must be there: CI sets this, so a missing Dovecot
/// fails the suite instead of skipping it.
pub const REQUIRE_ENV: &str = "IMAP_IDLE_REQUIRE_DOVECOT";

pub fn installed() -> bool {
    Path::new("/usr/sbin/dovecot").exists()
}

/// `true` when the test can run; panics when Dovecot is required but
/// missing; otherwise says loudly that the test is skipped.
pub fn available(test: &str) -> bool {
    if installed() && nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: Dovecot (apt-get install dovecot-imapd) and root are required ({REQUIRE_ENV}=1)");
    }
    eprintln!("SKIPPED {test}: needs Dovecot (/usr/sbin/dovecot) and root; set {REQUIRE_ENV}=1 to make this a failure");
    false
}

/// Raise the per-uid inotify instance limit: every hibernated client of
/// Dovecot holds one (its notify fd), and all mail runs as one uid here.
pub fn raise_inotify_instances(at_least: u64) {
    let path = "/proc/sys/fs/inotify/max_user_instances";
    let now: u64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if now < at_least {
        std::fs::write(path, at_least.to_string()).expect("raise max_user_instances");
    }
}

pub enum Hibernation {
    /// Our binary as Dovecot's imap-hibernate service executable.
    ImapIdle,
    /// Dovecot's own imap-hibernate.
    Dovecot,
    /// Dovecot's listener disabled (`mode = 0`); our binary started on its
    /// own with `--dovecot-base-dir`, binding the listener itself.
    Standalone,
}

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    pub port: u16,
    pub base: PathBuf,
    pub stats_socket: PathBuf,
    standalone: Option<std::process::Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

fn chown(path: &Path, user: &str) {
    let u = nix::unistd::User::from_name(user)
        .unwrap()
        .expect("user exists");
    nix::unistd::chown(path, Some(u.uid), Some(u.gid)).expect("chown");
}

impl Dovecot {
    pub fn start(users: &[String], hibernation: Hibernation) -> Dovecot {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // The service runs as the dovecot user: every directory on the
        // way to its executable must be searchable by it.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["bin", "base", "state", "mail", "idle-run"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        chown(&d.join("mail"), "nobody");
        chown(&d.join("idle-run"), "dovecot");
        let bin = d.join("bin/imap-idle");
        std::fs::copy(env!("CARGO_BIN_EXE_imap-idle"), &bin).expect("copy binary");
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}\n"))
            .collect();
        std::fs::write(d.join("passwd"), passwd).unwrap();
        let port = free_port();
        let service = match hibernation {
            // The snippet operators copy, with our paths: proves it works.
            Hibernation::ImapIdle => {
                let snippet = concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/contrib/dovecot/95-imap-idle.conf"
                );
                std::fs::read_to_string(snippet)
                    .expect("contrib snippet")
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
                    )
            }
            Hibernation::Dovecot => String::new(),
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
imap_idle_notify_interval = 3 secs
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
{service}{imap_master}",
            d = d.display()
        );
        std::fs::write(&conf, text).unwrap();
        let ok = Command::new("dovecot")
            .arg("-c")
            .arg(&conf)
            .status()
            .expect("run dovecot");
        assert!(ok.success(), "dovecot did not start");
        let mut dc = Dovecot {
            port,
            base: d.join("base"),
            stats_socket: d.join("idle-run/park"),
            conf,
            dir,
            standalone: None,
        };
        if standalone {
            let log = std::fs::File::create(dc.dir.path().join("imap-idle.log")).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_imap-idle"))
                .args(["--dovecot", "--log-level", "debug", "--dovecot-base-dir"])
                .arg(&dc.base)
                .arg("--runtime-dir")
                .arg(dc.dir.path().join("idle-run"))
                .stderr(log)
                .spawn()
                .expect("start imap-idle");
            dc.standalone = Some(child);
            let path = dc.base.join("imap-hibernate");
            super::wait_for(|| path.exists(), "imap-idle to bind imap-hibernate");
        }
        super::wait_for(
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "dovecot to listen",
        );
        dc
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user).join("Maildir")
    }

    /// Deliver a message the way an MDA does: write in tmp/, rename into new/.
    pub fn deliver(&self, user: &str, name: &str) {
        let md = self.maildir(user);
        let tmp = md.join("tmp").join(name);
        std::fs::write(&tmp, "Subject: test\r\n\r\nhello\r\n").expect("write message");
        std::fs::rename(&tmp, md.join("new").join(name)).expect("deliver");
    }

    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("dovecot.log"), read("imap-idle.log"))
    }

    /// Our daemon's counters (only with Hibernation::ImapIdle).
    pub fn stats(&self) -> Stats {
        imap_idle::link::stats(&self.stats_socket).expect("imap-idle stats")
    }

    fn master_pid(&self) -> i32 {
        let pid = std::fs::read_to_string(self.base.join("master.pid")).expect("master.pid");
        pid.trim().parse().expect("pid")
    }

    /// Child processes of this Dovecot whose title's first word is `name`.
    pub fn processes(&self, name: &str) -> Vec<i32> {
        let master = self.master_pid();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let rest = &stat[stat.rfind(')').unwrap_or(0) + 2..];
            let ppid: i32 = rest
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|&b| b == 0 || b == b' ').next().unwrap_or(&[]);
            if ppid == master && argv0 == name.as_bytes() {
                found.push(pid);
            }
        }
        found
    }

    pub fn fds(pid: i32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
    }

    /// The fd count once it stops moving (our own stats connection may
    /// still be closing).
    pub fn settled_fds(pid: i32) -> usize {
        let mut last = Dovecot::fds(pid);
        loop {
            std::thread::sleep(Duration::from_millis(150));
            let now = Dovecot::fds(pid);
            if now == last {
                return now;
            }
            last = now;
        }
    }

    pub fn wait_for(&self, mut cond: impl FnMut() -> bool, what: &str, timeout: Duration) {
        let end = std::time::Instant::now() + timeout;
        while !cond() {
            if std::time::Instant::now() > end {
                panic!("timed out waiting for {what}; dovecot log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        if std::thread::panicking() {
            eprintln!("--- dovecot log ---\n{}", self.log());
        }
    }
}
