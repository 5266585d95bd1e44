//! What a daemon tells the service manager that runs it (systemd's
//! `Type=notify`): `READY=1` once it serves, a `STATUS=` line kept fresh,
//! `STOPPING=1` when it begins to stop, and watchdog pings. The pings go
//! out from the event loop itself, so a loop that hangs stops them and
//! the manager restarts the daemon. Without `$NOTIFY_SOCKET` it does
//! nothing and sets no timer.

use std::time::{Duration, Instant};

use log::warn;

use crate::sys::notify::notify;

/// How often the status line is looked at (and sent if it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Supervisor {
    active: bool,
    /// Half the manager's watchdog timeout, when it keeps one for us.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    next_status: Instant,
    last_status: String,
    stopping_sent: bool,
    /// A failed notice is logged once, not once per tick.
    warned: bool,
}

impl Supervisor {
    pub fn from_env(now: Instant) -> Supervisor {
        let active = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let ping_every = if active { watchdog_from_env() } else { None };
        Supervisor {
            active,
            ping_every,
            next_ping: ping_every.map(|p| now + p),
            next_status: now + STATUS_EVERY,
            last_status: String::new(),
            stopping_sent: false,
            warned: false,
        }
    }

    /// One that tells nothing, whatever the environment says.
    pub fn none() -> Supervisor {
        Supervisor {
            active: false,
            ping_every: None,
            next_ping: None,
            next_status: Instant::now(),
            last_status: String::new(),
            stopping_sent: false,
            warned: false,
        }
    }

    /// How often the watchdog is pinged, if it is.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// The daemon serves now: `READY=1` with its first status line.
    pub fn ready(&mut self, status: String) {
        if !self.active {
            return;
        }
        let mut msg = format!("READY=1\nSTATUS={status}");
        if self.ping_every.is_some() {
            msg.push_str("\nWATCHDOG=1");
        }
        self.send(&msg);
        self.last_status = status;
    }

    /// When the loop must wake next for us.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.active {
            return None;
        }
        Some(
            self.next_ping
                .map_or(self.next_status, |p| p.min(self.next_status)),
        )
    }

    /// Called on every loop turn: pings and status when due, and
    /// `STOPPING=1` as soon as `stopping`.
    pub fn tick(&mut self, now: Instant, stopping: bool, status: impl FnOnce() -> String) {
        if !self.active {
            return;
        }
        if stopping && !self.stopping_sent {
            self.stopping_sent = true;
            self.send("STOPPING=1");
        }
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every) {
            if at <= now {
                self.send("WATCHDOG=1");
                self.next_ping = Some(now + every);
            }
        }
        if self.next_status <= now {
            self.next_status = now + STATUS_EVERY;
            let status = status();
            if status != self.last_status {
                self.send(&format!("STATUS={status}"));
                self.last_status = status;
            }
        }
    }

    fn send(&mut self, msg: &str) {
        if let Err(e) = notify(msg) {
            if !std::mem::replace(&mut self.warned, true) {
                warn!("telling the service manager {msg:?}: {e} (further failures not logged)");
            }
        }
    }
}

/// Half of `$WATCHDOG_USEC` when the watchdog is meant for this process
/// (`$WATCHDOG_PID` unset or ours). `WATCHDOG_PID` is then removed: a
/// successor this daemon starts inherits the timeout and pings for itself.
fn watchdog_from_env() -> Option<Duration> {
    let pid = std::env::var("WATCHDOG_PID").ok();
    if pid
        .as_ref()
        .is_some_and(|p| p.parse::<u32>().ok() != Some(std::process::id()))
    {
        return None;
    }
    std::env::remove_var("WATCHDOG_PID");
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
