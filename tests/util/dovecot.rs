//! The private Dovecot of the lab's rig, for tests: failures panic with
//! Dovecot's log, and a missing Dovecot fails the suite in CI.

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use imap_idle::lab::rig::dovecot as rig;
#[allow(unused_imports)]
pub use imap_idle::lab::rig::dovecot::{installed, Hibernation, ServiceLimits, PASSWORD};
use imap_idle::proto::native::Stats;

/// Whether Dovecot must be there: CI sets this, so a missing Dovecot
/// fails the suite instead of skipping it.
pub const REQUIRE_ENV: &str = "IMAP_IDLE_REQUIRE_DOVECOT";

/// `true` when the test can run; panics when Dovecot is required but
/// missing; otherwise says loudly that the test is skipped.
pub fn available(test: &str) -> bool {
    if installed() && nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: Dovecot (apt-get install dovecot-imapd{}) and root are required ({REQUIRE_ENV}=1)", where_());
    }
    eprintln!("SKIPPED {test}: needs Dovecot (/usr/sbin/dovecot{}) and root; set {REQUIRE_ENV}=1 to make this a failure", where_());
    false
}

/// The chroot the tests' Dovecot is in, when `IMAP_IDLE_DOVECOT_ROOT` names one.
fn where_() -> String {
    match rig::DovecotRoot::from_env().chroot_path() {
        Some(r) => format!(", in {}", r.display()),
        None => String::new(),
    }
}

pub fn raise_inotify_instances(at_least: u64) {
    rig::raise_inotify_instances(at_least).expect("raise max_user_instances");
}

pub struct Dovecot(rig::Dovecot);

impl Deref for Dovecot {
    type Target = rig::Dovecot;
    fn deref(&self) -> &rig::Dovecot {
        &self.0
    }
}

impl Dovecot {
    pub fn start(users: &[String], hibernation: Hibernation) -> Dovecot {
        Dovecot::start_with(users, hibernation, ServiceLimits::default())
    }

    /// With the imap-hibernate service's `client_limit`/`process_limit`.
    pub fn start_with(
        users: &[String],
        hibernation: Hibernation,
        limits: ServiceLimits,
    ) -> Dovecot {
        let bin = Path::new(env!("CARGO_BIN_EXE_imap-idle"));
        // Short keepalives, so a test sees one soon.
        let dc = rig::Dovecot::start_with(users, hibernation, bin, 3, limits);
        Dovecot(dc.expect("start Dovecot"))
    }

    pub fn deliver(&self, user: &str, name: &str) {
        self.0.deliver(user, name).expect("deliver");
    }

    /// Our daemon's counters (not with Hibernation::Dovecot).
    pub fn stats(&self) -> Stats {
        self.0.stats().expect("imap-idle stats")
    }

    /// Each imap-idle process's counters, with its park socket.
    pub fn stats_each(&self) -> Vec<(std::path::PathBuf, Stats)> {
        self.0.stats_each().expect("imap-idle stats")
    }

    /// Clients hibernated now, measured (see the rig).
    pub fn hibernated(&self) -> usize {
        self.0.hibernated().expect("count hibernated clients")
    }

    pub fn wait_for(&self, cond: impl FnMut() -> bool, what: &str, timeout: Duration) {
        if let Err(e) = self.0.wait_for(cond, what, timeout) {
            panic!("{e}; dovecot log:\n{}", self.log());
        }
    }

    pub fn fds(pid: i32) -> usize {
        rig::Dovecot::fds(pid)
    }

    pub fn settled_fds(pid: i32) -> usize {
        rig::Dovecot::settled_fds(pid)
    }

    pub fn tcp_sockets(pid: i32) -> usize {
        rig::Dovecot::tcp_sockets(pid)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dovecot log ---\n{}", self.log());
        }
    }
}
