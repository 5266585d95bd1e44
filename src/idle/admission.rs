//! Who may hold a control connection, and for how long without a word:
//! the roles each uid may claim, the cap on connections per uid (root and
//! our own uid aside: they could stop us anyway), and the deadline to say
//! Hello, so that idle connections from one local user cannot take every
//! slot of the park socket.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use log::warn;

use super::config::Config;
use crate::access::Allowed;
use crate::proto::native::Role;
use crate::setup::SetupError;
use crate::sys::Peer;

/// Who may do what on the park socket, and how much of it.
pub struct Policy {
    /// May park clients (role MailProcess).
    pub mail: Allowed,
    /// May ask `who` (role Admin).
    pub admin: Allowed,
    /// Control connections one uid other than root and ours may hold.
    pub per_uid: usize,
    /// Time to say Hello.
    pub handshake: Duration,
    /// Control connections at most; accepting pauses at this count and
    /// resumes below 90% of it.
    pub max_controls: usize,
}

impl Policy {
    pub fn from_config(cfg: &Config, max_controls: usize) -> Result<Policy, SetupError> {
        let admin = match &cfg.admin_group {
            Some(g) => Allowed::owner_only()
                .with_group(g)
                .map_err(|e| SetupError(format!("--admin-group: {e}")))?,
            None => Allowed::owner_only(),
        };
        Ok(Policy {
            mail: Allowed::owner_only().with_uids(&cfg.mail_uids),
            admin,
            per_uid: cfg.max_controls_per_uid,
            handshake: Duration::from_secs(cfg.handshake_timeout_secs),
            max_controls,
        })
    }
}

impl Policy {
    /// Whether `peer` may take `role` here (in Dovecot mode nobody parks
    /// through this socket); the reason to tell it if not.
    pub fn claim(&self, peer: &Peer, role: Role, dovecot: bool) -> Result<(), String> {
        if role == Role::MailProcess && dovecot {
            return Err(
                "this imap-idle runs in Dovecot mode: it parks clients of Dovecot only".into(),
            );
        }
        if role == Role::Successor {
            // Only our own uid: a successor gets every client we hold.
            let own = nix::unistd::geteuid().as_raw();
            if peer.uid != own {
                warn!(
                    "SECURITY: pid={} uid={} claimed the Successor role; refused (only uid {own}, \
                     ours, may take over)",
                    peer.pid, peer.uid
                );
                return Err(format!(
                    "uid {} may not take over: only uid {own}, the daemon's own",
                    peer.uid
                ));
            }
            return Ok(());
        }
        let (allowed, flag) = match role {
            Role::MailProcess => (&self.mail, "--mail-uid"),
            Role::Admin => (&self.admin, "--admin-group"),
            _ => return Err(format!("role {role:?} does not park connections")),
        };
        if !allowed.admits(peer) {
            warn!(
                "SECURITY: pid={} uid={} claimed the {role:?} role; refused ({flag})",
                peer.pid, peer.uid
            );
            return Err(format!("uid {} may not take the {role:?} role", peer.uid));
        }
        Ok(())
    }
}

pub struct Admission {
    pub policy: Policy,
    /// Open control connections per uid, for uids the cap applies to.
    per_uid: HashMap<u32, usize>,
    /// Connections yet to say Hello, in the order their time runs out.
    hello_queue: VecDeque<(Instant, usize)>,
    /// Connections refused for the per-uid cap (logged now and then).
    over_cap: u64,
}

impl Admission {
    pub fn new(policy: Policy) -> Admission {
        Admission {
            policy,
            per_uid: HashMap::new(),
            hello_queue: VecDeque::new(),
            over_cap: 0,
        }
    }

    /// Whether `peer` may open one more control connection; if not, why.
    pub fn room_for(&mut self, peer: &Peer) -> Result<(), String> {
        let open = self.per_uid.get(&peer.uid).copied().unwrap_or(0);
        if !capped(peer) || open < self.policy.per_uid {
            return Ok(());
        }
        self.over_cap += 1;
        if self.over_cap % 100 == 1 {
            warn!(
                "pid={} uid={}: {open} control connections open, the most one uid may hold \
                 (--max-controls-per-uid); refused ({} so far)",
                peer.pid, peer.uid, self.over_cap
            );
        }
        Err(format!(
            "uid {} holds {open} control connections already",
            peer.uid
        ))
    }

    /// A connection of `peer` was taken as `key`; returns when it must
    /// have said Hello.
    pub fn opened(&mut self, peer: &Peer, key: usize, now: Instant) -> Instant {
        let by = now + self.policy.handshake;
        self.hello_queue.push_back((by, key));
        if capped(peer) {
            *self.per_uid.entry(peer.uid).or_default() += 1;
        }
        by
    }

    pub fn closed(&mut self, peer: &Peer) {
        if !capped(peer) {
            return;
        }
        if let Some(n) = self.per_uid.get_mut(&peer.uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&peer.uid);
            }
        }
    }

    /// The next deadline that still counts: `silent(at, key)` tells
    /// whether the connection with that deadline has yet to say Hello.
    pub fn next_deadline(&mut self, silent: impl Fn(Instant, usize) -> bool) -> Option<Instant> {
        while let Some(&(at, key)) = self.hello_queue.front() {
            if silent(at, key) {
                return Some(at);
            }
            self.hello_queue.pop_front();
        }
        None
    }

    /// The key of a connection whose Hello deadline has passed (the caller
    /// checks that it is still the same connection, silent).
    pub fn next_due(&mut self, now: Instant) -> Option<usize> {
        match self.hello_queue.front() {
            Some(&(at, key)) if at <= now => {
                self.hello_queue.pop_front();
                Some(key)
            }
            _ => None,
        }
    }
}

fn capped(peer: &Peer) -> bool {
    peer.uid != 0 && peer.uid != nix::unistd::Uid::current().as_raw()
}
