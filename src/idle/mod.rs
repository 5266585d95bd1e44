//! The imap-idle daemon: parks idle IMAP connections in one event loop.

pub mod config;
mod control;
mod daemon;
mod dovecot_in;
mod dovecot_out;
mod idle_input;
mod main;
mod parked;
mod service;
mod timers;
mod tracker;
mod users;
mod watches;

pub use daemon::{Daemon, SetupError};
pub use main::{init_logging, main};
