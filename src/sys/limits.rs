//! File-descriptor limits: every parked connection costs one descriptor,
//! so the soft limit is raised to the hard one at start.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}
