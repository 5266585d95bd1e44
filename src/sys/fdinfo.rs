//! What an inotify instance handed to us watches, read from
//! `/proc/self/fdinfo`: one `inotify wd:.. ino:.. sdev:.. mask:..` line per
//! mark, with the inode's file handle when its filesystem has one. All
//! numbers there are hex; `sdev` is the kernel's device number (major in
//! the bits above 20), not the one `stat` reports.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The longest file handle the kernel makes (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE: usize = 128;

/// One watched inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The kernel's `s_dev` of the inode's filesystem.
    pub dev: u32,
    pub ino: u64,
    /// The events watched (`IN_*` bits as given to `inotify_add_watch`).
    pub mask: u32,
    /// `(handle type, handle bytes)`, to reopen the inode by.
    pub handle: Option<(i32, Vec<u8>)>,
}

impl Mark {
    /// `(major, minor)` of `dev`, as mountinfo spells it.
    pub fn major_minor(&self) -> (u32, u32) {
        (self.dev >> 20, self.dev & 0xf_ffff)
    }
}

/// The marks of the inotify instance `fd`; an error when `fd` is not one.
pub fn inotify_marks(fd: BorrowedFd<'_>) -> io::Result<Vec<Mark>> {
    let n = fd.as_raw_fd();
    let link = fs::read_link(format!("/proc/self/fd/{n}"))?;
    if link.as_os_str() != "anon_inode:inotify" {
        return Err(io::Error::other(format!(
            "not an inotify instance ({})",
            link.display()
        )));
    }
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{n}"))?;
    parse(&text).ok_or_else(|| io::Error::other("unreadable inotify fdinfo"))
}

/// The marks in an fdinfo text; `None` when a mark line is malformed.
pub fn parse(text: &str) -> Option<Vec<Mark>> {
    text.lines()
        .filter_map(|l| l.strip_prefix("inotify "))
        .map(mark)
        .collect()
}

fn mark(line: &str) -> Option<Mark> {
    let field = |name: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix(':'))
    };
    let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    let handle = match (hex("fhandle-bytes"), hex("fhandle-type"), field("f_handle")) {
        (Some(len), Some(kind), Some(bytes)) => {
            let bytes = unhex(bytes)?;
            (bytes.len() as u64 == len && bytes.len() <= MAX_HANDLE)
                .then_some((i32::try_from(kind).ok()?, bytes))
        }
        _ => None,
    };
    Some(Mark {
        dev: u32::try_from(hex("sdev")?).ok()?,
        ino: hex("ino")?,
        mask: u32::try_from(hex("mask")?).ok()?,
        handle,
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1057\n\
        inotify wd:2 ino:98c1a8 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a8c1980094fccd96\n\
        inotify wd:1 ino:98c1a9 sdev:800001 mask:380 ignored_mask:0\n";

    #[test]
    fn marks_with_and_without_a_handle() {
        let m = parse(TEXT).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].dev, m[0].ino, m[0].mask), (0xfe0_0000, 0x98c1a8, 2));
        assert_eq!(m[0].major_minor(), (254, 0));
        let (kind, bytes) = m[0].handle.clone().unwrap();
        assert_eq!(kind, 1);
        assert_eq!(bytes, [0xa8, 0xc1, 0x98, 0x00, 0x94, 0xfc, 0xcd, 0x96]);
        assert_eq!(m[1].major_minor(), (8, 1));
        assert_eq!((m[1].mask, m[1].handle.clone()), (0x380, None));
    }

    #[test]
    fn a_malformed_mark_spoils_the_reading() {
        assert_eq!(parse("inotify wd:1 ino:zz sdev:0 mask:2\n"), None);
        // A handle whose length disagrees is no handle.
        let m =
            parse("inotify wd:1 ino:1 sdev:0 mask:2 fhandle-bytes:4 fhandle-type:1 f_handle:00\n");
        assert_eq!(m.unwrap()[0].handle, None);
        assert_eq!(parse("pos:\t0\n"), Some(vec![]));
    }

    #[test]
    fn a_real_instance_reads_back_what_it_watches() {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let i = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
        i.add_watch(
            dir.path(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .unwrap();
        let m = inotify_marks(i.as_fd()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].ino, fs::metadata(dir.path()).unwrap().ino());
        assert_eq!(
            m[0].mask,
            (AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO).bits()
        );
        let f = fs::File::open(dir.path()).unwrap();
        assert!(
            inotify_marks(f.as_fd()).is_err(),
            "a directory is no inotify"
        );
    }
}
