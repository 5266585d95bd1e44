//! What the rejoin rules (`rejoin`) keep between messages: their
//! counters, when kept cookies expire, and each imap-idle report under
//! way. Plain data, apart from the rules so that the routing tables can
//! hold it without importing them.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

#[derive(Default)]
pub struct Rejoin {
    /// Entries dropped because imap-idle no longer held them.
    pub stale: u64,
    /// Kept cookies dropped because nobody claimed them after a restart.
    pub unclaimed: u64,
    /// Connections known again from re-reports since start.
    pub rejoined: u64,
    /// Users (and so cookies) changed since the file was last written.
    pub changed: bool,
    /// After a restart: when unclaimed kept cookies go.
    pub claim_until: Option<Instant>,
    /// An imap-idle link closed: whether its daemon died is looked at then
    /// (a process killed closes its sockets a moment before it is dead).
    pub check_daemons_at: Option<Instant>,
    /// imap-idle links whose report is under way: what each reported.
    pub(super) reports: HashMap<usize, Report>,
}

pub(super) struct Report {
    pub pid: u32,
    /// When we heard its Hello: entries parked since may be missing from
    /// its report (it was made before they came) and are not stale.
    pub since: Instant,
    pub seen: HashSet<u64>,
}
