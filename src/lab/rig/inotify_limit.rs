//! `fs.inotify.max_user_instances`, the per-uid count of inotify instances:
//! every imap process inside IDLE holds one, and so does every client a
//! hibernation process keeps Dovecot's notify fd for, all under the one
//! mail uid here. The bench raises it; a test sets it and puts it back.

const PATH: &str = "/proc/sys/fs/inotify/max_user_instances";

fn read() -> Result<u64, String> {
    std::fs::read_to_string(PATH)
        .map_err(|e| format!("{PATH}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{PATH}: {e}"))
}

fn write(n: u64) -> Result<(), String> {
    std::fs::write(PATH, n.to_string()).map_err(|e| format!("setting {PATH} to {n}: {e}"))
}

/// Raise the limit to at least `at_least` (needs root).
pub fn raise_inotify_instances(at_least: u64) -> Result<(), String> {
    if read().unwrap_or(0) < at_least {
        write(at_least)?;
    }
    Ok(())
}

/// The limit set to a value for as long as this lives, then put back
/// unless someone raised it meanwhile.
pub struct InstanceLimit(u64);

impl InstanceLimit {
    pub fn set(n: u64) -> Result<InstanceLimit, String> {
        let was = read()?;
        write(n)?;
        Ok(InstanceLimit(was))
    }
}

impl Drop for InstanceLimit {
    fn drop(&mut self) {
        // Someone else may have changed it since (the limit is the whole
        // machine's): theirs stays.
        if read().is_ok_and(|now| now < self.0) {
            let _ = write(self.0);
        }
    }
}
