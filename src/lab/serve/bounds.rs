//! What one client may make the reference server do, in one place so that
//! the code, `--help` and the man page tell the same story. These
//! processes are shared by every client of the tests, demos and benchmarks
//! they serve: no client may make them run out of memory or hold a slot
//! for ever.
//!
//! - Queued output: answers wait in user space only while the client's
//!   socket is full. Once [`MAX_QUEUED_OUTPUT`] bytes wait, the client's
//!   input is neither read nor handled until they drop below it: what it
//!   keeps sending stays in the kernel, and TCP slows it down. A merely
//!   slow reader is flow-controlled, not disconnected. The answer of the
//!   command in progress is always queued whole (so the queue may pass the
//!   cap by one answer, which the mailbox's size bounds).
//! - The mail process disconnects a client whose queue stays at or over
//!   the cap with not one byte of it taken for `--stall-timeout` seconds.
//!   The login process needs no such rule: its pre-auth timeout already
//!   bounds how long any client stays there.
//! - Pre-auth: the login process closes a client that has not logged in
//!   `--auth-timeout` seconds after it connected (`* BYE`), whatever it
//!   sends meanwhile.
//! - X-STATE: a state whose `\Recent` UIDs go past the mailbox's UIDNEXT is
//!   refused (no honest state can name a UID the mailbox never gave out),
//!   and the `\Recent` set is built from the mailbox's own records, never
//!   by expanding the client's ranges.

use std::time::Duration;

/// Bytes of answers a client may leave unread before its input waits.
pub const MAX_QUEUED_OUTPUT: usize = 256 * 1024;

/// Default of `--auth-timeout`.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of `--stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
