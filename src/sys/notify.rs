//! Readiness and status notices to a service manager (`sd_notify`'s wire
//! format): one datagram of `KEY=VALUE` lines to the socket named by
//! `$NOTIFY_SOCKET`, a path or, with a leading `@`, an abstract name.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// Send `msg` (such as `READY=1` or `STATUS=...`, several separated by
/// newlines) to `$NOTIFY_SOCKET`. `Ok(false)` when no service manager
/// asked for notices. The variable stays set: a successor this daemon
/// starts tells the same manager about itself.
pub fn notify(msg: &str) -> io::Result<bool> {
    let Some(name) = std::env::var_os("NOTIFY_SOCKET").filter(|n| !n.is_empty()) else {
        return Ok(false);
    };
    let addr = address(&name)?;
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    loop {
        // The manager may be slow to read; never wait for it.
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match socket::sendto(sock.as_raw_fd(), msg.as_bytes(), &addr, flags) {
            Ok(n) if n == msg.len() => return Ok(true),
            Ok(_) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short notice")),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn address(name: &OsStr) -> io::Result<UnixAddr> {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b'/') => Ok(UnixAddr::new(name)?),
        Some(b'@') => Ok(UnixAddr::new_abstract(&bytes[1..])?),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={name:?} is neither a path nor an @abstract name"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_both_kinds_and_nonsense() {
        let path = address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.path(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abs = address(OsStr::new("@/org/x/notify")).unwrap();
        assert_eq!(abs.as_abstract(), Some(&b"/org/x/notify"[..]));
        assert!(address(OsStr::new("relative")).is_err());
    }
}
