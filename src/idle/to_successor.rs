//! The running daemon's side of a hand-over. SIGUSR2 starts a successor
//! (our own program again, same arguments plus `--take-over`); a successor
//! (that one, or one an operator started) says Hello on the park socket,
//! and gets our listening sockets, then every parked connection in
//! batches of at most 253 descriptors. A connection leaves us only once
//! the successor confirmed it; whatever it did not confirm (it died, was
//! full, ran out of descriptors) stays parked here as if nothing happened.
//! Woken connections finish their return here; once everything was handed
//! we accept nothing more and exit when we hold nothing.
//!
//! The exchange is done in one go, with the loop paused: nothing can wake
//! or write to a connection between its description and its confirmation.

use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::clients::IdleCore;
use super::inotify::Inotify;
use crate::proto::native::{self, Handed, ListenerKind, Message, Role, MAX_PACKET};
use crate::sys::fdpass::MAX_FDS;
use crate::sys::{notify, SeqPacket};

/// How long we wait for the successor's answer to a batch.
const PATIENCE: Duration = Duration::from_secs(10);
/// Bytes of connection records per batch: well under a packet.
const BATCH_BYTES: usize = MAX_PACKET - 4096;

#[derive(Default)]
pub struct Succession {
    child: Option<Child>,
    handed_over: bool,
}

impl Succession {
    /// Everything went to a successor: accept nothing more, leave the park
    /// socket's path to it, exit once empty.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// SIGUSR2: run our own program again, as it was started, to take over.
    pub fn start(&mut self) {
        self.reap();
        if self.handed_over || self.child.is_some() {
            info!("SIGUSR2: a successor is already running or took over; ignored");
            return;
        }
        let mut args = std::env::args();
        let Some(program) = args.next() else {
            warn!("SIGUSR2: our own path is unknown; no successor started");
            return;
        };
        let args: Vec<String> = args.filter(|a| a != "--take-over").collect();
        let _ = notify::notify("RELOADING=1");
        match Command::new(&program)
            .args(&args)
            .arg("--take-over")
            .spawn()
        {
            Ok(child) => {
                info!("SIGUSR2: started successor {program} (pid {})", child.id());
                self.child = Some(child);
            }
            Err(e) => {
                warn!("SIGUSR2: cannot start {program}: {e}");
                let _ = notify::notify("READY=1");
            }
        }
    }

    /// Collect a successor that exited, so it leaves no zombie.
    fn reap(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                info!("successor pid {} exited: {status}", c.id());
                self.child = None;
            }
        }
    }

    /// A successor said Hello (its uid already checked): hand it our
    /// listeners and every parked connection. Returns whether it took all.
    pub fn serve(
        &mut self,
        sock: SeqPacket,
        pid: i32,
        listeners: &[(ListenerKind, BorrowedFd<'_>)],
        core: &mut IdleCore,
        inotify: &Inotify,
        fired_at: Instant,
    ) -> bool {
        let _ = notify::notify("RELOADING=1");
        let started = Instant::now();
        let mut hand = Hand {
            sock,
            core,
            inotify,
            fired_at,
            batch: 0,
            taken: 0,
            kept: 0,
            scratch: vec![0; MAX_PACKET + 1].into_boxed_slice(),
        };
        let result = hand.all(listeners);
        let (taken, kept) = (hand.taken, hand.kept);
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) if kept == 0 => {
                info!("handed {taken} connections to successor pid {pid} in {secs:.3} s");
                self.handed_over = true;
            }
            Ok(()) => warn!(
                "successor pid {pid} took {taken} connections, left us {kept}; we keep serving them"
            ),
            Err(e) => {
                warn!("hand-over to pid {pid} failed after {taken} connections ({e}); we keep the {} left", hand.core.len());
                let _ = notify::notify("READY=1");
            }
        }
        self.reap();
        self.handed_over
    }
}

