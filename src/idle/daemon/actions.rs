//! What the loop carries out for the core (writes, closes, BYEs, the
//! return paths' bookkeeping, anvil), and what each signal means to it:
//! the daemon's two sources of commands that are not socket events.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use log::info;
use nix::sys::socket::{self, Shutdown};

use super::super::clients;
use super::super::core::Action;
use super::super::dovecot_mode::Dovecot;
use super::super::inotify::Watch;
use super::super::signals::Command;
use super::Daemon;
use crate::sys;

impl Daemon {
    pub(super) fn signals(&mut self, now: Instant) {
        for command in self.signals.commands() {
            match command {
                Command::Summary => {
                    let anvil = self.dovecot.as_ref().map(Dovecot::summary);
                    info!("{}{}", self.core.summary(), anvil.unwrap_or_default());
                }
                Command::Succeed => self.succession.start(),
                Command::Stop(sig) => self.core.shutdown(sig.as_ref(), now),
                Command::CloseListener => {
                    if let Some(d) = &mut self.dovecot {
                        d.master_closed_pipe(&mut self.core, self.poll.registry(), now);
                    }
                }
                Command::IdleExit => {
                    if let Some(d) = &self.dovecot {
                        d.idle_exit(&mut self.core, now);
                    }
                }
            }
        }
    }

    /// Everything the core asked for, in order; a write that fails goes
    /// back to the core, which may ask for more.
    pub(super) fn carry_out(&mut self) {
        while let Some(action) = self.core.next_action() {
            self.carry_out_one(action);
        }
    }

    fn carry_out_one(&mut self, action: Action<OwnedFd, Watch>) {
        let reg = self.poll.registry();
        match action {
            Action::Unpoll(fd) => clients::unpoll(reg, fd),
            Action::Write { id, bytes, what } => {
                // A connection that left since has nothing to write to.
                let Some(fd) = self.core.fd(id) else {
                    return;
                };
                if let Err(e) = sys::write_now(fd.as_fd(), &bytes) {
                    let full = e.kind() == io::ErrorKind::WouldBlock;
                    self.core.write_failed(id, full, what, &e.to_string());
                }
            }
            Action::Close(fd) => drop(fd),
            Action::Bye { fd, bye } => {
                let _ = sys::write_now(fd.as_fd(), &bye);
                let _ = socket::shutdown(fd.as_raw_fd(), Shutdown::Both);
            }
            Action::Unwatch(w) => self.inotify.remove(w, reg),
            Action::Gone(g) => {
                if let Some(t) = &mut self.tracker {
                    t.tell_gone(g);
                }
            }
            Action::Abandon(id) => {
                if let Some(d) = &mut self.dovecot {
                    d.masters.abandon(id, reg);
                }
            }
            Action::Capacity => self.report_capacity(),
            Action::Joined(p) => self.dovecot.iter_mut().for_each(|d| d.presence(&p, true)),
            Action::Left(p) => self.dovecot.iter_mut().for_each(|d| d.presence(&p, false)),
        }
    }
}
