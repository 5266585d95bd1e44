//! The event loop: one thread, one `mio::Poll`, dispatch on the token and
//! nothing else. Set-up errors leave `run`; errors inside the loop are
//! logged where the connection they concern is closed, and the loop goes on.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use slab::Slab;

use super::config::Config;
use super::control::Control;
use super::dovecot_in::HibernateConn;
use super::dovecot_out::MasterConn;
use super::parked::{parked_in, Conn, Phase};
use super::service::{self, Service};
use super::timers::{Millis, Timers};
use super::tracker::Tracker;
use super::users::Users;
use super::watches::{Watcher, Watches};
use crate::proto::native::{Activity, ConnInfo, Stats, WakeReason, MAX_PACKET};
pub use crate::setup::SetupError;
use crate::setup::{ensure_dir, setup};
use crate::sys::signals::Signals;
use crate::sys::{limits, SeqPacket};

pub(super) const LISTENER: Token = Token(0);
pub(super) const SIGNALS: Token = Token(1);
pub(super) const INOTIFY: Token = Token(2);
pub(super) const TRACKER: Token = Token(3);
/// Dovecot mode: the imap-hibernate listener and the master's death pipe.
pub(super) const HIBERNATE_LISTENER: Token = Token(4);
pub(super) const MASTER_DEAD: Token = Token(5);
pub(super) const FIRST_CONTROL: usize = 16;
/// Dovecot hand-off connections (imap -> us).
pub(super) const FIRST_HIBERNATE: usize = 1 << 20;
/// Dovecot return connections (us -> imap-master).
pub(super) const FIRST_MASTER: usize = 1 << 24;
pub(super) const FIRST_CONN: usize = 1 << 32;
/// Dovecot notify fds: `FIRST_NOTIFY + key` of the connection they wake.
pub(super) const FIRST_NOTIFY: usize = 1 << 40;

/// Control connections (mail processes, admin tools) at most; accepting
/// pauses at this count and resumes below 90% of it.
pub(super) const MAX_CONTROLS: usize = 512;
/// Descriptors kept free for control connections, the listener, inotify,
/// the tracker link and logging: a sixteenth of the limit, at least 32,
/// at most what MAX_CONTROLS control connections need.
fn fd_reserve(limit: usize) -> usize {
    (limit / 16).clamp(32, MAX_CONTROLS + 64)
}
/// How long accepting pauses after EMFILE/ENFILE.
pub(super) const ACCEPT_PAUSE_MS: Millis = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shutdown {
    Running,
    /// Returning every connection to the tracker.
    Draining,
}

