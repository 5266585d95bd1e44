//! Dovecot mode's adapters, set up together: the imap-hibernate listener
//! (the master's, our own, or a predecessor's), the imap-master return
//! path, and the master's pipes when it started us.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::SystemTime;

use log::info;
use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::budget::Budget;
use super::config::Config;
use super::from_predecessor::Predecessor;
use super::hand_off::HandOff;
use super::master_return::Masters;
use super::service::{self, Service};
use super::signals::SignalAdapter;
use super::tokens::{token, Source};
use crate::proto::native::ListenerKind;
use crate::setup::{setup, SetupError};

pub struct Dovecot {
    pub hand_off: HandOff,
    pub masters: Masters,
    pub service: Option<Service>,
}

pub fn start(
    cfg: &Config,
    reg: &Registry,
    signals: &mut SignalAdapter,
    budget: &Budget,
    park_path: &Path,
    predecessor: Option<&mut Predecessor>,
) -> Result<Dovecot, SetupError> {
    let max_parked = budget.max_parked;
    let inherited = predecessor.and_then(|p| p.take(ListenerKind::HandOff));
    let (listener, service, base_dir) = match (inherited, &cfg.dovecot_base_dir) {
        (Some(l), Some(dir)) => (l, None, dir.clone()),
        _ => service::listener(cfg)?,
    };
    let mut sources = vec![(listener.as_raw_fd(), Source::HandOffListener)];
    if let Some(s) = &service {
        sources.push((s.master_dead.as_raw_fd(), Source::MasterDead));
        signals.set_under_master();
    }
    for (fd, source) in sources {
        setup(
            "registering with the poll",
            reg.register(&mut SourceFd(&fd), token(source), Interest::READABLE),
        )?;
    }
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
