//! A fake Dovecot imap process, handing clients to imap-idle's
//! imap-hibernate socket the way Dovecot's own does.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A fake Dovecot imap process talking to imap-idle's imap-hibernate socket.
pub struct FakeImap {
    pub sock: UnixStream,
}

/// imap-idle in standalone Dovecot mode, with its own base_dir.
pub fn dovecot_daemon() -> (tempfile::TempDir, super::Daemon) {
    let base = tempfile::tempdir().unwrap();
    let b = base.path().to_str().unwrap();
    let d = super::Daemon::start(&[
        "--dovecot",
        "--dovecot-base-dir",
        b,
        "--dovecot-group",
        "root",
    ]);
    (base, d)
}

impl FakeImap {
    /// Connected, and past the VERSION handshake.
    pub fn greeted(base: &std::path::Path) -> FakeImap {
        let mut f = FakeImap::connect(base);
        f.send("VERSION\timap-hibernate\t1\t0\n", None);
        f
    }

    pub fn connect(base: &std::path::Path) -> FakeImap {
        let sock = UnixStream::connect(base.join("imap-hibernate")).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut f = FakeImap { sock };
        assert_eq!(f.line(), "VERSION\timap-hibernate\t1\t0\n");
        f
    }

    pub fn line(&mut self) -> String {
        use std::io::Read;
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while self.sock.read(&mut b).unwrap_or(0) == 1 {
            out.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Send a line, its first byte carrying `fd` if given.
    pub fn send(&mut self, line: &str, fd: Option<std::os::fd::BorrowedFd<'_>>) {
        use std::io::Write;
        let bytes = line.as_bytes();
        let fds: Vec<_> = fd.into_iter().collect();
        imap_idle::sys::fdpass::send(self.sock.as_fd(), &bytes[..1], &fds).unwrap();
        self.sock.write_all(&bytes[1..]).unwrap();
    }

    pub fn closed(&mut self) -> bool {
        self.line().is_empty()
    }
}