pub struct Daemon {
    pub(super) poll: Poll,
    pub(super) conns: Slab<Conn>,
    pub(super) controls: Slab<Control>,
    pub(super) listener: SeqPacket,
    pub(super) accept_paused_until: Option<Millis>,
    pub(super) watches: Watches,
    pub(super) timers: Timers,
    pub(super) tracker: Tracker,
    /// Woken connections waiting for their turn to go back, in order
    /// (key, serial); entries that went stale are skipped.
    pub(super) return_queue: VecDeque<(u32, u32)>,
    pub(super) users: Users,
    pub(super) stats: Stats,
    /// Shared by every read: packets from control connections, client input.
    pub(super) scratch: Box<[u8]>,
    pub(super) woken: Vec<Watcher>,
    /// When the loop woke for the events it is handling.
    pub(super) event_at: Instant,
    /// Latest wake latencies (watched change noticed -> descriptor sent
    /// back), in microseconds, for the stats.
    pub(super) wake_us: VecDeque<u32>,
    epoch: Instant,
    pub(super) max_parked: usize,
    pub(super) next_serial: u32,
    pub(super) shutdown: Shutdown,
    signals: Signals,
    pub(super) cfg: Config,
    /// Dovecot mode: hand-offs in progress, returns in progress, where
    /// returns go, and the master's pipes when it started us.
    pub(super) hibernate_listener: Option<OwnedFd>,
    pub(super) hibernating: Slab<HibernateConn>,
    pub(super) masters: Slab<MasterConn>,
    pub(super) master_socket: PathBuf,
    pub(super) service: Option<Service>,
    /// Wall-clock time at `epoch`, for Dovecot's hibernation_started.
    pub(super) started_wall: SystemTime,
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, SetupError> {
        let signals = setup(
            "setting up signals",
            Signals::new(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1]),
        )?;
        let fd_limit = setup("raising the open-file limit", limits::raise_nofile())?;
        // Under Dovecot a parked client also holds Dovecot's notify fd.
        let fds_per_client = if cfg.dovecot { 2 } else { 1 };
        let allowed = ((fd_limit as usize).saturating_sub(fd_reserve(fd_limit as usize))
            / fds_per_client)
            .max(1);
        let max_parked = match cfg.max_parked {
            Some(n) if n > allowed => {
                warn!(
                    "--max-parked {n} is more than the open-file limit allows \
                     ({fd_limit} fds); using {allowed}"
                );
                allowed
            }
            Some(n) => n,
            None => allowed,
        };
        if let Some(dir) = cfg.park_socket.parent() {
            ensure_dir(dir)?;
        }
        let listener = setup(
            format_args!("listening on {}", cfg.park_socket.display()),
            SeqPacket::listen(&cfg.park_socket, 0o660),
        )?;
        let watches = setup("creating the inotify instance", Watches::new())?;
        let poll = setup("creating the poll", Poll::new())?;
        let reg = poll.registry();
        for (fd, token) in [
            (listener.as_raw_fd(), LISTENER),
            (signals.as_fd().as_raw_fd(), SIGNALS),
            (watches.as_fd().as_raw_fd(), INOTIFY),
        ] {
            setup(
                "registering with the poll",
                reg.register(&mut SourceFd(&fd), token, Interest::READABLE),
            )?;
        }
        let (hibernate_listener, service, master_socket) = if cfg.dovecot {
            let (listener, service, base_dir) = dovecot_listener(&cfg)?;
            setup(
                "registering with the poll",
                reg.register(
                    &mut SourceFd(&listener.as_raw_fd()),
                    HIBERNATE_LISTENER,
                    Interest::READABLE,
                ),
            )?;
            if let Some(s) = &service {
                setup(
                    "registering with the poll",
                    reg.register(
                        &mut SourceFd(&s.master_dead.as_raw_fd()),
                        MASTER_DEAD,
                        Interest::READABLE,
                    ),
                )?;
            }
            info!(
                "imap-idle {} in Dovecot mode{}: taking clients on {}, returning them to {}, \
                 up to {max_parked} parked; statistics on {}",
                env!("CARGO_PKG_VERSION"),
                if service.is_some() {
                    " (started by Dovecot's master)"
                } else {
                    ""
                },
                base_dir.join("imap-hibernate").display(),
                base_dir.join("imap-master").display(),
                cfg.park_socket.display(),
            );
            (Some(listener), service, base_dir.join("imap-master"))
        } else {
            info!(
                "imap-idle {} listening on {}, returning to {}, up to {max_parked} parked",
                env!("CARGO_PKG_VERSION"),
                cfg.park_socket.display(),
                cfg.tracker_socket.display()
            );
            (None, None, PathBuf::new())
        };
        Ok(Daemon {
            poll,
            conns: Slab::new(),
            controls: Slab::new(),
            listener,
            accept_paused_until: None,
            watches,
            timers: Timers::default(),
            tracker: Tracker::new(),
            return_queue: VecDeque::new(),
            users: Users::default(),
            stats: Stats::default(),
            scratch: vec![0; MAX_PACKET + 1].into_boxed_slice(),
            woken: Vec::new(),
            event_at: Instant::now(),
            wake_us: VecDeque::new(),
            epoch: Instant::now(),
            max_parked,
            next_serial: 0,
            shutdown: Shutdown::Running,
            signals,
            cfg,
            hibernate_listener,
            hibernating: Slab::new(),
            masters: Slab::new(),
            master_socket,
            service,
            started_wall: SystemTime::now(),
        })
    }

    /// Dovecot's master wants to know how many more clients we take.
    pub(super) fn report_capacity(&mut self) {
        if let Some(s) = &mut self.service {
            s.report(self.conns.len() + self.hibernating.len(), self.max_parked);
        }
    }

    pub(super) fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    pub fn run(mut self) -> Result<(), SetupError> {
        self.report_capacity();
        let mut events = Events::with_capacity(1024);
        loop {
            let now = self.now();
            let status_at = self
                .service
                .as_ref()
                .and_then(|s| s.pending_until)
                .map(|at| at.saturating_duration_since(Instant::now()).as_millis() as Millis + now);
            let timeout = [
                self.timers.next_deadline(),
                self.tracker.retry_at,
                self.accept_paused_until,
                status_at,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now)));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SetupError(format!("poll failed: {e}"))),
            }
            self.event_at = Instant::now();
            for event in events.iter() {
                self.dispatch(event.token());
            }
            self.fire_timers();
            if self.cfg.dovecot {
                self.pump_masters();
            } else {
                self.pump_tracker();
            }
            if self.shutdown == Shutdown::Draining && self.conns.is_empty() {
                self.tracker.flush_before_exit();
                break;
            }
        }
        info!("all connections handed back; exiting");
        let _ = fs::remove_file(&self.cfg.park_socket);
        Ok(())
    }

    fn dispatch(&mut self, token: Token) {
        match token {
            LISTENER => self.accept_controls(),
            SIGNALS => self.handle_signals(),
            INOTIFY => self.watch_events(),
            TRACKER => self.tracker_event(),
            HIBERNATE_LISTENER => self.accept_hibernates(),
            MASTER_DEAD => {
                warn!("Dovecot's master is gone");
                self.stop(Signal::SIGTERM);
            }
            Token(t) if t >= FIRST_NOTIFY => self.notify_event((t - FIRST_NOTIFY) as u32),
            Token(t) if t >= FIRST_CONN => self.client_event((t - FIRST_CONN) as u32),
            Token(t) if t >= FIRST_MASTER => self.master_event(t - FIRST_MASTER),
            Token(t) if t >= FIRST_HIBERNATE => self.hibernate_event(t - FIRST_HIBERNATE),
            Token(t) if t >= FIRST_CONTROL => self.control_event(t - FIRST_CONTROL),
            // Spurious events happen; ignore tokens we do not know.
            _ => {}
        }
    }

    fn handle_signals(&mut self) {
        loop {
            match self.signals.pending() {
                Ok(Some(Signal::SIGUSR1)) => info!("{}", self.summary()),
                Ok(Some(Signal::SIGINT)) if self.service.is_some() => {
                    // Dovecot's master asks an idle-looking process to go.
                    if self.conns.is_empty() && self.hibernating.is_empty() {
                        self.stop(Signal::SIGINT);
                    } else {
                        info!(
                            "SIGINT from Dovecot's master ignored: {} clients parked",
                            self.conns.len()
                        );
                    }
                }
                Ok(Some(sig)) => self.stop(sig),
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("reading signals: {e}");
                    break;
                }
            }
        }
    }

    /// First signal: hand everyone back. Second: stop waiting for the tracker.
    pub(super) fn stop(&mut self, sig: Signal) {
        if self.shutdown == Shutdown::Running {
            self.shutdown = Shutdown::Draining;
            let keys: Vec<u32> = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase == Phase::Parked)
                .map(|(k, _)| k as u32)
                .collect();
            info!(
                "{sig}: returning {} parked connections to the tracker, then exiting",
                keys.len()
            );
            for key in keys {
                self.wake(key, WakeReason::Shutdown);
            }
        } else {
            let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
            warn!(
                "{sig} again: giving up on {} connections not yet taken back",
                keys.len()
            );
            for key in keys {
                self.give_up(key, "the server is shutting down");
            }
        }
    }

    fn watch_events(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        if let Err(e) = self.watches.read(&mut woken) {
            error!("reading inotify events: {e}");
        }
        for &(key, serial) in &woken {
            if parked_in(&self.conns, (key, serial)) {
                self.wake(key, WakeReason::Changed);
            }
        }
        woken.clear();
        self.woken = woken;
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        if self
            .service
            .as_ref()
            .and_then(|s| s.pending_until)
            .is_some_and(|at| at <= Instant::now())
        {
            self.report_capacity();
        }
        if self.accept_paused_until.is_some_and(|at| at <= now) {
            self.accept_paused_until = None;
            self.accept_controls();
            self.accept_hibernates();
        }
        while let Some((key, gen)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get(key as usize) else {
                continue;
            };
            if conn.timer_gen != gen {
                continue;
            }
            match conn.phase {
                Phase::Parked => self.keepalive(key, now),
                Phase::Waiting => self.retry_return(key, now),
                Phase::Queued | Phase::InFlight => {
                    self.give_up(key, "the session could not be resumed in time")
                }
            }
        }
        let conns = &self.conns;
        self.timers.compact(conns.len(), |key, gen| {
            conns.get(key as usize).is_some_and(|c| c.timer_gen == gen)
        });
    }

    pub(super) fn summary(&self) -> String {
        let s = self.current_stats();
        format!(
            "parked={} returning={} watches={} users={} parks={} refused={} \
             wakes: done={} bad-done={} input={} changed={} shutdown={}; \
             idle-restarted={} returned={} hung-up={} gave-up={} keepalives={}",
            s.parked,
            s.returning,
            s.watches,
            self.users.len(),
            s.parks,
            s.refused,
            s.wake_done,
            s.wake_bad_done,
            s.wake_input,
            s.wake_changed,
            s.wake_shutdown,
            s.idle_restarted,
            s.returned,
            s.hung_up,
            s.gave_up,
            s.keepalives
        )
    }

    /// A connection's descriptor was just sent back: note how long after
    /// the change that woke it (once per connection).
    pub(super) fn sample_wake(&mut self, key: u32) {
        const KEEP: usize = 4096;
        let Some(w) = self
            .conns
            .get_mut(key as usize)
            .and_then(|c| c.waking_mut())
        else {
            return;
        };
        if w.reason != WakeReason::Changed {
            return;
        }
        if let Some(at) = w.woken_at.take() {
            if self.wake_us.len() == KEEP {
                self.wake_us.pop_front();
            }
            self.wake_us
                .push_back(at.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
    }

    /// Every connection held (of `user`, or all), for the tracker's `who`.
    pub(super) fn describe(&self, user: Option<&str>) -> Vec<ConnInfo> {
        let now_secs = (self.now() / 1000) as u32;
        self.conns
            .iter()
            .filter(|(_, c)| user.is_none_or(|u| self.users.name(c.user) == u))
            .map(|(key, c)| ConnInfo {
                id: c.id(key as u32),
                user: self.users.name(c.user).to_owned(),
                // The state is opaque to us: the tracker knows the mailbox.
                mailbox: String::new(),
                activity: if c.phase == Phase::Parked {
                    Activity::Parked
                } else {
                    Activity::Returning
                },
                secs: now_secs.saturating_sub(c.parked_at),
            })
            .collect()
    }

    pub(super) fn current_stats(&self) -> Stats {
        let returning = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::Parked)
            .count() as u64;
        Stats {
            parked: self.conns.len() as u64 - returning,
            returning,
            watches: self.watches.count() as u64,
            wake_us: self.wake_us.iter().copied().collect(),
            ..self.stats.clone()
        }
    }
}

