//! Killing a daemon of the native rig with SIGKILL and starting it again,
//! as a crash and its supervisor would: the tracker (its clients must
//! survive it) or the first imap-idle (the tracker must forget what died
//! with it). The old log is kept beside the new one.

use std::process::Command;
use std::time::Duration;

use super::super::idles::{self, IdleSpec};
use super::super::wait_until;
use super::{spawn, NativeStack};

impl NativeStack {
    /// `kill -9` the tracker, start it again, and wait until it listens.
    pub fn restart_tracker(&mut self) -> Result<(), String> {
        let _ = self.tracker.kill();
        let _ = self.tracker.wait();
        self.keep_old_log("imap-tracker.log");
        let mut cmd = Command::new(self.bin.join("imap-tracker"));
        cmd.args(&self.tracker_args);
        self.tracker = spawn(&mut cmd, &self.dir.join("imap-tracker.log"))?;
        let log = self.dir.join("imap-tracker.log");
        wait_until(
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")),
            "imap-tracker to listen again",
            Duration::from_secs(10),
        )
    }

    /// `kill -9` the first imap-idle (its parked clients die with it) and
    /// start a new one in its place.
    pub fn restart_idle(&mut self) -> Result<u32, String> {
        let _ = self.idle.kill();
        let _ = self.idle.wait();
        self.keep_old_log(&idles::log_name(0));
        let spec = IdleSpec {
            bin: &self.bin,
            dir: &self.dir,
            run: &self.run,
            log_level: &self.log_level,
            max_parked: None,
            args: &self.idle_args,
        };
        self.idle = idles::start(&spec, 0)?;
        Ok(self.idle.id())
    }

    /// Every mail process has registered with the tracker again.
    pub fn wait_mails_rejoined(&self, timeout: Duration) -> Result<(), String> {
        let pids: Vec<u32> = self.mails.iter().map(|c| c.id()).collect();
        wait_until(
            || {
                let log = self.tracker_log();
                pids.iter()
                    .all(|pid| log.contains(&format!("mail process pid={pid} uid=")))
            },
            "the mail processes to register again",
            timeout,
        )
    }

    fn keep_old_log(&self, name: &str) {
        let old = self.dir.join(name);
        let mut n = 1;
        while self.dir.join(format!("{name}.{n}")).exists() {
            n += 1;
        }
        let _ = std::fs::rename(&old, self.dir.join(format!("{name}.{n}")));
    }
}