/// One hand-over under way.
struct Hand<'a> {
    sock: SeqPacket,
    core: &'a mut IdleCore,
    /// Dovecot's notify fds we keep (shared per mailbox): each leaving
    /// client takes a copy, which the successor shares again.
    inotify: &'a Inotify,
    /// Keepalives due up to here went out; later ones are due from the
    /// successor (the loop runs no timer while we hand over, so one
    /// falling due meanwhile must not be skipped as past).
    fired_at: Instant,
    batch: u64,
    taken: usize,
    kept: usize,
    scratch: Box<[u8]>,
}

impl Hand<'_> {
    fn notify_of(&self, id: super::core::ConnId) -> Option<BorrowedFd<'_>> {
        self.inotify.notify_fd_of(&self.core.watch_keys(id))
    }

    fn all(&mut self, listeners: &[(ListenerKind, BorrowedFd<'_>)]) -> Result<(), String> {
        let e = |e: std::io::Error| e.to_string();
        self.sock.set_nonblocking(false).map_err(e)?;
        self.sock.set_recv_timeout(Some(PATIENCE)).map_err(e)?;
        let hello = Message::Hello {
            role: Role::Idle,
            pid: std::process::id(),
        };
        native::send_patiently(&self.sock, &hello, None).map_err(e)?;
        let kinds = listeners.iter().map(|(k, _)| *k).collect();
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| *fd).collect();
        // Taken as late as can be: the successor's clock starts this far
        // back from when it reads it.
        let age_ms = self.core.millis(Instant::now());
        let msg = Message::Listeners { kinds, age_ms };
        self.sock
            .send_patiently(&msg.encode(), &fds, native::PATIENCE)
            .map_err(e)?;
        let (mut conns, mut n_fds, mut bytes) = (Vec::new(), 0, 0);
        for id in self.core.parked_ids() {
            let Some(mut h) = self.core.describe_for_successor(id, self.fired_at) else {
                continue;
            };
            h.notify = self.notify_of(id).is_some();
            let size = postcard::experimental::serialized_size(&h).unwrap_or(BATCH_BYTES);
            let need = 1 + h.notify as usize;
            if !conns.is_empty() && (n_fds + need > MAX_FDS || bytes + size > BATCH_BYTES) {
                self.exchange(std::mem::take(&mut conns))?;
                (n_fds, bytes) = (0, 0);
            }
            (n_fds, bytes) = (n_fds + need, bytes + size);
            conns.push(h);
        }
        if !conns.is_empty() {
            self.exchange(conns)?;
        }
        native::send_patiently(&self.sock, &Message::HandedAll, None).map_err(e)?;
        Ok(())
    }

    /// Send one batch and let go of what the successor confirms.
    fn exchange(&mut self, conns: Vec<Handed>) -> Result<(), String> {
        self.batch += 1;
        let batch = self.batch;
        let n = conns.len();
        let core: &IdleCore = self.core;
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(n * 2);
        for c in &conns {
            let Some(fd) = core.fd_of(c.id) else {
                return Err("a connection changed under the hand-over".into());
            };
            fds.push(fd.as_fd());
            if c.notify {
                let Some(n) = self.notify_of(c.id) else {
                    return Err("a notify fd went away under the hand-over".into());
                };
                fds.push(n);
            }
        }
        let msg = Message::Handing { batch, conns };
        self.sock
            .send_patiently(&msg.encode(), &fds, native::PATIENCE)
            .map_err(|e| format!("sending batch {batch}: {e}"))?;
        let reply = native::recv(&self.sock, &mut self.scratch)
            .map_err(|e| format!("waiting for batch {batch}'s answer: {e}"))?;
        let ids = match reply.msg {
            Message::TookOver { batch: b, ids } if b == batch => ids,
            Message::Error { reason } => return Err(format!("the successor says: {reason}")),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let mut taken = 0;
        for id in ids {
            if let Some(l) = self.core.leave_for_successor(id, Instant::now()) {
                self.core.left(l);
                taken += 1;
            }
        }
        self.taken += taken;
        self.kept += n - taken;
        Ok(())
    }
}
