//! The imap-idle daemon: parks idle IMAP connections in one event loop.
//!
//! [`core`] holds every connection and decides every change, with no I/O.
//! Around it, one adapter per transport reads its own sockets, calls the
//! core and carries out what it asks: the park socket, the tracker link,
//! Dovecot's hand-off listener and imap-master return, the clients'
//! sockets, inotify and signals. [`daemon`] is the loop that dispatches
//! each event to the adapter owning its token.

mod accept;
mod admin_socket;
mod admission;
mod anvil;
mod budget;
mod clients;
mod closer;
pub mod config;
mod control;
pub mod core;
mod daemon;
mod dovecot_mode;
mod from_predecessor;
mod hand_off;
mod held;
mod inotify;
mod main;
mod master_return;
mod notify_fds;
mod park_socket;
mod service;
mod signals;
mod to_successor;
mod tokens;
mod tracker_link;
mod watch;

pub use daemon::{Daemon, SetupError};
pub use main::{init_logging, main};
