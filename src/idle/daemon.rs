//! The event loop: one thread, one `mio::Poll`. Each event goes to the
//! adapter that owns its token; adapters call the core; the loop then
//! carries out what the core asked for. Set-up errors leave `run`; errors
//! inside the loop are logged where the connection they concern is
//! closed, and the loop goes on.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Events, Poll, Token};

use super::accept::PAUSE_MS;
use super::admission::Policy;
use super::budget::Budget;
use super::clients::{Clients, IdleCore};
use super::config::Config;
use super::core::Core;
use super::dovecot_mode::{self, Dovecot};
use super::from_predecessor::{self, Predecessor};
use super::hand_off::HandOff;
use super::inotify::Inotify;
use super::park_socket::{Held, ParkSocket};
use super::service::{self, Service};
use super::signals::SignalAdapter;
use super::to_successor::Succession;
use super::tokens::{register, source, Source};
use super::tracker_link::TrackerLink;
use crate::proto::native::ListenerKind as Kind;
use crate::setup::setup;
pub use crate::setup::SetupError;
use crate::supervisor::Supervisor;
use crate::sys::activation::Activated;
use crate::sys::limits;

mod actions;

pub struct Daemon {
    poll: Poll,
    core: IdleCore,
    clients: Clients,
    inotify: Inotify,
    park: ParkSocket,
    /// Native mode's return path.
    tracker: Option<TrackerLink>,
    dovecot: Option<Dovecot>,
    signals: SignalAdapter,
    accept_paused_until: Option<Instant>,
    /// Room opened up under the master's client_limit: accept what queued.
    accept_again: bool,
    /// The park socket's path, when we bound it (not passed to us).
    park_socket: Option<PathBuf>,
    supervisor: Supervisor,
    succession: Succession,
    predecessor: Option<Predecessor>,
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, SetupError> {
        let mut activated = Activated::from_env().map_err(SetupError)?;
        let anvil_pipe = dovecot_mode::before_privileges(&cfg);
        let reopen = service::drop_privileges(cfg.dovecot)?;
        // Before anything of ours takes a descriptor: Dovecot's master
        // leaves its listener at 7, 8 or 9 by version.
        // (A successor takes its predecessor's instead.)
        let by_master = cfg.dovecot && service::started_by_master();
        let handed = by_master.then(|| service::listener(&cfg)).transpose()?;
        let mut signals = setup("setting up signals", SignalAdapter::new(false))?;
        let fd_limit = setup("raising the open-file limit", limits::raise_nofile())?;
        let budget = Budget::for_config(fd_limit, &cfg);
        let max_parked = budget.max_parked;
        let policy = Policy::from_config(&cfg, budget.controls)?;
        let shared = cfg.dovecot && service::started_by_master();
        let mut predecessor = from_predecessor::connect(&cfg)?;
        let (listener, park_path, ours) =
            from_predecessor::park_listener(&mut predecessor, &cfg, shared, &mut activated)?;
        let inotify = setup("creating inotify", Inotify::new(reopen, budget.closing))?;
        let poll = setup("creating the poll", Poll::new())?;
        let reg = poll.registry();
        let fixed = [
            (listener.as_raw_fd(), Source::ParkListener),
            (signals.as_fd().as_raw_fd(), Source::Signals),
            (inotify.as_fd().as_raw_fd(), Source::Inotify),
        ];
        register(reg, &fixed)?;
        let epoch = from_predecessor::epoch(&predecessor);
        let handed = match handed {
            Some(h) => Some(h),
            None if cfg.dovecot => Some(dovecot_mode::listener(&cfg, predecessor.as_mut())?),
            None => None,
        };
        let (tracker, dovecot) = if let Some(handed) = handed {
            let d = Dovecot::new(
                &cfg,
                handed,
                &budget,
                reg,
                &mut signals,
                &park_path,
                anvil_pipe,
                reopen,
            )?;
            (None, Some(d))
        } else {
            info!(
                "imap-idle {} listening on {}, returning to {}, up to {max_parked} parked",
                env!("CARGO_PKG_VERSION"),
                park_path.display(),
                cfg.tracker_socket.display()
            );
            let link = TrackerLink::new(cfg.tracker_socket.clone(), cfg.return_window);
            (Some(link), None)
        };
        for name in activated.unused() {
            warn!("the service manager passed a socket named {name:?}, which is not ours: closed");
        }
        let key = crate::setup::random_key()?;
        let mut core = Core::new(max_parked, !cfg.dovecot, epoch, key, cfg.tuning);
        if dovecot.as_ref().is_some_and(|d| d.anvil.is_some()) {
            core.announce_presence();
        }
        Ok(Daemon {
            poll,
            core,
            clients: Clients::new(),
            inotify,
            park: ParkSocket::new(listener, cfg.dovecot, policy),
            tracker,
            dovecot,
            signals,
            accept_paused_until: None,
            accept_again: false,
            park_socket: ours.then_some(park_path),
            supervisor: service::supervisor(epoch),
            succession: Succession::default(),
            predecessor,
        })
    }

