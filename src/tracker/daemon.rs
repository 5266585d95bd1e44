//! The tracker's event loop: one thread, one poll. Owns the listening
//! sockets and the signals, and holds the components (peers, routing,
//! waiting clients, `who` queries, spawner); each poll token goes to the
//! one that owns it, and what peers say goes through a [`Handler`].
//! Login processes hand clients in, mail processes take them and report
//! them leaving, imap-idle returns them, operators ask who is doing what.
//! Out of descriptors, accepting pauses for a moment instead of spinning.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::Signal;

use super::config::Config;
use super::handler::Handler;
use super::keep;
use super::listen;
use super::peers::{self, Peers};
use super::pending::Waiting;
use super::routing::Routing;
use super::spawn::Spawner;
use super::trust::{self, Trust};
use super::who::Who;
use crate::setup::{setup, SetupError};
use crate::supervisor::Supervisor;
use crate::sys::activation::Activated;
use crate::sys::signals::Signals;
use crate::sys::{limits, SeqPacket};

/// Where login processes, mail processes and imap-idle connect.
const LISTENER: Token = Token(0);
/// Where `imap-tracker who` connects.
const CONTROL: Token = Token(1);
const SIGNALS: Token = Token(2);
// Tokens from `peers::FIRST_PEER` on are peer connections.
const _: () = assert!(SIGNALS.0 < peers::FIRST_PEER);
/// How long accepting pauses when out of descriptors (as imap-idle does).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub struct Tracker {
    cfg: Config,
    trust: Trust,
    poll: Poll,
    listener: SeqPacket,
    control: SeqPacket,
    signals: Signals,
    peers: Peers,
    routing: Routing,
    pending: Waiting,
    who: Who,
    spawner: Spawner,
    /// Out of descriptors: no accepting until then.
    accept_paused_until: Option<Instant>,
    /// Cookies changed: the file is written then (writes are spaced).
    next_save: Option<Instant>,
    stop: bool,
    /// The sockets we bound (not those passed to us).
    remove_at_exit: [Option<PathBuf>; 2],
    supervisor: Supervisor,
}

