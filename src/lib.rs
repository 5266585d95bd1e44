//! imap-idle: park idle IMAP connections for a few hundred bytes each and
//! hand them back when the client types or the mailbox changes.
//!
//! - [`proto`]: wire encodings (native protocol, session state).
//! - [`sys`]: the OS layer (descriptor passing, sockets, limits, signals).
//! - [`idle`]: the parking daemon.
//! - [`tracker`]: the router between login processes, mail processes and
//!   imap-idle.
//! - [`mail`]: the library for login and mail processes.
//! - [`link`]: a blocking native-protocol client connection.
//! - [`supervisor`]: readiness, status and watchdog notices to systemd.
//! - [`lab`]: tools to try it out (`imap-idle-lab`).

pub mod access;
pub mod args;
pub mod idle;
pub mod lab;
pub mod link;
pub mod mail;
pub mod proto;
pub mod setup;
pub mod supervisor;
pub mod sys;
pub mod tracker;
