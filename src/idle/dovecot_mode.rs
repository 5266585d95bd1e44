//! Dovecot mode's adapters, set up together: hand-offs in on
//! BASE_DIR/imap-hibernate, returns out through BASE_DIR/imap-master, and
//! the master's pipes when Dovecot's master started us; and what a reload or a stop of
//! Dovecot's master means for the clients we hold.
//!
//! The master closes our death pipe both when it reloads (a new
//! generation of processes takes new clients) and when it stops. Either
//! way we take no new clients, keep every parked one parked, return each
//! to `BASE_DIR/imap-master` when it wakes (whichever master listens
//! there then) and exit when we hold nobody. Waking them all instead
//! would start one imap process per client at once, the very load
//! hibernation exists to avoid. Only when the master has exited and
//! `--dovecot-shutdown-clients yes` says so do we do what Dovecot's own
//! imap-hibernate does with `shutdown_clients = yes`: hand everyone back
//! at once.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use log::info;
use mio::Registry;

use super::budget::Budget;
use super::clients::IdleCore;
use super::config::Config;
use super::hand_off::HandOff;
use super::master_return::Masters;
use super::service::Service;
use super::signals::SignalAdapter;
use super::tokens::{register, Source};
use crate::setup::SetupError;

/// How often a retired process looks whether the master is still there.
const MASTER_CHECK: Duration = Duration::from_secs(1);

pub(super) struct Dovecot {
    pub hand_off: HandOff,
    pub masters: Masters,
    pub service: Option<Service>,
    /// Set when the death pipe closed: the master's pid then, which we
    /// watch for its exit.
    retired_under: Option<i32>,
    shutdown_clients: bool,
    next_check: Option<Instant>,
}

impl Dovecot {
    pub fn start(
        cfg: &Config,
        (listener, service, base_dir): (OwnedFd, Option<Service>, PathBuf),
        reg: &Registry,
        signals: &mut SignalAdapter,
        budget: &Budget,
        park_path: &Path,
        reopen: bool,
    ) -> Result<Dovecot, SetupError> {
        let max_parked = budget.max_parked;
        let mut sources = vec![(listener.as_raw_fd(), Source::HandOffListener)];
        if let Some(s) = &service {
            sources.push((s.master_dead.as_raw_fd(), Source::MasterDead));
            signals.set_under_master();
        }
        register(reg, &sources)?;
        let (by, limit) = match &service {
            Some(s) => (" (started by Dovecot's master)", s.limit(max_parked)),
            None => ("", max_parked),
        };
        info!(
            "imap-idle {} in Dovecot mode{by}: taking clients on {}, returning them to {}, \
             up to {limit} parked; statistics on {}; notify fds {}",
            env!("CARGO_PKG_VERSION"),
            base_dir.join("imap-hibernate").display(),
            base_dir.join("imap-master").display(),
            park_path.display(),
            if reopen {
                "reopened by handle (CAP_DAC_READ_SEARCH)"
            } else {
                "shared per mailbox"
            },
        );
        Ok(Dovecot {
            hand_off: HandOff::new(listener, budget.hand_offs),
            masters: Masters::new(
                base_dir.join("imap-master"),
                SystemTime::now(),
                budget.masters,
            ),
            service,
            retired_under: None,
            shutdown_clients: cfg.dovecot_shutdown_clients,
            next_check: None,
        })
    }

    /// Our death pipe from the master closed: a reload or a stop.
    pub fn master_closed_pipe(&mut self, core: &mut IdleCore, reg: &mio::Registry, now: Instant) {
        if self.retired_under.is_some() {
            return;
        }
        let Some(service) = &mut self.service else {
            return;
        };
        service.master_gone(reg);
        self.hand_off.close_listener(reg);
        self.retired_under = Some(nix::unistd::getppid().as_raw());
        self.next_check = Some(now + MASTER_CHECK);
        core.retire("Dovecot's master closed our pipe (reload or stop)");
    }

    /// The master's SIGINT ("you look idle"): obeyed only when we hold
    /// nobody, not even a hand-off in progress.
    pub fn idle_exit(&self, core: &mut IdleCore, now: Instant) {
        if core.is_empty() && self.hand_off.len() == 0 {
            core.shutdown("SIGINT", now);
        } else {
            info!(
                "SIGINT from Dovecot's master ignored: {} clients parked",
                core.len()
            );
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_check
    }

    /// Once retired: has the master itself exited (a stop, not a reload)?
    pub fn check_master(&mut self, core: &mut IdleCore, now: Instant) {
        let (Some(master), Some(at)) = (self.retired_under, self.next_check) else {
            return;
        };
        if at > now {
            return;
        }
        // Its children are re-parented when it exits.
        if nix::unistd::getppid().as_raw() == master {
            self.next_check = Some(now + MASTER_CHECK);
            return;
        }
        self.next_check = None;
        if self.shutdown_clients {
            core.shutdown("Dovecot's master stopped, with shutdown_clients", now);
        } else {
            info!(
                "Dovecot's master stopped; {} parked connections stay parked",
                core.len()
            );
        }
    }
}
