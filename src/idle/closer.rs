//! The one helper thread: it only closes descriptors. Closing the last
//! reference to an inotify instance waits for the kernel to retire its
//! marks (an RCU grace period: milliseconds), and a Dovecot notify fd is
//! closed as its client wakes, so closing on the event loop would delay
//! every return behind it. The thread shares nothing with the loop but
//! the channel.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread;

/// Descriptors waiting to be closed, at most. Bounded because each one
/// is still open, counted against the open-file limit: the budget
/// reserves room for them (see budget.rs). When the thread falls this
/// far behind, the loop closes inline, which is slower but never runs out.
pub const QUEUE: usize = 256;

pub struct Closer {
    tx: SyncSender<OwnedFd>,
}

impl Closer {
    /// Start the thread. Call after the signals are blocked (it inherits
    /// the mask, so signals keep reaching the loop's signalfd only).
    /// `bound`: descriptors queued at most (see [`QUEUE`]).
    pub fn new(bound: usize) -> io::Result<Closer> {
        let (tx, rx) = mpsc::sync_channel::<OwnedFd>(bound);
        thread::Builder::new()
            .name("imap-idle-close".into())
            .spawn(move || {
                for fd in rx {
                    drop(fd);
                }
            })?;
        Ok(Closer { tx })
    }

    /// Close `fd` off the loop if the queue has room, else now.
    pub fn close(&self, fd: OwnedFd) {
        match self.tx.try_send(fd) {
            Ok(()) => {}
            Err(TrySendError::Full(fd)) | Err(TrySendError::Disconnected(fd)) => drop(fd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn descriptors_sent_are_closed_by_the_thread() {
        let c = Closer::new(QUEUE).unwrap();
        // More than the queue holds: the rest are closed inline. A pipe's
        // reader sees EOF only once every write end is closed.
        let mut readers = Vec::new();
        for _ in 0..QUEUE * 2 {
            let (r, w) = nix::unistd::pipe().unwrap();
            readers.push(std::fs::File::from(r));
            c.close(w);
        }
        for mut r in readers {
            let mut buf = [0u8; 1];
            assert_eq!(r.read(&mut buf).unwrap(), 0, "write end closed");
        }
    }
}