impl Tracker {
    pub fn new(cfg: Config) -> Result<Tracker, SetupError> {
        let mut activated = Activated::from_env().map_err(SetupError)?;
        let signals = setup(
            "setting up signals",
            Signals::new(&[
                Signal::SIGTERM,
                Signal::SIGINT,
                Signal::SIGUSR1,
                Signal::SIGCHLD,
            ]),
        )?;
        setup("raising the open-file limit", limits::raise_nofile())?;
        let listener =
            listen::listener(&mut activated, ("tracker", 0), &cfg.socket, cfg.socket_mode)?;
        let control = (cfg.control_socket.as_path(), 0o600);
        let control =
            listen::listener(&mut activated, ("tracker-control", 1), control.0, control.1)?;
        for name in activated.unused() {
            warn!("the service manager passed a socket named {name:?}, which is not ours: closed");
        }
        // A passed control socket has the socket unit's group and mode.
        if let (Some(group), Some(_)) = (&cfg.admin_group, &control.bound) {
            // The admin group's members must be able to connect at all.
            let gid = trust::admin_gid(group).map_err(SetupError)?;
            let path = &cfg.control_socket;
            setup(
                format_args!("giving {} to group {group}", path.display()),
                nix::unistd::chown(path, None, Some(gid)).map_err(io::Error::from),
            )?;
            setup(
                format_args!("making {} mode 0660", path.display()),
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)),
            )?;
        }
        let trust = Trust::new(&cfg);
        let overlap = trust.overlap();
        if !overlap.is_empty() {
            warn!(
                "uids {overlap:?} are trusted as login and as mail processes: such a mail process \
                 can hand over clients as any user"
            );
        }
        let mut routing = Routing::new(cfg.policy);
        let rejoin = Duration::from_secs(cfg.rejoin_secs);
        keep::load(&cfg.cookie_file, &mut routing, Instant::now() + rejoin);
        let poll = setup("creating the poll", Poll::new())?;
        for (fd, token) in [
            (listener.sock.as_raw_fd(), LISTENER),
            (control.sock.as_raw_fd(), CONTROL),
            (signals.as_fd().as_raw_fd(), SIGNALS),
        ] {
            setup(
                "registering with the poll",
                poll.registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE),
            )?;
        }
        info!(
            "imap-tracker {} listening on {} (control {}), policy {:?}{}",
            env!("CARGO_PKG_VERSION"),
            listener.path.display(),
            control.path.display(),
            cfg.policy,
            cfg.spawn
                .as_ref()
                .map(|c| format!(
                    ", spawning up to {} mail processes with {c:?}",
                    cfg.max_processes
                ))
                .unwrap_or_default()
        );
        info!(
            "{}; at most {} peers, {} waiting clients, {} bytes unread per peer",
            trust.describe(),
            cfg.max_peers,
            cfg.max_waiting,
            cfg.max_outbox
        );
        Ok(Tracker {
            trust,
            peers: Peers::new(cfg.max_outbox),
            spawner: Spawner::new(cfg.spawn.clone(), cfg.max_processes, listener.path.clone()),
            routing,
            next_save: None,
            cfg,
            poll,
            remove_at_exit: [listener.bound, control.bound],
            listener: listener.sock,
            control: control.sock,
            signals,
            supervisor: Supervisor::from_env(Instant::now()),
            pending: Waiting::default(),
            who: Who::default(),
            accept_paused_until: None,
            stop: false,
        })
    }

    pub fn run(mut self) -> Result<(), SetupError> {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + Duration::from_secs(60);
        self.supervisor.ready(status_line(&self.routing));
        while !self.stop {
            let now = Instant::now();
            let next = [
                self.pending.next_deadline(),
                self.who.next_deadline(),
                self.accept_paused_until,
                self.supervisor.next_deadline(),
                self.next_save,
                self.routing.rejoin.claim_until,
                self.routing.rejoin.check_daemons_at,
            ]
            .into_iter()
            .flatten()
            .chain(std::iter::once(next_sweep))
            .min()
            .unwrap_or(next_sweep);
            let timeout = next.saturating_duration_since(now) + Duration::from_millis(1);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(SetupError(format!("polling: {e}")));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(false),
                    CONTROL => self.accept(true),
                    SIGNALS => self.signals(),
                    token => {
                        let Some(key) = peers::key_of(token) else {
                            continue;
                        };
                        let mut handler = self.handler();
                        if ev.is_writable() {
                            handler.writable(key);
                        }
                        handler.peer_event(key);
                    }
                }
            }
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                // Edge-triggered: what queued up meanwhile raises no event.
                self.accept_paused_until = None;
                self.accept(false);
                self.accept(true);
            }
            self.handler().expire(now);
            keep::unclaimed(&mut self.routing, now);
            if self
                .routing
                .rejoin
                .check_daemons_at
                .is_some_and(|t| t <= now)
            {
                self.routing.rejoin.check_daemons_at = None;
                self.handler().drop_dead_daemons();
            }
            if now >= next_sweep {
                self.routing.expire(now);
                self.handler().drop_dead_daemons();
                next_sweep = now + Duration::from_secs(60);
            }
            let routing = &self.routing;
            self.supervisor
                .tick(now, self.stop, || status_line(routing));
            keep::save_if_due(
                &self.cfg.cookie_file,
                &mut self.routing,
                &mut self.next_save,
                now,
            );
        }
        keep::save_now(&self.cfg.cookie_file, &self.routing);
        for path in self.remove_at_exit.iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
        info!("imap-tracker stopped: {}", self.summary());
        Ok(())
    }

    /// The components, lent for handling one event.
    fn handler(&mut self) -> Handler<'_> {
        Handler::new(
            &self.cfg,
            &self.trust,
            self.poll.registry(),
            &mut self.peers,
            &mut self.routing,
            &mut self.pending,
            &mut self.who,
            &mut self.spawner,
        )
    }

    fn summary(&self) -> String {
        let parked = self.routing.parked_count();
        let r = &self.routing.rejoin;
        format!(
            "{} users, {} connections ({} in mail processes, {parked} parked), {} mail processes, \
             {} waiting; since start: {} known again from reports, {} stale dropped, {} unclaimed \
             cookies dropped",
            self.routing.users.len(),
            self.routing.conns.len(),
            self.routing.conns.len() - parked,
            self.routing.procs.len(),
            self.pending.len(),
            r.rejoined,
            r.stale,
            r.unclaimed
        )
    }

    fn signals(&mut self) {
        loop {
            match self.signals.pending() {
                Ok(Some(Signal::SIGTERM | Signal::SIGINT)) => {
                    info!("stopping on signal");
                    self.stop = true;
                }
                Ok(Some(Signal::SIGUSR1)) => info!("{}", self.summary()),
                Ok(Some(Signal::SIGCHLD)) => {
                    self.spawner.reap();
                    // A mail process that died before registering leaves
                    // room for another.
                    self.handler().place_pending();
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    warn!("reading signals: {e}");
                    return;
                }
            }
        }
    }

    fn accept(&mut self, control: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let listener = if control {
                &self.control
            } else {
                &self.listener
            };
            let sock = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors (or memory): the connections wait
                    // in the backlog while we pause, rather than spin.
                    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                    let why = match errno {
                        Errno::EMFILE | Errno::ENFILE => "out of descriptors",
                        _ => "cannot accept",
                    };
                    warn!(
                        "accepting a connection: {e} ({why}); pausing accepts for {} ms",
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            };
            let cred = match sock.peer() {
                Ok(p) => p,
                Err(e) => {
                    warn!("reading peer credentials: {e}");
                    continue;
                }
            };
            self.handler().add_peer(sock, cred, control);
        }
    }
}

/// The service manager's one-line status (systemd's `STATUS=`).
fn status_line(routing: &Routing) -> String {
    format!(
        "{} users, {} connections ({} parked), {} mail processes",
        routing.users.len(),
        routing.conns.len(),
        routing.parked_count(),
        routing.procs.len()
    )
}
