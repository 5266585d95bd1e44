//! One connection held by the core: its client descriptor, its phase, and
//! what it carries back (and what travels with it between daemons). Kept
//! small on purpose: this struct (plus the state blob and tag it carries)
//! is the daemon's per-client cost.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

use super::timers::Millis;
use crate::proto::multiplex;
use crate::proto::native::{Cookie, Handed, Park, Return, WakeReason};

/// The daemon's id for a connection: its serial (which tells a reused slab
/// key apart) in the high half, its slab key in the low half.
pub type ConnId = u64;

/// The longest IDLE tag a connection keeps: its length is one byte of the
/// connection record. Longer ones are refused, never cut.
pub const MAX_KEPT_TAG: usize = u8::MAX as usize;

pub fn conn_id(key: u32, serial: u32) -> ConnId {
    (serial as u64) << 32 | key as u64
}

pub fn split_id(id: ConnId) -> (u32, u32) {
    (id as u32, (id >> 32) as u32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Watching the client and the mailbox.
    Parked,
    /// Woken; the return was refused and a retry is scheduled.
    Waiting,
    /// Woken; waiting for its turn on the return path.
    Queued,
    /// Handed to the return path; waiting for its answer.
    InFlight,
}

pub struct Conn<F> {
    pub fd: F,
    pub serial: u32,
    pub user: u32,
    pub timer_gen: u32,
    pub keepalive_secs: u32,
    /// Seconds since the daemon started.
    pub parked_at: u32,
    pub phase: Phase,
    pub in_idle: bool,
    /// Dovecot 2.4: the client reads a multiplexed stream.
    pub multiplex: bool,
    /// Something was written to it since the hand-off (so it is on
    /// channel 0 already).
    switched: bool,
    /// Counts of what `data` holds (see [`Conn::pack`]).
    n_watch: u8,
    tag_len: u8,
    pub cookie: Cookie,
    /// Watch indices, tag and state blob in one allocation: one malloc
    /// header and one pointer instead of three.
    data: Box<[u8]>,
    pub extra: Option<Box<Extra>>,
}

/// What only some connections need, boxed so the rest do not pay for it.
pub enum Extra {
    /// Bytes of a `DONE` that has not fully arrived.
    Partial(Box<[u8]>),
    Waking(Waking),
}

pub struct Waking {
    pub reason: WakeReason,
    pub input: Vec<u8>,
    pub idle_running: bool,
    pub give_up_at: Millis,
    pub attempts: u32,
    /// The watch paths, kept from the shared table before leaving it.
    pub watch: Vec<PathBuf>,
    /// When the daemon noticed what woke it; taken when first sent back.
    pub woken_at: Option<Instant>,
    /// Wake order: returns lost with a link are sent again in this order.
    pub seq: u64,
}

/// What a new connection is made of, past its descriptors.
pub struct Fields<'a> {
    pub serial: u32,
    pub user: u32,
    pub keepalive_secs: u32,
    pub parked_at: u32,
    pub in_idle: bool,
    pub multiplex: bool,
    pub cookie: Cookie,
    /// Indices into the watch table, at most `MAX_WATCH`.
    pub watches: &'a [u32],
    /// At most `MAX_TAG` bytes (checked when the hand-off was decoded).
    pub tag: &'a str,
    pub state: &'a [u8],
}

impl<F> Conn<F> {
    pub fn new(fd: F, f: Fields<'_>) -> Conn<F> {
        Conn {
            fd,
            serial: f.serial,
            user: f.user,
            timer_gen: 0,
            keepalive_secs: f.keepalive_secs,
            parked_at: f.parked_at,
            phase: Phase::Parked,
            in_idle: f.in_idle,
            multiplex: f.multiplex,
            switched: false,
            n_watch: f.watches.len() as u8,
            tag_len: f.tag.len() as u8,
            cookie: f.cookie,
            data: pack(f.watches, f.tag.as_bytes(), f.state),
            extra: None,
        }
    }

