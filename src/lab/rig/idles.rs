//! The native rig's imap-idle daemons: one or several, each with its own
//! runtime directory (so its own park socket) and its own link to the one
//! tracker. One process's open-file limit caps a daemon at about that
//! many parked clients; several lift the cap, as a deployment would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::wait_until;
use crate::link;
use crate::proto::native::Stats;

/// The runtime directory of daemon `i`: the first keeps the stack's own
/// (`run`, where the tracker's sockets are too), the others one beside it.
pub fn runtime_dir(dir: &Path, run: &Path, i: usize) -> PathBuf {
    if i == 0 {
        run.to_path_buf()
    } else {
        dir.join(format!("run-idle{i}"))
    }
}

/// The log file of daemon `i`.
pub fn log_name(i: usize) -> String {
    if i == 0 {
        "imap-idle.log".into()
    } else {
        format!("imap-idle-{i}.log")
    }
}

/// What daemon `i` is started with.
pub struct IdleSpec<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub run: &'a Path,
    pub log_level: &'a str,
    /// `--max-parked`; None leaves the daemon's default (its fd limit).
    pub max_parked: Option<usize>,
    pub args: &'a [String],
}

/// Start daemon `i` and wait until it answers on its park socket.
pub fn start(s: &IdleSpec<'_>, i: usize) -> Result<Child, String> {
    let run = runtime_dir(s.dir, s.run, i);
    let mut cmd = Command::new(s.bin.join("imap-idle"));
    cmd.arg("--runtime-dir")
        .arg(&run)
        .arg("--tracker-socket")
        .arg(s.run.join("tracker"))
        .args(["--log-level", s.log_level]);
    if let Some(n) = s.max_parked {
        cmd.args(["--max-parked", &n.to_string()]);
    }
    cmd.args(s.args);
    let mut child = super::native::spawn(&mut cmd, &s.dir.join(log_name(i)))?;
    if let Err(e) = wait_until(
        || link::stats(&run.join("park")).is_ok(),
        "imap-idle to listen",
        Duration::from_secs(10),
    ) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("imap-idle #{i}: {e}"));
    }
    Ok(child)
}

/// `--idle-socket` once per park socket, for the tracker and mail processes.
pub fn socket_args(sockets: &[PathBuf]) -> Vec<String> {
    sockets
        .iter()
        .flat_map(|p| ["--idle-socket".to_owned(), p.display().to_string()])
        .collect()
}

/// The daemons' counters added up; the latency samples put together.
pub fn sum(all: &[Stats]) -> Stats {
    let mut t = Stats::default();
    for s in all {
        t.add(s);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_counter() {
        let a = Stats {
            parked: 2,
            refused: 1,
            wake_us: vec![5],
            ..Stats::default()
        };
        let b = Stats {
            parked: 3,
            wake_changed: 4,
            wake_us: vec![7, 8],
            ..Stats::default()
        };
        let t = sum(&[a, b]);
        assert_eq!((t.parked, t.refused, t.wake_changed), (5, 1, 4));
        assert_eq!(t.wake_us, [5, 7, 8]);
        assert_eq!(
            socket_args(&[PathBuf::from("/a"), PathBuf::from("/b")]),
            ["--idle-socket", "/a", "--idle-socket", "/b"]
        );
        assert_eq!(
            runtime_dir(Path::new("/d"), Path::new("/d/run"), 0),
            Path::new("/d/run")
        );
        assert_eq!(
            runtime_dir(Path::new("/d"), Path::new("/d/run"), 2),
            Path::new("/d/run-idle2")
        );
    }
}
