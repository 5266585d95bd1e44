//! Poll tokens: which adapter owns an event. The low three bits name the
//! kind of source, the rest is the key inside it, so every range fits any
//! `usize` width (32-bit targets included): keys are slab indices bounded
//! by the open-file limit.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::setup::{setup, SetupError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The park socket's listener.
    ParkListener,
    Signals,
    Inotify,
    TrackerLink,
    /// Dovecot mode: the imap-hibernate listener and the master's death pipe.
    HandOffListener,
    MasterDead,
    /// Dovecot mode under its master: anvil's pipe (writable) and, with
    /// 2.4, our admin listener.
    AnvilPipe,
    AdminListener,
    /// A control connection on the park socket (mail process, admin).
    Control(usize),
    /// A Dovecot hand-off connection (imap -> us).
    HandOff(usize),
    /// A Dovecot return connection (us -> imap-master).
    Master(usize),
    /// A parked client's socket, by its key in the core.
    Client(u32),
    /// A Dovecot notify fd we keep, by its key in `notify_fds.rs`.
    Notify(u32),
    /// A connection on the admin socket (anvil -> us, 2.4).
    Admin(usize),
}

/// Register fixed sources for reading, each under its token.
pub fn register(reg: &Registry, sources: &[(i32, Source)]) -> Result<(), SetupError> {
    for &(fd, source) in sources {
        let r = reg.register(&mut SourceFd(&fd), token(source), Interest::READABLE);
        setup("registering with the poll", r)?;
    }
    Ok(())
}

const FIXED: usize = 0;
const CONTROL: usize = 1;
const HAND_OFF: usize = 2;
const MASTER: usize = 3;
const CLIENT: usize = 4;
const NOTIFY: usize = 5;
const ADMIN: usize = 6;
const KIND_BITS: u32 = 3;
const KIND_MASK: usize = (1 << KIND_BITS) - 1;

fn make(kind: usize, key: usize) -> Token {
    Token(key << KIND_BITS | kind)
}

pub fn token(source: Source) -> Token {
    match source {
        Source::ParkListener => make(FIXED, 0),
        Source::Signals => make(FIXED, 1),
        Source::Inotify => make(FIXED, 2),
        Source::TrackerLink => make(FIXED, 3),
        Source::HandOffListener => make(FIXED, 4),
        Source::MasterDead => make(FIXED, 5),
        Source::AnvilPipe => make(FIXED, 6),
        Source::AdminListener => make(FIXED, 7),
        Source::Control(k) => make(CONTROL, k),
        Source::HandOff(k) => make(HAND_OFF, k),
        Source::Master(k) => make(MASTER, k),
        Source::Client(k) => make(CLIENT, k as usize),
        Source::Notify(k) => make(NOTIFY, k as usize),
        Source::Admin(k) => make(ADMIN, k),
    }
}

/// The source behind a token; `None` for tokens we never hand out
/// (spurious events happen, and are ignored).
pub fn source(token: Token) -> Option<Source> {
    let key = token.0 >> KIND_BITS;
    Some(match token.0 & KIND_MASK {
        FIXED => match key {
            0 => Source::ParkListener,
            1 => Source::Signals,
            2 => Source::Inotify,
            3 => Source::TrackerLink,
            4 => Source::HandOffListener,
            5 => Source::MasterDead,
            6 => Source::AnvilPipe,
            7 => Source::AdminListener,
            _ => return None,
        },
        CONTROL => Source::Control(key),
        HAND_OFF => Source::HandOff(key),
        MASTER => Source::Master(key),
        CLIENT => Source::Client(u32::try_from(key).ok()?),
        NOTIFY => Source::Notify(u32::try_from(key).ok()?),
        ADMIN => Source::Admin(key),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_round_trips() {
        let all = [
            Source::ParkListener,
            Source::Signals,
            Source::Inotify,
            Source::TrackerLink,
            Source::HandOffListener,
            Source::MasterDead,
            Source::AnvilPipe,
            Source::AdminListener,
            Source::Admin(3),
            Source::Control(0),
            Source::Control(511),
            Source::HandOff(7),
            Source::Master(63),
            Source::Client(0),
            Source::Client(19_999),
            Source::Notify(19_999),
        ];
        for s in all {
            assert_eq!(source(token(s)), Some(s), "{s:?}");
        }
        assert_eq!(source(Token(8 << KIND_BITS)), None);
        assert_eq!(source(Token(7)), None);
    }
}
