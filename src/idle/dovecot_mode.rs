//! Dovecot mode's adapters together: hand-offs in, returns out, the
//! master's pipes when it started us, and anvil with 2.4's admin socket.
//! Set up here so that the loop only dispatches to them. Also what a
//! reload or a stop of Dovecot's master means for the clients we hold.
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

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use log::info;
use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::admin_socket::{self, AdminSocket};
use super::anvil::{self, Anvil};
use super::budget::Budget;
use super::clients::IdleCore;
use super::config::Config;
use super::core::Presence;
use super::from_predecessor::Predecessor;
use super::hand_off::HandOff;
use super::master_return::Masters;
use super::service::{self, Service};
use super::signals::SignalAdapter;
use super::tokens::{token, Source};
use crate::proto::anvil::Format;
use crate::proto::native::ListenerKind;
use crate::setup::{setup, SetupError};

/// How often a retired process looks whether the master is still there.
const MASTER_CHECK: Duration = Duration::from_secs(1);

pub struct Dovecot {
    pub hand_off: HandOff,
    pub masters: Masters,
    pub service: Option<Service>,
    pub anvil: Option<Anvil>,
    pub admin: Option<AdminSocket>,
    /// Set when the death pipe closed: the master's pid then, which we
    /// watch for its exit.
    retired_under: Option<i32>,
    shutdown_clients: bool,
    next_check: Option<Instant>,
}

/// What must be taken before privileges are dropped: anvil's pipe, which
/// belongs to Dovecot's master (only when it started us).
pub fn before_privileges(cfg: &Config) -> Option<File> {
    (cfg.dovecot && service::started_by_master())
        .then(anvil::take_pipe)
        .flatten()
}

fn register(reg: &Registry, fd: i32, source: Source, interest: Interest) -> Result<(), SetupError> {
    setup(
        "registering with the poll",
        reg.register(&mut SourceFd(&fd), token(source), interest),
    )
}

/// The imap-hibernate listener when Dovecot's master did not start us: a
/// predecessor's (a hand-over), or our own in `--dovecot-base-dir`.
pub fn listener(
    cfg: &Config,
    predecessor: Option<&mut Predecessor>,
) -> Result<(OwnedFd, Option<Service>, PathBuf), SetupError> {
    let inherited = predecessor.and_then(|p| p.take(ListenerKind::HandOff));
    match (inherited, &cfg.dovecot_base_dir) {
        (Some(l), Some(dir)) => Ok((l, None, dir.clone())),
        _ => service::listener(cfg),
    }
}

impl Dovecot {
    /// `handed`: what [`service::listener`] found, taken before anything
    /// of ours opened a descriptor.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        handed: (OwnedFd, Option<Service>, PathBuf),
        budget: &Budget,
        reg: &Registry,
        signals: &mut SignalAdapter,
        park_path: &Path,
        anvil_pipe: Option<File>,
        reopen: bool,
    ) -> Result<Dovecot, SetupError> {
        let (listener, service, base_dir) = handed;
        register(
            reg,
            listener.as_raw_fd(),
            Source::HandOffListener,
            Interest::READABLE,
        )?;
        let mut admin = None;
        let mut anvil = None;
        if let Some(s) = &service {
            register(
                reg,
                s.master_dead.as_raw_fd(),
                Source::MasterDead,
                Interest::READABLE,
            )?;
            signals.set_under_master();
            admin = admin_socket::from_master().map(AdminSocket::new);
            if let Some(a) = &admin {
                register(
                    reg,
                    a.listener().as_raw_fd(),
                    Source::AdminListener,
                    Interest::READABLE,
                )?;
            }
            if let Some(pipe) = anvil_pipe {
                let version = std::env::var("DOVECOT_VERSION").ok();
                let format = Format::of_master(version.as_deref(), admin.is_some());
                let prefix = crate::setup::random_key()?.to_ne_bytes();
                let a = Anvil::new(pipe, format, prefix);
                register(
                    reg,
                    a.fd().as_raw_fd(),
                    Source::AnvilPipe,
                    Interest::WRITABLE,
                )?;
                anvil = Some(a);
            }
        }
        let max_parked = budget.max_parked;
        let (by, limit) = match &service {
            Some(s) => (" (started by Dovecot's master)", s.limit(max_parked)),
            None => ("", max_parked),
        };
        let anvil_note = match anvil.as_ref().map(Anvil::format) {
            Some(Format::V23) => "; registering clients with anvil (2.3)",
            Some(Format::V24 { kick: b'A' }) => "; registering clients with anvil (2.4, kick)",
            Some(Format::V24 { .. }) => "; registering clients with anvil (2.4)",
            None => "",
        };
        info!(
            "imap-idle {} in Dovecot mode{by}: taking clients on {}, returning them to {} \
             ({} at once), up to {limit} parked; statistics on {}{anvil_note}; notify fds {}",
            env!("CARGO_PKG_VERSION"),
            base_dir.join("imap-hibernate").display(),
            base_dir.join("imap-master").display(),
            budget.masters,
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
            anvil,
            admin,
            retired_under: None,
            shutdown_clients: cfg.dovecot_shutdown_clients,
            next_check: None,
        })
    }

    /// Anvil's pipe has room, or the admin socket has something.
    pub fn event(&mut self, source: Source, core: &mut IdleCore, reg: &Registry) {
        match (source, &mut self.admin) {
            (Source::AnvilPipe, _) => {
                if let Some(a) = &mut self.anvil {
                    a.flush();
                }
            }
            (Source::AdminListener, Some(admin)) => admin.accept(reg),
            (Source::Admin(key), Some(admin)) => admin.event(key, core, self.anvil.as_ref(), reg),
            _ => {}
        }
    }

    /// A connection joined or left the core: anvil hears of it.
    pub fn presence(&mut self, p: &Presence, joined: bool) {
        if let Some(a) = &mut self.anvil {
            a.presence(p, joined);
        }
    }

    /// For the SIGUSR1 summary.
    pub fn summary(&self) -> String {
        self.anvil
            .as_ref()
            .map_or(String::new(), |a| format!("; {}", a.summary()))
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