    /// 0 plain, 1 multiplexed, 2 multiplexed and on channel 0 already.
    pub fn multiplex_state(&self) -> u8 {
        match (self.multiplex, self.switched) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }
    }

    pub fn set_switched(&mut self) {
        self.switched = true;
    }

    /// `bytes` as they go to this client: in Dovecot's multiplex framing
    /// when it reads a multiplexed stream.
    pub fn framed(&mut self, bytes: Cow<'static, [u8]>) -> Cow<'static, [u8]> {
        if !self.multiplex {
            return bytes;
        }
        let first = !std::mem::replace(&mut self.switched, true);
        let framed = match multiplex::frame(&bytes, first) {
            Cow::Borrowed(_) => None,
            Cow::Owned(v) => Some(v),
        };
        framed.map_or(bytes, Cow::Owned)
    }

    fn tag_start(&self) -> usize {
        self.n_watch as usize * 4
    }

    pub fn watches(&self) -> Vec<u32> {
        self.data[..self.tag_start()]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    pub fn tag(&self) -> &str {
        let start = self.tag_start();
        std::str::from_utf8(&self.data[start..start + self.tag_len as usize]).unwrap_or("")
    }

    pub fn state(&self) -> &[u8] {
        &self.data[self.tag_start() + self.tag_len as usize..]
    }

    fn repack(&mut self, watches: &[u32], tag: &[u8]) {
        self.data = pack(watches, tag, self.state());
        self.n_watch = watches.len() as u8;
        self.tag_len = tag.len() as u8;
    }

    /// The client restarted IDLE with a new tag.
    pub fn set_tag(&mut self, tag: &[u8]) {
        let watches = self.watches();
        self.repack(&watches, tag);
    }

    /// Forget the watch indices (the connection left the watches).
    pub fn take_watches(&mut self) -> Vec<u32> {
        let watches = self.watches();
        let tag = self.tag().as_bytes().to_vec();
        self.repack(&[], &tag);
        watches
    }

    pub fn id(&self, key: u32) -> ConnId {
        conn_id(key, self.serial)
    }

    pub fn waking(&self) -> Option<&Waking> {
        match self.extra.as_deref() {
            Some(Extra::Waking(w)) => Some(w),
            _ => None,
        }
    }

    pub fn waking_mut(&mut self) -> Option<&mut Waking> {
        match self.extra.as_deref_mut() {
            Some(Extra::Waking(w)) => Some(w),
            _ => None,
        }
    }

    pub fn partial_len(&self) -> usize {
        match self.extra.as_deref() {
            Some(Extra::Partial(p)) => p.len(),
            _ => 0,
        }
    }

    pub fn take_partial(&mut self) -> Vec<u8> {
        match self.extra.take().map(|b| *b) {
            Some(Extra::Partial(p)) => p.into_vec(),
            other => {
                self.extra = other.map(Box::new);
                Vec::new()
            }
        }
    }
}

fn pack(watches: &[u32], tag: &[u8], state: &[u8]) -> Box<[u8]> {
    let mut data = Vec::with_capacity(watches.len() * 4 + tag.len() + state.len());
    for w in watches {
        data.extend_from_slice(&w.to_ne_bytes());
    }
    data.extend_from_slice(tag);
    data.extend_from_slice(state);
    data.into_boxed_slice()
}

/// A woken connection as the return path sees it.
pub struct Returning<'a, F> {
    pub fd: &'a F,
    pub user: &'a str,
    pub cookie: Cookie,
    pub tag: &'a str,
    pub in_idle: bool,
    pub keepalive_secs: u32,
    pub state: &'a [u8],
    pub waking: &'a Waking,
    /// Seconds since the daemon started, when it was parked.
    pub parked_at: u32,
}

impl<F> Returning<'_, F> {
    /// The native return message for the tracker.
    pub fn message(&self, id: ConnId, now_secs: u32) -> Return {
        Return {
            id,
            park: Park {
                user: self.user.to_owned(),
                cookie: self.cookie,
                tag: self.tag.to_owned(),
                in_idle: self.in_idle,
                keepalive_secs: self.keepalive_secs,
                watch: self.waking.watch.clone(),
                state: self.state.to_vec(),
            },
            reason: self.waking.reason,
            input: self.waking.input.clone(),
            idle_running: self.waking.idle_running,
            parked_secs: now_secs.saturating_sub(self.parked_at),
        }
    }
}

/// What a connection brings from a predecessor past a plain park.
/// `Default` is a fresh park.
#[derive(Default, Clone, Copy)]
pub struct Carried<'a> {
    /// It comes from a predecessor daemon (a hand-over, not a park).
    pub predecessor: bool,
    /// When its next keepalive is due, on the predecessor's clock, which
    /// is ours (0: none).
    pub keepalive_at_ms: Millis,
    /// Bytes of a `DONE` typed so far.
    pub partial: &'a [u8],
    /// Seconds it has been parked already.
    pub parked_secs: u32,
    /// Multiplexed output already switched to channel 0 over there.
    pub switched: bool,
}

/// A connection taken out of the core for a successor: its socket
/// (closed only once the successor confirmed it) and what travels. Its
/// Dovecot notify fd, if any, is the inotify adapter's, shared.
pub struct Leaving<F> {
    pub fd: F,
    pub handed: Handed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(multiplex: bool) -> Conn<()> {
        let f = Fields {
            serial: 1,
            user: 0,
            keepalive_secs: 3,
            parked_at: 0,
            in_idle: true,
            multiplex,
            cookie: [0; 16],
            watches: &[],
            tag: "c",
            state: b"",
        };
        Conn::new((), f)
    }

    #[test]
    fn a_multiplexed_client_gets_channel_0_once_then_plain_bytes() {
        let mut c = conn(true);
        let ka: &'static [u8] = b"* OK Still here\r\n";
        let first = c.framed(Cow::Borrowed(ka));
        assert_eq!(&first[..], [&b"\x03\xFE\x00\x00"[..], ka].concat());
        assert_eq!(&c.framed(Cow::Borrowed(ka))[..], ka);
        let mut plain = conn(false);
        assert_eq!(&plain.framed(Cow::Borrowed(ka))[..], ka);
        assert_eq!(&plain.framed(Cow::Borrowed(ka))[..], ka);
    }
}
