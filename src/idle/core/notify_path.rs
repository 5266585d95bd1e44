//! How a Dovecot notify fd was taken in, as the statistics count it.

/// How a Dovecot notify fd (an inotify instance watching the client's
/// mailbox) was taken in; every one is watched as one of the client's
/// watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyPath {
    /// Closed: a notify fd we keep for another client watches the same.
    Shared,
    /// Closed: its inodes were reopened by handle into our own inotify.
    Reopened,
    /// Kept open and polled (and shared by later clients of the mailbox).
    Kept,
}
