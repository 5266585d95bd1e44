//! The whole native system as real processes (the lab's rig), for tests:
//! failures panic with the processes' logs.

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

#[allow(unused_imports)]
pub use imap_idle::lab::rig::native::PASSWORD;
use imap_idle::lab::rig::native::{NativeOptions, NativeStack};

pub struct Stack(NativeStack);

pub struct Options<'a> {
    pub policy: &'a str,
    /// Mail processes started up front.
    pub mails: usize,
    /// Let the tracker start mail processes itself (`--spawn`).
    pub spawn: bool,
    pub park_after: u32,
    /// `user:uid` accounts; every password is PASSWORD.
    pub users: &'a [(&'a str, u32)],
    /// imap-idle daemons behind the one tracker.
    pub idles: usize,
    /// `--max-parked` of each daemon, in order (the rest keep the default).
    pub idle_max_parked: &'a [usize],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            policy: "prefer-user",
            mails: 1,
            spawn: false,
            park_after: 1,
            users: &[("alice", 0), ("bob", 0), ("carol", 0)],
            idles: 1,
            idle_max_parked: &[],
        }
    }
}

impl Deref for Stack {
    type Target = NativeStack;
    fn deref(&self) -> &NativeStack {
        &self.0
    }
}

impl DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut NativeStack {
        &mut self.0
    }
}

impl Stack {
    pub fn start(o: Options<'_>) -> Stack {
        Stack::start_with_args(o, &[], &[])
    }

    /// With more arguments for the login process and the mail processes.
    pub fn start_with_args(o: Options<'_>, login: &[&str], mail: &[&str]) -> Stack {
        let bin = Path::new(env!("CARGO_BIN_EXE_imap-idle"))
            .parent()
            .expect("binaries' directory");
        let opts = NativeOptions {
            policy: o.policy.into(),
            mails: o.mails,
            spawn: o.spawn,
            park_after: o.park_after,
            users: o.users.iter().map(|(u, id)| (u.to_string(), *id)).collect(),
            login_args: login.iter().map(|a| a.to_string()).collect(),
            mail_args: mail.iter().map(|a| a.to_string()).collect(),
            idles: o.idles,
            idle_max_parked: o.idle_max_parked.to_vec(),
            ..NativeOptions::default()
        };
        Stack(NativeStack::start(bin, &opts).expect("start the native stack"))
    }

    pub fn add_mail(&mut self) -> u32 {
        self.0.add_mail().expect("start a mail process")
    }

    pub fn who(&self, user: Option<&str>) -> String {
        self.0.who(user).expect("imap-tracker who")
    }

    /// `who` rows as (user, process column, state).
    pub fn who_rows(&self) -> Vec<(String, String, String)> {
        self.who(None)
            .lines()
            .skip(1)
            .filter(|l| {
                !l.contains("connections:")
                    && !l.starts_with("not answered")
                    && !l.contains("stale entries")
            })
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

    pub fn wait_parked(&self, n: u64, timeout: Duration) {
        if let Err(e) = self.0.wait_parked(n, timeout) {
            panic!("{e}; who:\n{}", self.who(None));
        }
    }
}

/// How many TCP connections a process holds (its IMAP clients).
pub fn tcp_sockets_of(pid: u32) -> usize {
    let mut tcp_inodes = HashSet::new();
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
        if std::thread::panicking() {
            let more = (1..self.idle_pids().len()).map(|i| format!("imap-idle-{i}.log"));
            let logs = [
                "imap-tracker.log",
                "imap-idle.log",
                "login.log",
                "mail-0.log",
            ];
            for f in logs.iter().map(|f| f.to_string()).chain(more) {
                let text = self.log(&f);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {f} (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}
