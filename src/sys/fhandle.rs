//! Reopening an inode by its file handle (`open_by_handle_at`, which
//! needs CAP_DAC_READ_SEARCH), and finding a mount of its filesystem to
//! decode the handle on.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::libc;

use super::fdinfo::MAX_HANDLE;

/// `struct file_handle` with room for the longest handle.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; MAX_HANDLE],
}

/// An `O_PATH` descriptor of the inode `(kind, bytes)` names on the
/// filesystem `mount` is on.
pub fn open_by_handle(mount: BorrowedFd<'_>, kind: i32, bytes: &[u8]) -> io::Result<OwnedFd> {
    if bytes.len() > MAX_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = Handle {
        bytes: bytes.len() as u32,
        kind,
        data: [0; MAX_HANDLE],
    };
    h.data[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `h` is laid out as `struct file_handle` followed by
    // MAX_HANDLE bytes, and `handle_bytes` is at most that: the kernel
    // reads no further. It only reads the handle.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut h as *mut Handle).cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where the filesystem of device `major:minor` is mounted, preferring a
/// mount of its root (a bind mount of a subtree decodes handles too, but
/// a whole mount is the plain case).
pub fn mount_point(major: u32, minor: u32) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&info, &format!("{major}:{minor}"))
}

fn find_mount(info: &str, dev: &str) -> Option<PathBuf> {
    let mut any = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 || f[2] != dev {
            continue;
        }
        let at = PathBuf::from(unescape(f[4]));
        if f[3] == "/" {
            return Some(at);
        }
        any.get_or_insert(at);
    }
    any
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|o| {
            let o = std::str::from_utf8(o).ok()?;
            u8::from_str_radix(o, 8).ok()
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_mount_of_a_device_wins() {
        let info = "27 1 8:1 /srv /bind rw - ext4 /dev/sda1 rw\n\
                    28 1 8:1 / /mnt/my\\040disk rw - ext4 /dev/sda1 rw\n\
                    29 1 0:21 / /proc rw - proc proc rw\n";
        assert_eq!(find_mount(info, "8:1"), Some(PathBuf::from("/mnt/my disk")));
        assert_eq!(find_mount(info, "0:21"), Some(PathBuf::from("/proc")));
        assert_eq!(find_mount(info, "9:9"), None);
    }

    #[test]
    fn the_filesystem_of_our_temp_dir_is_mounted_somewhere() {
        let dir = tempfile::tempdir().unwrap();
        let i = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC).unwrap();
        i.add_watch(dir.path(), nix::sys::inotify::AddWatchFlags::IN_CREATE)
            .unwrap();
        let marks = super::super::fdinfo::inotify_marks(std::os::fd::AsFd::as_fd(&i)).unwrap();
        let (major, minor) = marks[0].major_minor();
        assert!(mount_point(major, minor).is_some(), "{marks:?}");
    }
}
