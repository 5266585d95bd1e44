//! Descriptor passing, with `unsafe` where descriptors reach us as
//! bare integers (`accept4`, `recvmsg` with SCM_RIGHTS, and descriptors a
//! service manager left open for us at start). Every descriptor becomes an `OwnedFd` before anything else
//! can happen, so an early return closes it instead of leaking it.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::libc;

/// Most descriptors one packet may carry: the kernel's own limit
/// (SCM_MAX_FD). Most packets of our protocols carry one or none; a
/// hand-over to a successor fills whole packets. The room also lets us see
/// (and close) what a buggy peer sent instead of reporting a truncation.
pub const MAX_FDS: usize = 253;

/// What one `recvmsg` produced.
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    /// The packet was longer than the buffer (the rest is gone).
    pub truncated: bool,
    /// The kernel dropped descriptors for lack of control-buffer room.
    pub fds_truncated: bool,
}

/// Accept one connection, non-blocking and close-on-exec from the start.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address pointers only writes the new
    // descriptor number into its return value.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 succeeded, so `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Take ownership of a descriptor our parent left open for us (Dovecot's
/// master passes its listener as fd 7, status and death pipes as 5 and 6).
/// Returns `None` when nothing is open there. Call once per number, at
/// start, before anything else could have opened or closed it.
pub fn inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with
    // EBADF when the number is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: the number is open, and nothing else in this process owns
    // it: it was open before main started and the caller takes it once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: setting FD_CLOEXEC on an open descriptor we now own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    Some(owned)
}

/// Whether a descriptor our parent left open is a listening socket, without
/// taking it (a number that is not ours to close stays open).
pub fn inherited_is_listening(fd: RawFd) -> bool {
    use nix::sys::socket::{getsockopt, sockopt};
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with
    // EBADF when the number is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return false;
    }
    // SAFETY: the number is open (checked above) and stays open while the
    // borrow lives: it ends with this call, and nothing closes it meanwhile.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false)
}

/// Receive one packet and the descriptors attached to it (close-on-exec).
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    const SPACE: usize = cmsg_space(MAX_FDS);
    // u64 elements keep the buffer aligned for `cmsghdr`.
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;

    // SAFETY: every pointer in `msg` refers to a live local buffer of the
    // length stated next to it.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` and set msg_controllen to the
    // bytes used; the CMSG_* macros walk only within that length. The
    // headers it wrote are complete even when MSG_CTRUNC is set (it only
    // stores what fits), so the descriptors we read were installed in our
    // table and are ours to close.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = hdr.cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    let raw: RawFd = ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Send one packet with descriptors attached (none is fine).
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send_with(sock, data, fds, 0)
}

/// `send` that fails with `WouldBlock` instead of waiting, even on a
/// blocking socket.
pub fn send_nowait(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send_with(sock, data, fds, libc::MSG_DONTWAIT)
}

fn send_with(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    const SPACE: usize = cmsg_space(MAX_FDS);
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = fds.len() * mem::size_of::<RawFd>();
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload as u32) } as _;
        // SAFETY: msg_control points at `control`, which is at least
        // CMSG_SPACE(MAX_FDS) bytes and aligned, so the first header and its
        // payload of `fds.len()` descriptors fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
        }
    }
    // SAFETY: every pointer in `msg` refers to a live local buffer of the
    // length stated next to it; the kernel only reads them.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Send several packets without descriptors in one system call, without
/// waiting for room: returns how many went (the first ones, in order).
/// `WouldBlock` when not even the first fits.
pub fn send_many(sock: BorrowedFd<'_>, packets: &[&[u8]]) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = packets
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut _,
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is a plain C struct for which all-zero is a
            // valid value.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let count = msgs.len().min(libc::c_uint::MAX as usize) as libc::c_uint;
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    // SAFETY: `msgs` holds `count` headers, each pointing at one iovec in
    // `iovs`, which points at a live packet of the length stated; all
    // outlive the call, and the kernel only reads the packets.
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), count, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

const fn cmsg_space(fds: usize) -> usize {
    // CMSG_SPACE is not const; this is its definition on Linux.
    let align = mem::size_of::<usize>();
    let hdr = (mem::size_of::<libc::cmsghdr>() + align - 1) & !(align - 1);
    let data = (fds * mem::size_of::<RawFd>() + align - 1) & !(align - 1);
    hdr + data
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    #[test]
    fn passes_a_usable_fd_with_cloexec() {
        let (a, b) = pair();
        let (mut x, y) = UnixStream::pair().unwrap();
        send(a.as_fd(), b"hi", &[y.as_fd()]).unwrap();
        drop(y);
        let mut buf = [0u8; 16];
        let got = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"hi");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated && !got.fds_truncated);
        let flags = nix::fcntl::fcntl(&got.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & nix::libc::FD_CLOEXEC != 0);
        let mut through = UnixStream::from(got.fds.into_iter().next().unwrap());
        through.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        x.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
    }

    #[test]
    fn sends_many_packets_in_order_each_whole() {
        let (a, b) = pair();
        let packets: [&[u8]; 3] = [b"one", b"", b"three"];
        assert_eq!(send_many(a.as_fd(), &packets).unwrap(), 3);
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"", b"three"] {
            let got = recv(b.as_fd(), &mut buf).unwrap();
            assert_eq!(&buf[..got.len], want);
        }
    }

    #[test]
    fn reports_truncated_packet_and_extra_fds() {
        let (a, b) = pair();
        let (x, y) = UnixStream::pair().unwrap();
        send(a.as_fd(), &[7u8; 100], &[x.as_fd(), y.as_fd(), x.as_fd()]).unwrap();
        let mut buf = [0u8; 10];
        let got = recv(b.as_fd(), &mut buf).unwrap();
        assert!(got.truncated);
        assert_eq!(got.fds.len(), 3);
    }
}