    pub fn run(mut self) -> Result<(), SetupError> {
        if let Some(p) = self.predecessor.take() {
            p.adopt_all(&mut self.held(Instant::now()).0);
            self.carry_out();
        }
        self.report_capacity();
        self.supervisor.ready(self.core.status_line());
        let mut events = Events::with_capacity(1024);
        loop {
            if std::mem::take(&mut self.accept_again) {
                self.accept(Instant::now());
            }
            let timeout = if self.clients.has_ready() || self.park.has_ready() {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SetupError(format!("poll failed: {e}"))),
            }
            let now = Instant::now();
            for event in events.iter() {
                self.dispatch(event.token(), now);
                self.carry_out();
            }
            self.clients.turn(&mut self.core, now);
            self.carry_out();
            self.park_turn(now);
            self.serve_successor(Instant::now());
            self.fire_timers(Instant::now());
            self.pump(Instant::now());
            let draining = self.core.draining();
            (self.supervisor).tick(Instant::now(), draining, || self.core.status_line());
            if self.core.done() {
                if let Some(t) = &mut self.tracker {
                    t.flush_before_exit();
                }
                break;
            }
        }
        info!("all connections handed back; exiting");
        if let Some(path) = self
            .park_socket
            .as_ref()
            .filter(|_| !self.succession.handed_over())
        {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let service = self.service().and_then(|s| s.pending_until);
        let tracker = self.tracker.as_ref().and_then(|t| t.retry_at());
        let master = self.dovecot.as_ref().and_then(|d| d.next_deadline());
        [
            master,
            self.core.next_deadline(),
            self.park.next_deadline(),
            tracker,
            self.accept_paused_until,
            service,
            self.supervisor.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn service(&self) -> Option<&Service> {
        self.dovecot.as_ref().and_then(|d| d.service.as_ref())
    }

    fn held(&mut self, now: Instant) -> (Held<'_>, &mut ParkSocket, Option<&mut HandOff>) {
        let held = Held {
            core: &mut self.core,
            clients: &mut self.clients,
            inotify: &mut self.inotify,
            reg: self.poll.registry(),
            now,
        };
        let hand_off = self.dovecot.as_mut().map(|d| &mut d.hand_off);
        (held, &mut self.park, hand_off)
    }

    fn dispatch(&mut self, token: Token, now: Instant) {
        let Some(source) = source(token) else {
            // Spurious events happen; ignore tokens we do not know.
            return;
        };
        let reg = self.poll.registry();
        match source {
            Source::ParkListener | Source::HandOffListener => self.accept(now),
            Source::Signals => self.signals(now),
            Source::Inotify => self.inotify.readable(&mut self.core, now),
            Source::TrackerLink => {
                if let Some(t) = &mut self.tracker {
                    t.event(&mut self.core, reg, now);
                }
            }
            Source::MasterDead => {
                if let Some(d) = &mut self.dovecot {
                    d.master_closed_pipe(&mut self.core, reg, now);
                }
            }
            Source::Control(key) => {
                let (mut held, park, _) = self.held(now);
                if park.event(key, &mut held) {
                    self.accept(now);
                }
            }
            Source::HandOff(key) => {
                let (mut held, _, hand_off) = self.held(now);
                let resume = hand_off.is_some_and(|h| h.event(key, &mut held));
                self.report_capacity();
                if resume {
                    self.accept(now);
                }
            }
            Source::Master(m) => {
                if let Some(d) = &mut self.dovecot {
                    d.masters.event(m, &mut self.core, reg, now);
                }
            }
            Source::AnvilPipe | Source::AdminListener | Source::Admin(_) => {
                if let Some(d) = &mut self.dovecot {
                    d.event(source, &mut self.core, reg);
                }
            }
            Source::Client(key) => self.clients.readable(&mut self.core, key, now),
            Source::Notify(key) => self.inotify.notify_readable(key, &mut self.core, now),
        }
    }

    /// Control connections with packets left from their last turn.
    fn park_turn(&mut self, now: Instant) {
        if !self.park.has_ready() {
            return;
        }
        let (mut held, park, _) = self.held(now);
        let resume = park.turn(&mut held);
        self.carry_out();
        if resume {
            self.accept(now);
        }
    }

    /// A successor said Hello: hand it our listeners and parked clients;
    /// once it took them all, what is left here drains and we exit.
    fn serve_successor(&mut self, now: Instant) {
        let Some((sock, pid)) = self.park.successor.take() else {
            return;
        };
        // Keepalives due now go out from here, not skipped over there.
        self.fire_timers(now);
        let mut listeners = vec![(Kind::Park, self.park.listener.as_fd())];
        if let Some(d) = &self.dovecot {
            listeners.extend(d.hand_off.listener().map(|l| (Kind::HandOff, l)));
        }
        if self
            .succession
            .serve(sock, pid, &listeners, &mut self.core, &self.inotify, now)
        {
            self.core.shutdown("handed over to a successor", now);
        }
        self.carry_out();
    }

    /// Both listeners, unless out of descriptors a moment ago.
    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() || self.succession.handed_over() {
            return;
        }
        let max = self.core.max_parked();
        let cap = self.service().map_or(usize::MAX, |s| s.limit(max));
        let (mut held, park, hand_off) = self.held(now);
        let mut result = park.accept(&mut held);
        if let Some(h) = hand_off {
            result = result.and(h.accept(&mut held, cap));
        }
        self.carry_out();
        self.report_capacity();
        if let Err(e) = result {
            warn!("accepting: {e}; pausing for {PAUSE_MS} ms");
            self.accept_paused_until = Some(Instant::now() + Duration::from_millis(PAUSE_MS));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        if self
            .service()
            .and_then(|s| s.pending_until)
            .is_some_and(|at| at <= now)
        {
            self.report_capacity();
        }
        if self.accept_paused_until.is_some_and(|at| at <= now) {
            self.accept_paused_until = None;
            self.accept(now);
        }
        if self.park.expire(now, self.poll.registry()) {
            self.accept(now);
        }
        self.core.expire(now);
        self.carry_out();
    }

    fn pump(&mut self, now: Instant) {
        let reg = self.poll.registry();
        if let Some(t) = &mut self.tracker {
            t.pump(&mut self.core, reg, now);
        }
        if let Some(d) = &mut self.dovecot {
            d.check_master(&mut self.core, now);
            d.masters.pump(&mut self.core, reg, now);
        }
        self.carry_out();
    }

    /// Dovecot's master wants to know how many more clients we take.
    fn report_capacity(&mut self) {
        let used = self.core.len();
        let max = self.core.max_parked();
        if let Some(d) = &mut self.dovecot {
            let used = used + d.hand_off.len();
            if let Some(s) = &mut d.service {
                self.accept_again |= s.report(used, max);
            }
        }
    }
}
