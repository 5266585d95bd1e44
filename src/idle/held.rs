//! What an adapter that takes clients in (the park socket, Dovecot's
//! hand-off, a predecessor's hand-over) needs from the rest of the daemon
//! for one event.

use std::time::Instant;

use mio::Registry;

use super::clients::{Clients, IdleCore};
use super::inotify::Inotify;

pub struct Held<'a> {
    pub core: &'a mut IdleCore,
    pub clients: &'a mut Clients,
    pub inotify: &'a mut Inotify,
    pub reg: &'a Registry,
    pub now: Instant,
}