/// The imap-hibernate listener: the master's, or our own bound in
/// `--dovecot-base-dir`. Returns it with the base_dir returns go to.
fn dovecot_listener(cfg: &Config) -> Result<(OwnedFd, Option<Service>, PathBuf), SetupError> {
    if let Some((service, listener)) = service::from_master() {
        let base_dir = match &cfg.dovecot_base_dir {
            Some(d) => d.clone(),
            None => {
                let addr: nix::sys::socket::UnixAddr = setup(
                    "reading the listener's address",
                    nix::sys::socket::getsockname(listener.as_raw_fd()).map_err(io::Error::from),
                )?;
                addr.path()
                    .and_then(|p| p.parent())
                    .map(PathBuf::from)
                    .ok_or_else(|| {
                        SetupError(
                            "the listener from Dovecot's master has no path; \
                             give --dovecot-base-dir"
                                .into(),
                        )
                    })?
            }
        };
        return Ok((listener, Some(service), base_dir));
    }
    let Some(base_dir) = cfg.dovecot_base_dir.clone() else {
        return Err(SetupError(
            "--dovecot needs --dovecot-base-dir when not started by Dovecot's master".into(),
        ));
    };
    let path = base_dir.join("imap-hibernate");
    let listener = setup(
        format_args!("listening on {}", path.display()),
        crate::sys::listen_unix(&path, nix::sys::socket::SockType::Stream, 0o660),
    )?;
    // As Dovecot's own listener: 0660 with its internal group, which its
    // imap processes carry as an extra group.
    match nix::unistd::Group::from_name(&cfg.dovecot_group) {
        Ok(Some(g)) => setup(
            format_args!("setting the group of {}", path.display()),
            nix::unistd::chown(&path, None, Some(g.gid)).map_err(io::Error::from),
        )?,
        _ => warn!(
            "group {} not found: {} keeps our group, so imap processes may not reach it",
            cfg.dovecot_group,
            path.display()
        ),
    }
    Ok((listener, None, base_dir))
}
