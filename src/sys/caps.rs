//! Capabilities. The only one imap-idle ever uses is CAP_DAC_READ_SEARCH
//! (reopening the mailboxes Dovecot's notify fds watch, by handle): an
//! operator grants it with `setcap cap_dac_read_search+ep` on the binary,
//! and the daemon keeps that one alone when it gives up root.

use std::ffi::CString;
use std::io;
use std::path::Path;

use nix::libc;

const CAP_DAC_READ_SEARCH: u32 = 2;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn get() -> io::Result<[Data; 2]> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget writes two `Data` words (version 3) into `d` and
    // reads `h`; both live for the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(d)
}

fn set(d: [Data; 2]) -> io::Result<()> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads `h` and two `Data` words (version 3) from `d`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const BIT: u32 = 1 << CAP_DAC_READ_SEARCH;

/// Whether CAP_DAC_READ_SEARCH is in effect now.
pub fn can_read_search() -> bool {
    get().is_ok_and(|d| d[0].effective & BIT != 0)
}

/// Whether any capability is permitted to us.
pub fn any_permitted() -> bool {
    get().is_ok_and(|d| d[0].permitted != 0 || d[1].permitted != 0)
}

/// Whether the file `exe` carries CAP_DAC_READ_SEARCH in its permitted
/// set (`setcap cap_dac_read_search+ep`): the operator's opt-in.
pub fn file_grants_read_search(exe: &Path) -> bool {
    let Ok(path) = CString::new(exe.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let name = c"security.capability";
    let mut buf = [0u8; 24];
    // SAFETY: both names are NUL-terminated strings and `buf` is writable
    // for the length given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    // vfs_cap_data: magic and flags, then the low permitted word.
    n >= 8 && u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) & BIT != 0
}

/// Give the file `exe` CAP_DAC_READ_SEARCH, permitted and effective, as
/// `setcap cap_dac_read_search+ep` does (needs CAP_SETFCAP: root). For the
/// lab's private Dovecot, whose copy of the binary has no xattrs.
pub fn grant_read_search(exe: &Path) -> io::Result<()> {
    let path = CString::new(exe.as_os_str().as_encoded_bytes())?;
    // vfs_cap_data revision 2 with the effective flag; then permitted and
    // inheritable, low words, then high words.
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    data[4..8].copy_from_slice(&BIT.to_le_bytes());
    // SAFETY: both names are NUL-terminated strings and `data` is
    // readable for the length given.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            data.as_ptr().cast(),
            data.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keep CAP_DAC_READ_SEARCH alone, in effect, if it is permitted; drop
/// every other capability. Returns whether it is kept.
pub fn keep_only_read_search() -> io::Result<bool> {
    let have = get()?[0].permitted & BIT != 0;
    let word = if have { BIT } else { 0 };
    set([
        Data {
            effective: word,
            permitted: word,
            inheritable: 0,
        },
        Data::default(),
    ])?;
    Ok(have)
}

/// Drop every capability.
pub fn drop_all() -> io::Result<()> {
    set([Data::default(); 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_our_capabilities_works() {
        // The kernel's own account of our effective set agrees.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(can_read_search(), eff & u64::from(BIT) != 0);
        let exe = std::env::current_exe().unwrap();
        assert!(
            !file_grants_read_search(&exe),
            "the test binary has no file caps"
        );
    }

    #[test]
    fn a_granted_file_reads_back_as_granted() {
        if !nix::unistd::geteuid().is_root() {
            return eprintln!(
                "SKIPPED a_granted_file_reads_back_as_granted: needs root (CAP_SETFCAP)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, b"x").unwrap();
        assert!(!file_grants_read_search(&f));
        grant_read_search(&f).unwrap();
        assert!(file_grants_read_search(&f));
    }
}
