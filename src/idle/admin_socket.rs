//! Dovecot 2.4's master-admin socket: how `doveadm kick USER` reaches a
//! hibernation process. The master gives each process of the service a
//! listener of its own (`$base_dir/srv.imap-hibernate/<pid>`, named
//! `%{pid}` in `SOCKET<n>_SETTINGS`); we register clients with anvil with
//! kick type `A`, and anvil connects there and sends `KICK-USER <user>
//! [<conn guid>]`. The kicked clients get `* BYE Server shutting down.`
//! and are closed, as with Dovecot's own imap-hibernate; the answer is
//! `+<count>`. Both sides greet with a `VERSION` line first.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use slab::Slab;

use super::accept::{self, Next};
use super::anvil::Anvil;
use super::clients::IdleCore;
use super::tokens::{token, Source};
use crate::proto::anvil::{admin_command, AdminCommand, ADMIN_PEER, ADMIN_VERSION};
use crate::proto::dovecot::check_version;
use crate::sys::{self, fdpass};

/// `MASTER_LISTEN_FD_FIRST` of each release (7 in 2.3, 8 in 2.4.0 and
/// 2.4.1, 9 from 2.4.2): listener n is that fd + n.
const LISTEN_FDS_FIRST: [i32; 3] = [7, 8, 9];
/// Anvil keeps one connection per process; a few spare for doveadm (the
/// descriptor budget counts them).
const MAX_CONNS: usize = 8;
/// Dovecot's own limit for this connection's input.
const MAX_LINE: usize = 1024;

/// The per-process admin listener the master passed, if any: the one
/// whose settings name it `%{pid}` (2.4; 2.3 has none), found where it
/// listens on a path ending in our pid.
pub fn from_master() -> Option<OwnedFd> {
    let count: i32 = std::env::var("SOCKET_COUNT").ok()?.parse().ok()?;
    let i = (0..count.min(64)).find(|i| {
        std::env::var(format!("SOCKET{i}_SETTINGS"))
            .is_ok_and(|s| s.split('\t').next() == Some("%{pid}"))
    })?;
    let ours = format!("/{}", std::process::id());
    let fd = LISTEN_FDS_FIRST.iter().map(|f| f + i).find(|&fd| {
        fdpass::inherited_is_listening(fd)
            && nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd).is_ok_and(|a| {
                a.path()
                    .is_some_and(|p| p.to_string_lossy().ends_with(&ours))
            })
    })?;
    fdpass::inherited(fd)
}

struct AdminConn {
    sock: OwnedFd,
    greeted: bool,
    buf: Vec<u8>,
}

pub struct AdminSocket {
    listener: OwnedFd,
    conns: Slab<AdminConn>,
}

impl AdminSocket {
    pub fn new(listener: OwnedFd) -> AdminSocket {
        AdminSocket {
            listener,
            conns: Slab::new(),
        }
    }

    pub fn listener(&self) -> &OwnedFd {
        &self.listener
    }

    pub fn accept(&mut self, reg: &Registry) {
        while self.conns.len() < MAX_CONNS {
            let sock = match accept::next(self.listener.as_fd()) {
                Next::Conn(s) => s,
                Next::Retry => continue,
                Next::Empty => return,
                Next::Pause(e) | Next::Failed(e) => {
                    warn!("accepting on the admin socket: {e}");
                    return;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let registered = reg.register(
                &mut SourceFd(&sock.as_raw_fd()),
                token(Source::Admin(key)),
                Interest::READABLE,
            );
            // A fresh socket has room for the greeting.
            if let Err(e) = registered.and_then(|()| sys::write_now(sock.as_fd(), ADMIN_VERSION)) {
                warn!("admin socket connection: {e}");
                let _ = reg.deregister(&mut SourceFd(&sock.as_raw_fd()));
                continue;
            }
            entry.insert(AdminConn {
                sock,
                greeted: false,
                buf: Vec::new(),
            });
        }
    }

    fn close(&mut self, key: usize, reg: &Registry) {
        let was_full = self.conns.len() >= MAX_CONNS;
        if let Some(c) = self.conns.try_remove(key) {
            let _ = reg.deregister(&mut SourceFd(&c.sock.as_raw_fd()));
        }
        // Connections that queued meanwhile raise no new edge.
        if was_full {
            self.accept(reg);
        }
    }

    /// An admin connection is readable: answer each whole line.
    pub fn event(
        &mut self,
        key: usize,
        core: &mut IdleCore,
        anvil: Option<&Anvil>,
        reg: &Registry,
    ) {
        let mut scratch = [0u8; 1024];
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            let n = match nix::unistd::read(&c.sock, &mut scratch) {
                Ok(0) => return self.close(key, reg),
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("reading the admin socket: {e}");
                    return self.close(key, reg);
                }
            };
            c.buf.extend_from_slice(&scratch[..n]);
            if let Err(e) = Self::lines(c, core, anvil) {
                warn!("admin socket: {e}");
                return self.close(key, reg);
            }
        }
    }

    /// Answer every whole line `c` has; `Err` closes the connection.
    fn lines(c: &mut AdminConn, core: &mut IdleCore, anvil: Option<&Anvil>) -> Result<(), String> {
        while let Some(nl) = c.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if !c.greeted {
                check_version(line, ADMIN_PEER)?;
                c.greeted = true;
                continue;
            }
            let reply = answer(line, core, anvil);
            sys::write_now(c.sock.as_fd(), reply.as_bytes()).map_err(|e| e.to_string())?;
        }
        if c.buf.len() > MAX_LINE {
            return Err(format!("line over {MAX_LINE} bytes"));
        }
        Ok(())
    }
}

fn answer(line: &[u8], core: &mut IdleCore, anvil: Option<&Anvil>) -> String {
    match admin_command(line) {
        AdminCommand::KickUser { user, guid } => {
            // A GUID of another process names none of ours.
            let only = match guid {
                Some(g) => match anvil.and_then(|a| a.id_of(&g)) {
                    Some(id) => Some(id),
                    None => return "+0\n".into(),
                },
                None => None,
            };
            let n = core.kick(&user, only);
            info!("user={user}: kick asked on the admin socket: {n} connections kicked");
            format!("+{n}\n")
        }
        AdminCommand::Refused(why) => format!("-{why}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::core::{Arrival, Core};
    use std::time::Instant;

    #[test]
    fn kick_answers_with_the_count() {
        let mut core: IdleCore = Core::new(10, false, Instant::now(), 1, Default::default());
        for user in ["bob", "bob", "carol"] {
            let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            let arrival = Arrival {
                carried: Default::default(),
                fd: OwnedFd::from(ours),
                user,
                cookie: [0; 16],
                tag: "t",
                in_idle: true,
                keepalive_secs: 0,
                watches: Vec::new(),
                state: b"",
                from_pid: 1,
                multiplex: false,
            };
            assert!(core.adopt(arrival, Instant::now()).is_ok());
        }
        assert_eq!(answer(b"KICK-USER\tbob", &mut core, None), "+2\n");
        assert_eq!(core.len(), 1);
        assert_eq!(answer(b"KICK-USER\tbob", &mut core, None), "+0\n");
        let other = format!("KICK-USER\tcarol\t{}", "ab".repeat(16));
        assert_eq!(answer(other.as_bytes(), &mut core, None), "+0\n");
        assert_eq!(answer(b"HELLO", &mut core, None), "-Unknown command\n");
        assert_eq!(core.len(), 1);
    }
}
