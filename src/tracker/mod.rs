//! imap-tracker: routes clients from login processes to mail processes,
//! keeps each user's cookie, and takes clients back from imap-idle.

pub mod config;
mod cookie;
mod daemon;
mod main;
mod routing;
mod spawn;
pub mod who;

pub use daemon::Tracker;
pub use main::main;
pub use routing::Policy;
