//! Signals as a readable descriptor (signalfd), so the event loop handles
//! them between events like any other input and never in a handler.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Block `signals` for this thread and deliver them through a descriptor.
    /// Call before starting any thread so every thread inherits the mask.
    pub fn new(signals: &[Signal]) -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in signals {
            set.add(*s);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// The next pending signal, if any.
    pub fn pending(&mut self) -> io::Result<Option<Signal>> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Ok(Signal::try_from(info.ssi_signo as i32).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
