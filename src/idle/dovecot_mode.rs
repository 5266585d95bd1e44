//! Dovecot mode's adapters, set up together: hand-offs in on
//! BASE_DIR/imap-hibernate, returns out through BASE_DIR/imap-master, and
//! the master's pipes when Dovecot's master started us.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::SystemTime;

use log::info;
use mio::Registry;

use super::budget::Budget;
use super::config::Config;
use super::hand_off::HandOff;
use super::master_return::Masters;
use super::service::{self, Service};
use super::signals::SignalAdapter;
use super::tokens::{register, Source};
use crate::setup::SetupError;

pub(super) struct Dovecot {
    pub hand_off: HandOff,
    pub masters: Masters,
    pub service: Option<Service>,
}

impl Dovecot {
    pub fn start(
        cfg: &Config,
        reg: &Registry,
        signals: &mut SignalAdapter,
        budget: &Budget,
        park_path: &Path,
    ) -> Result<Dovecot, SetupError> {
        let max_parked = budget.max_parked;
        let (listener, service, base_dir) = service::listener(cfg)?;
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
             up to {limit} parked; statistics on {}",
            env!("CARGO_PKG_VERSION"),
            base_dir.join("imap-hibernate").display(),
            base_dir.join("imap-master").display(),
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
        })
    }
}
