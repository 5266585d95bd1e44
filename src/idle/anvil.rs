//! The anvil adapter (Dovecot mode, started by Dovecot's master): every
//! client we hold is registered with Dovecot's anvil, as Dovecot's own
//! imap-hibernate does, so that `mail_max_userip_connections` still counts
//! it and `doveadm who` (and 2.4's `doveadm kick`) still finds it.
//!
//! The master gives every service the write end of anvil's pipe as fd 3,
//! in blocking mode and shared by all of them. We reopen that pipe through
//! `/proc/self/fd/3` (before giving up root: the pipe belongs to the
//! master) to get a description of our own that we may make
//! non-blocking, so that a slow anvil never stalls the event loop. Lines
//! wait in a bounded queue; what does not fit is dropped and counted.
//! Each write is at most `PIPE_BUF` bytes of whole lines: the kernel
//! keeps such a write in one piece among the other services' writes.
//!
//! Every connection that joins the core or leaves it, whichever way (a
//! hand-off, a predecessor's hand-over, a return, a hang-up, a give-up, a
//! kick, a hand-over to a successor), reaches [`Anvil::presence`] through
//! the core's `Joined`/`Left` actions: no path needs its own call.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use log::{debug, warn};

use super::core::{split_id, ConnId, Presence};
use crate::proto::anvil::{self, Format, Session};
use crate::sys::fdpass;

/// `MASTER_ANVIL_FD` (master-interface.h).
const ANVIL_FD: i32 = 3;
/// Writes of at most this many bytes to a pipe are never interleaved.
const PIPE_BUF: usize = 4096;
/// Lines waiting for anvil, at most (bytes): about 10,000 lines.
const MAX_QUEUED: usize = 1 << 20;

pub struct Anvil {
    pipe: File,
    format: Format,
    pid: u32,
    service: String,
    /// The high half of every 2.4 connection GUID of this process; the low
    /// half is the connection's id.
    prefix: [u8; 8],
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// Clients whose CONNECT was dropped: their DISCONNECT is dropped too.
    unregistered: HashSet<ConnId>,
    dropped: u64,
    written: u64,
}

/// Take fd 3 from Dovecot's master and reopen anvil's pipe on a
/// description of our own. Call while still root, only when started by
/// the master. `None` (logged) when there is no pipe to anvil.
pub fn take_pipe() -> Option<File> {
    let fd3 = File::from(fdpass::inherited(ANVIL_FD)?);
    let is_pipe = fd3.metadata().is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        // Dovecot gives /dev/null to services that must not use anvil.
        debug!("fd 3 from Dovecot's master is not anvil's pipe; not registering clients");
        return None;
    }
    let own = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{ANVIL_FD}"));
    match own {
        Ok(f) => Some(f),
        Err(e) => {
            warn!("reopening anvil's pipe: {e}; hibernated clients are not registered with anvil");
            None
        }
    }
}

