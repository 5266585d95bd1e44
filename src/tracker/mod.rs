//! imap-tracker: routes clients from login processes to mail processes,
//! keeps each user's cookie, and takes clients back from imap-idle.

pub mod config;
mod cookie;
mod cookie_file;
mod daemon;
mod from_idle;
mod from_mail;
mod handler;
mod keep;
mod listen;
mod main;
mod moves;
mod parking;
mod peers;
mod pending;
mod policy;
mod rejoin;
mod rejoin_state;
mod report;
mod routing;
mod spawn;
mod trust;
pub mod who;

pub use daemon::Tracker;
pub use main::main;
pub use policy::Policy;
