//! The event loop: one thread, one `mio::Poll`. Each event goes to the
//! adapter that owns its token; adapters call the core; the loop then
//! carries out what the core asked for. Set-up errors leave `run`; errors
//! inside the loop are logged where the connection they concern is
//! closed, and the loop goes on.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::inotify::WatchDescriptor;
use nix::sys::socket::{self, Shutdown};

use super::accept::PAUSE_MS;
use super::admission::Policy;
use super::budget::Budget;
use super::clients::{self, Clients, IdleCore};
use super::config::Config;
use super::core::{Action, Core};
use super::dovecot_mode::{self, Dovecot};
use super::from_predecessor::{self, Predecessor};
use super::hand_off::HandOff;
use super::inotify::Inotify;
use super::park_socket::{Held, ParkSocket};
use super::service::{self, Service};
use super::signals::{Command, SignalAdapter};
use super::to_successor::Succession;
use super::tokens::{source, token, Source};
use super::tracker_link::TrackerLink;
use crate::proto::native::ListenerKind as Kind;
use crate::setup::setup;
pub use crate::setup::SetupError;
use crate::sys::{self, limits, notify};

const BYE: &[u8] = b"* BYE [UNAVAILABLE] Server is busy, please reconnect.\r\n";

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
    park_socket: PathBuf,
    succession: Succession,
    predecessor: Option<Predecessor>,
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, SetupError> {
        service::drop_privileges()?;
        let mut signals = setup("setting up signals", SignalAdapter::new(false))?;
        let fd_limit = setup("raising the open-file limit", limits::raise_nofile())?;
        let budget = Budget::for_config(fd_limit, &cfg);
        let max_parked = budget.max_parked;
        let policy = Policy::from_config(&cfg, budget.controls)?;
        let shared = cfg.dovecot && service::started_by_master();
        let mut predecessor = from_predecessor::connect(&cfg)?;
        let (listener, park_path) =
            from_predecessor::park_listener(&mut predecessor, &cfg, shared)?;
        let inotify = setup("creating the inotify instance", Inotify::new())?;
        let poll = setup("creating the poll", Poll::new())?;
        let reg = poll.registry();
        for (fd, source) in [
            (listener.as_raw_fd(), Source::ParkListener),
            (signals.as_fd().as_raw_fd(), Source::Signals),
            (inotify.as_fd().as_raw_fd(), Source::Inotify),
        ] {
            setup(
                "registering with the poll",
                reg.register(&mut SourceFd(&fd), token(source), Interest::READABLE),
            )?;
        }
        let epoch = from_predecessor::epoch(&predecessor);
        let (tracker, dovecot) = if cfg.dovecot {
            let pred = predecessor.as_mut();
            let dovecot = dovecot_mode::start(&cfg, reg, &mut signals, &budget, &park_path, pred)?;
            (None, Some(dovecot))
        } else {
            info!(
                "imap-idle {} listening on {}, returning to {}, up to {max_parked} parked",
                env!("CARGO_PKG_VERSION"),
                park_path.display(),
                cfg.tracker_socket.display()
            );
            (Some(TrackerLink::new(cfg.tracker_socket.clone())), None)
        };
        Ok(Daemon {
            poll,
            core: Core::new(max_parked, !cfg.dovecot, epoch, crate::setup::random_key()?),
            clients: Clients::new(),
            inotify,
            park: ParkSocket::new(listener, cfg.dovecot, policy),
            tracker,
            dovecot,
            signals,
            accept_paused_until: None,
            accept_again: false,
            park_socket: park_path,
            succession: Succession::default(),
            predecessor,
        })
    }

    pub fn run(mut self) -> Result<(), SetupError> {
        if let Some(p) = self.predecessor.take() {
            p.adopt_all(&mut self.held(Instant::now()).0);
            self.carry_out();
        }
        let _ = notify::notify("READY=1");
        self.report_capacity();
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
            if self.core.done() {
                if let Some(t) = &mut self.tracker {
                    t.flush_before_exit();
                }
                break;
            }
        }
        info!("all connections handed back; exiting");
        if !self.succession.handed_over() {
            let _ = fs::remove_file(&self.park_socket);
        }
        Ok(())
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let service = self.service().and_then(|s| s.pending_until);
        let tracker = self.tracker.as_ref().and_then(|t| t.retry_at());
        [
            self.core.next_deadline(),
            self.park.next_deadline(),
            tracker,
            self.accept_paused_until,
            service,
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
                warn!("Dovecot's master is gone");
                self.core.shutdown("SIGTERM", now);
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
            Source::Client(key) => self.clients.readable(&mut self.core, key, now),
            Source::Notify(key) => {
                if let Some(id) = self.core.parked_at_key(key) {
                    self.core.notify_ready(id, now);
                }
            }
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
            listeners.push((Kind::HandOff, d.hand_off.listener()));
        }
        if self.succession.serve(sock, pid, &listeners, &mut self.core) {
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

    fn signals(&mut self, now: Instant) {
        for command in self.signals.commands() {
            match command {
                Command::Summary => info!("{}", self.core.summary()),
                Command::Succeed => self.succession.start(),
                Command::Stop(sig) => self.core.shutdown(sig.as_ref(), now),
                Command::IdleExit => {
                    let hand_offs = self.dovecot.as_ref().map_or(0, |d| d.hand_off.len());
                    if self.core.is_empty() && hand_offs == 0 {
                        self.core.shutdown("SIGINT", now);
                    } else {
                        info!(
                            "SIGINT from Dovecot's master ignored: {} clients parked",
                            self.core.len()
                        );
                    }
                }
            }
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

    /// Everything the core asked for, in order; a write that fails goes
    /// back to the core, which may ask for more.
    fn carry_out(&mut self) {
        while let Some(action) = self.core.next_action() {
            self.carry_out_one(action);
        }
    }

    fn carry_out_one(&mut self, action: Action<OwnedFd, WatchDescriptor>) {
        let reg = self.poll.registry();
        match action {
            Action::Unpoll { fd, notify } => clients::unpoll(reg, fd, notify),
            Action::Write { id, bytes, what } => {
                // A connection that left since has nothing to write to.
                let Some(fd) = self.core.fd(id) else {
                    return;
                };
                if let Err(e) = sys::write_now(fd.as_fd(), &bytes) {
                    let full = e.kind() == io::ErrorKind::WouldBlock;
                    self.core.write_failed(id, full, what, &e.to_string());
                }
            }
            Action::Close(fd) => drop(fd),
            Action::Bye(fd) => {
                let _ = sys::write_now(fd.as_fd(), BYE);
                let _ = socket::shutdown(fd.as_raw_fd(), Shutdown::Both);
            }
            Action::Unwatch(wd) => self.inotify.remove(wd),
            Action::Gone(g) => {
                if let Some(t) = &mut self.tracker {
                    t.tell_gone(g);
                }
            }
            Action::Abandon(id) => {
                if let Some(d) = &mut self.dovecot {
                    d.masters.abandon(id, reg);
                }
            }
            Action::Capacity => self.report_capacity(),
        }
    }
}
