//! Dovecot mode's adapters together: hand-offs in, returns out, the
//! master's pipes when it started us, and anvil with 2.4's admin socket.
//! Set up here so that the loop only dispatches to them.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use log::info;
use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::admin_socket::{self, AdminSocket};
use super::anvil::{self, Anvil};
use super::budget::Budget;
use super::clients::IdleCore;
use super::config::Config;
use super::core::Presence;
use super::hand_off::HandOff;
use super::master_return::Masters;
use super::service::{self, Service};
use super::signals::SignalAdapter;
use super::tokens::{token, Source};
use crate::proto::anvil::Format;
use crate::setup::{setup, SetupError};

pub struct Dovecot {
    pub hand_off: HandOff,
    pub masters: Masters,
    pub service: Option<Service>,
    pub anvil: Option<Anvil>,
    pub admin: Option<AdminSocket>,
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

impl Dovecot {
    /// `handed`: what [`service::listener`] found, taken before anything
    /// of ours opened a descriptor.
    pub fn new(
        handed: (OwnedFd, Option<Service>, PathBuf),
        budget: &Budget,
        reg: &Registry,
        signals: &mut SignalAdapter,
        park_path: &Path,
        anvil_pipe: Option<File>,
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
             ({} at once), up to {limit} parked; statistics on {}{anvil_note}",
            env!("CARGO_PKG_VERSION"),
            base_dir.join("imap-hibernate").display(),
            base_dir.join("imap-master").display(),
            budget.masters,
            park_path.display(),
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
}
