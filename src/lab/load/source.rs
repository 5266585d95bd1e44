//! Source addresses for the load tool's connections. A client socket
//! bound to one source address can reach one server address with at most
//! as many connections as there are ephemeral ports (about 28,000 here),
//! so past that the clients are spread over 127.0.0.2, 127.0.0.3, ...:
//! the whole of 127.0.0.0/8 is local on Linux and needs no setup.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use mio::net::TcpStream;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

/// Connections per (source address, server address) pair at most, when
/// the tool picks the number of source addresses: under the ephemeral
/// port range (32768-60999 by default) with room to spare.
pub const PER_SOURCE: usize = 25_000;
/// 127.0.0.2 up to 127.0.0.254.
pub const MAX_SOURCES: usize = 253;

/// The source addresses for `clients` connections to `target`: `asked`
/// of them when given (0 none: the kernel picks the source), else as many
/// as keep each under [`PER_SOURCE`] (none while one is enough), starting
/// `skip` addresses past 127.0.0.2 (so that several loads to one server
/// use different ones). Only a loopback target can be reached from
/// 127.0.0.x.
pub fn sources(
    target: SocketAddr,
    clients: usize,
    asked: Option<usize>,
    skip: usize,
) -> Result<Vec<Ipv4Addr>, String> {
    let n = match asked {
        Some(n) => n,
        None if clients <= PER_SOURCE => 0,
        None => clients.div_ceil(PER_SOURCE),
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let loopback = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    if !loopback {
        return Err(format!(
            "{n} source addresses (127.0.0.2 on) need a 127.x.x.x target, not {target}; \
             give --source-addrs 0, or fewer clients"
        ));
    }
    if n + skip > MAX_SOURCES {
        return Err(format!(
            "at most {MAX_SOURCES} source addresses, not {n} past the first {skip}"
        ));
    }
    Ok((skip..skip + n)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect())
}

/// The orders' form of `sources`: comma-separated, or `-` for none.
pub fn to_order(sources: &[Ipv4Addr]) -> String {
    if sources.is_empty() {
        return "-".into();
    }
    let list: Vec<String> = sources.iter().map(Ipv4Addr::to_string).collect();
    list.join(",")
}

pub fn from_order(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    if s == "-" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|a| a.parse().map_err(|e| format!("source {a}: {e}")))
        .collect()
}

/// Start a non-blocking connection to `target`, from `source` when given.
pub fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target);
    };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // The port is then chosen at connect, per (source, target) pair, not
    // reserved per source at bind: more connections per source address.
    socket::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
    let from = SockaddrStorage::from(SocketAddr::new(IpAddr::V4(source), 0));
    socket::bind(fd.as_raw_fd(), &from)?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(target)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn lo(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn enough_sources_to_stay_under_the_port_range() {
        assert!(sources(lo(143), PER_SOURCE, None, 0).unwrap().is_empty());
        let s = sources(lo(143), 100_000, None, 0).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(s[3], Ipv4Addr::new(127, 0, 0, 5));
        assert_eq!(sources(lo(143), 10, Some(2), 0).unwrap().len(), 2);
        assert!(sources(lo(143), 100_000, Some(0), 0).unwrap().is_empty());
        let remote = SocketAddr::from(([192, 0, 2, 1], 143));
        assert!(sources(remote, 100_000, None, 0).is_err());
        assert!(sources(lo(143), 10, Some(MAX_SOURCES + 1), 0).is_err());
        let skipped = sources(lo(143), 10, Some(2), 3).unwrap();
        assert_eq!(
            skipped,
            [Ipv4Addr::new(127, 0, 0, 5), Ipv4Addr::new(127, 0, 0, 6)]
        );
        assert!(sources(lo(143), 10, Some(2), MAX_SOURCES - 1).is_err());
        assert_eq!(from_order(&to_order(&s)).unwrap(), s);
        assert!(from_order("-").unwrap().is_empty());
    }

    #[test]
    fn a_connection_comes_from_its_source_address() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        let src = Ipv4Addr::new(127, 0, 0, 7);
        let c = connect(target, Some(src)).unwrap();
        let (_server, from) = l.accept().unwrap();
        assert_eq!(from.ip(), IpAddr::V4(src));
        let end = Instant::now() + Duration::from_secs(5);
        while c.peer_addr().is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.local_addr().unwrap().ip(), IpAddr::V4(src));
    }
}
