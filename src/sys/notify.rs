//! Readiness notification to a service manager (systemd's `sd_notify`
//! protocol): one datagram to the socket named by `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;

/// Send `msg` (e.g. `READY=1`). `Ok(false)` when no service manager asked
/// for notifications (`$NOTIFY_SOCKET` unset).
pub fn notify(msg: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), &path)?;
    }
    Ok(true)
}
