//! The signals adapter: what each signal means to imap-idle.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use log::error;
use nix::sys::signal::Signal;

use crate::sys::signals::Signals;

pub enum Command {
    /// SIGUSR1: log a one-line summary.
    Summary,
    /// SIGTERM, or SIGINT when run by hand: hand everyone back and exit.
    Stop(Signal),
    /// SIGINT from Dovecot's master: "you look idle, exit".
    IdleExit,
    /// SIGQUIT from Dovecot's master as it stops: close the listener
    /// now, so that a new master can bind it; keep the clients.
    CloseListener,
    /// SIGUSR2: start a successor to take everything over.
    Succeed,
}

pub struct SignalAdapter {
    signals: Signals,
    /// Started by Dovecot's master, whose SIGINT means something else.
    under_master: bool,
}

impl SignalAdapter {
    /// Call before starting any thread, so every thread blocks them too.
    pub fn new(under_master: bool) -> io::Result<SignalAdapter> {
        let signals = Signals::new(&[
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
            Signal::SIGQUIT,
            Signal::SIGUSR2,
        ])?;
        Ok(SignalAdapter {
            signals,
            under_master,
        })
    }

    pub fn set_under_master(&mut self) {
        self.under_master = true;
    }

    /// Every signal that arrived, in order.
    pub fn commands(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        loop {
            match self.signals.pending() {
                Ok(Some(Signal::SIGUSR1)) => out.push(Command::Summary),
                Ok(Some(Signal::SIGUSR2)) => out.push(Command::Succeed),
                Ok(Some(Signal::SIGINT)) if self.under_master => out.push(Command::IdleExit),
                Ok(Some(Signal::SIGQUIT)) if self.under_master => out.push(Command::CloseListener),
                Ok(Some(sig)) => out.push(Command::Stop(sig)),
                Ok(None) => return out,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("reading signals: {e}");
                    return out;
                }
            }
        }
    }
}

impl AsFd for SignalAdapter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.signals.as_fd()
    }
}