impl Anvil {
    pub fn new(pipe: File, format: Format, prefix: [u8; 8]) -> Anvil {
        Anvil {
            pipe,
            format,
            pid: std::process::id(),
            service: std::env::var("SERVICE_NAME").unwrap_or_else(|_| "imap-hibernate".into()),
            prefix,
            queue: VecDeque::new(),
            queued: 0,
            unregistered: HashSet::new(),
            dropped: 0,
            written: 0,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The 2.4 connection GUID of `id`, unique in this process (ids do not
    /// repeat) and, by the random prefix, among every process's.
    pub fn guid(&self, id: ConnId) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[..8].copy_from_slice(&self.prefix);
        g[8..].copy_from_slice(&id.to_be_bytes());
        g
    }

    /// The connection a GUID of ours names; `None` for another process's.
    pub fn id_of(&self, guid: &[u8; 16]) -> Option<ConnId> {
        (guid[..8] == self.prefix).then(|| {
            let mut low = [0u8; 8];
            low.copy_from_slice(&guid[8..]);
            ConnId::from_be_bytes(low)
        })
    }

    /// A connection joined (`true`) or left the core.
    pub fn presence(&mut self, p: &Presence, joined: bool) {
        let session = Session {
            user: &p.user,
            service: &self.service,
            ip: anvil::unpack_ip(p.cookie),
            guid: self.guid(p.id),
        };
        let line = if joined {
            anvil::connect(self.format, self.pid, &session)
        } else if self.unregistered.remove(&p.id) {
            None
        } else {
            anvil::disconnect(self.format, self.pid, &session)
        };
        let Some(line) = line else {
            return;
        };
        if line.len() > PIPE_BUF || self.queued + line.len() > MAX_QUEUED {
            self.dropped += 1;
            if joined {
                self.unregistered.insert(p.id);
            }
            // Logged at 1, 2, 4, 8, ... drops: a stuck anvil does not
            // flood the log.
            if self.dropped.is_power_of_two() {
                warn!(
                    "user={} conn={}: anvil line dropped ({} so far): anvil is not reading \
                     or the line is too long",
                    p.user,
                    split_id(p.id).1,
                    self.dropped
                );
            }
            return;
        }
        self.queued += line.len();
        self.queue.push_back(line);
        self.flush();
    }

    /// Write what waits, in whole lines, until the pipe is full. Called
    /// when a line is queued and when the pipe becomes writable.
    pub fn flush(&mut self) {
        let mut chunk = Vec::with_capacity(PIPE_BUF);
        while !self.queue.is_empty() {
            chunk.clear();
            let mut lines = 0;
            while let Some(l) = self.queue.get(lines) {
                if chunk.len() + l.len() > PIPE_BUF {
                    break;
                }
                chunk.extend_from_slice(l);
                lines += 1;
            }
            match self.pipe.write(&chunk) {
                // Up to PIPE_BUF a pipe takes all or nothing.
                Ok(n) if n == chunk.len() => {}
                Ok(_) => warn!("anvil's pipe took part of a write; a line may be cut"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Anvil was restarted: its registrations went with it.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => warn!("writing to anvil: {e}"),
            }
            for _ in 0..lines {
                if let Some(l) = self.queue.pop_front() {
                    self.queued -= l.len();
                    self.written += 1;
                }
            }
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "anvil: written={} queued={} dropped={}",
            self.written,
            self.queue.len(),
            self.dropped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn anvil(format: Format) -> (Anvil, File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        crate::sys::set_nonblocking(write.as_fd(), true).unwrap();
        (
            Anvil::new(File::from(write), format, [7; 8]),
            File::from(read),
        )
    }

    fn presence(id: ConnId, ip: &str) -> Presence {
        Presence {
            id,
            user: "bob".into(),
            cookie: anvil::pack_ip(Some(ip.parse().unwrap())),
        }
    }

    fn drain(pipe: &mut File) -> String {
        crate::sys::set_nonblocking(pipe.as_fd(), true).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(all).unwrap()
    }

    #[test]
    fn connect_then_disconnect_in_the_masters_format() {
        let (mut a, mut pipe) = anvil(Format::V23);
        let p = presence(5, "10.0.0.1");
        a.presence(&p, true);
        a.presence(&p, false);
        let pid = std::process::id();
        assert_eq!(
            drain(&mut pipe),
            format!("CONNECT\t{pid}\timap/10.0.0.1/bob\nDISCONNECT\t{pid}\timap/10.0.0.1/bob\n")
        );
    }

    #[test]
    fn guids_name_our_connections_only() {
        let (a, _pipe) = anvil(Format::V24 { kick: b'A' });
        let id = (9u64 << 32) | 3;
        assert_eq!(a.id_of(&a.guid(id)), Some(id));
        let mut other = a.guid(id);
        other[0] ^= 1;
        assert_eq!(a.id_of(&other), None);
    }

    /// A full pipe neither blocks nor loses order; past the queue's bound
    /// lines are dropped and counted, and a dropped CONNECT takes its
    /// DISCONNECT with it.
    #[test]
    fn a_full_pipe_queues_then_drops_and_counts() {
        let (mut a, mut pipe) = anvil(Format::V23);
        let mut joined = 0u64;
        while a.dropped == 0 {
            a.presence(&presence(joined, "10.0.0.2"), true);
            joined += 1;
        }
        assert!(a.queue.len() > 1000, "{}", a.queue.len());
        let first_dropped = joined - 1;
        a.presence(&presence(first_dropped, "10.0.0.2"), false);
        assert_eq!(
            a.dropped, 1,
            "the DISCONNECT of a dropped CONNECT is not queued"
        );
        let mut text = String::new();
        loop {
            text.push_str(&drain(&mut pipe));
            if a.queue.is_empty() {
                break;
            }
            a.flush();
        }
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.starts_with("CONNECT\t")));
        assert_eq!(
            lines.len() as u64,
            first_dropped,
            "every queued line, whole"
        );
        assert_eq!(a.written, first_dropped);
    }
}
