//! What a parked connection watches, as the core's watch table keys it.

use nix::sys::inotify::WatchDescriptor;

/// A kernel watch of our own inotify instance, or a Dovecot notify fd we
/// keep (by its key in `notify_fds.rs`), which wakes every connection
/// sharing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Watch {
    Kernel(WatchDescriptor),
    Notify(u32),
}
