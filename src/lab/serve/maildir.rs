//! A Maildir folder with stable UIDs and CONDSTORE-style modseqs, enough to
//! tell a restored session exactly what changed while it was parked.
//!
//! Beside `cur/ new/ tmp/` each folder keeps `imap-idle-lab.uidlist`: its
//! UIDVALIDITY, GUID, next UID and highest modseq, then one record per
//! message ever seen, expunged ones included (as tombstones), so "what
//! happened since modseq M" has an answer. Every sync holds an exclusive
//! `flock` on that file, so several mail processes can share a folder.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

const UIDLIST: &str = "imap-idle-lab.uidlist";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// Modseq at which the message appeared.
    pub added: u64,
    /// Modseq of its last change.
    pub modseq: u64,
    /// Modseq at which it was expunged; 0 while it exists.
    pub expunged: u64,
    /// Maildir flag letters, sorted (`S` seen, `F` flagged, ...).
    pub flags: String,
    /// File name up to `:2,`.
    pub base: String,
}

impl Record {
    pub fn present(&self) -> bool {
        self.expunged == 0
    }

    /// The IMAP flag list.
    pub fn imap_flags(&self) -> String {
        let names: Vec<&str> = self
            .flags
            .chars()
            .filter_map(|c| match c {
                'D' => Some("\\Draft"),
                'F' => Some("\\Flagged"),
                'R' => Some("\\Answered"),
                'S' => Some("\\Seen"),
                'T' => Some("\\Deleted"),
                _ => None,
            })
            .collect();
        format!("({})", names.join(" "))
    }
}

pub struct Mailbox {
    pub name: String,
    pub dir: PathBuf,
    pub guid: [u8; 16],
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
    /// By UID, tombstones included.
    pub records: Vec<Record>,
}

#[derive(Debug)]
pub enum MailboxError {
    NotFound(String),
    Io(String, io::Error),
    Corrupt(String),
}

impl fmt::Display for MailboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailboxError::NotFound(name) => write!(f, "mailbox {name} does not exist"),
            MailboxError::Io(what, e) => write!(f, "{what}: {e}"),
            MailboxError::Corrupt(what) => write!(f, "damaged {UIDLIST}: {what}"),
        }
    }
}

fn io_err(what: impl fmt::Display) -> impl FnOnce(io::Error) -> MailboxError {
    move |e| MailboxError::Io(what.to_string(), e)
}

/// Where mailbox `name` of the Maildir at `root` lives (Maildir++ layout).
pub fn folder(root: &Path, name: &str) -> Option<PathBuf> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Some(root.to_path_buf());
    }
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
        && !name.contains("..");
    ok.then(|| root.join(format!(".{name}")))
}

/// Canonical spelling: INBOX is case-insensitive.
pub fn canonical(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".into()
    } else {
        name.to_owned()
    }
}

impl Mailbox {
    /// Open and sync mailbox `name`; INBOX is created when missing.
    /// Returns the mailbox and the UIDs this call moved out of `new/`
    /// (`\Recent` for the caller).
    pub fn open(root: &Path, name: &str) -> Result<(Mailbox, Vec<u32>), MailboxError> {
        let name = canonical(name);
        let dir = folder(root, &name).ok_or_else(|| MailboxError::NotFound(name.clone()))?;
        if name == "INBOX" {
            for sub in ["cur", "new", "tmp"] {
                fs::create_dir_all(dir.join(sub)).map_err(io_err(dir.display()))?;
            }
        } else if !dir.join("cur").is_dir() {
            return Err(MailboxError::NotFound(name));
        }
        let mut mb = Mailbox {
            name,
            dir,
            guid: [0; 16],
            uidvalidity: 0,
            uidnext: 1,
            highest_modseq: 0,
            records: Vec::new(),
        };
        let recent = mb.sync()?;
        Ok((mb, recent))
    }

    /// Paths whose change means this mailbox changed.
    pub fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.dir.join("new"), self.dir.join("cur")]
    }

    pub fn present(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.present())
    }

    pub fn record(&self, uid: u32) -> Option<&Record> {
        self.records
            .binary_search_by_key(&uid, |r| r.uid)
            .ok()
            .map(|i| &self.records[i])
    }

    /// Bring the uidlist up to date with the directories: new messages get
    /// UIDs, vanished ones become tombstones, renamed ones (flags) a new
    /// modseq. Returns the UIDs moved out of `new/` by this call.
    pub fn sync(&mut self) -> Result<Vec<u32>, MailboxError> {
        if !self.dir.join("cur").is_dir() {
            return Err(MailboxError::NotFound(self.name.clone()));
        }
        let list_path = self.dir.join(UIDLIST);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&list_path)
            .map_err(io_err(list_path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| {
            MailboxError::Io(format!("locking {}", list_path.display()), e.into())
        })?;
        let text = fs::read_to_string(&list_path).map_err(io_err(list_path.display()))?;
        let fresh = text.is_empty();
        if fresh {
            self.create_identity()?;
        } else {
            self.parse(&text)?;
        }
        let mut changed = fresh;
        let mut moved = Vec::new();
        // Deliveries: move to cur/ (they stop being "new" for everyone).
        let mut arrived = Vec::new();
        for name in list(&self.dir.join("new"))? {
            let base = name.split(':').next().unwrap_or(&name).to_owned();
            let to = self.dir.join("cur").join(format!("{base}:2,"));
            match fs::rename(self.dir.join("new").join(&name), &to) {
                Ok(()) => arrived.push(base),
                // Another process moved it first: it will be in cur/.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(MailboxError::Io(format!("moving {name} to cur/"), e)),
            }
        }
        let mut on_disk: HashMap<String, String> = HashMap::new();
        for name in list(&self.dir.join("cur"))? {
            let (base, flags) = match name.split_once(":2,") {
                Some((b, f)) => (b.to_owned(), sorted(f)),
                None => (name.clone(), String::new()),
            };
            on_disk.insert(base, flags);
        }
        for r in self.records.iter_mut().filter(|r| r.expunged == 0) {
            match on_disk.remove(&r.base) {
                None => {
                    self.highest_modseq += 1;
                    r.expunged = self.highest_modseq;
                    changed = true;
                }
                Some(flags) if flags != r.flags => {
                    self.highest_modseq += 1;
                    r.modseq = self.highest_modseq;
                    r.flags = flags;
                    changed = true;
                }
                Some(_) => {}
            }
        }
        let mut new: Vec<(String, String)> = on_disk.into_iter().collect();
        // Maildir names start with the delivery time: a stable, natural order.
        new.sort();
        for (base, flags) in new {
            self.highest_modseq += 1;
            let uid = self.uidnext;
            self.uidnext += 1;
            if arrived.contains(&base) {
                moved.push(uid);
            }
            self.records.push(Record {
                uid,
                added: self.highest_modseq,
                modseq: self.highest_modseq,
                expunged: 0,
                flags,
                base,
            });
            changed = true;
        }
        if changed {
            self.write(&list_path)?;
        }
        drop(lock);
        Ok(moved)
    }

    fn create_identity(&mut self) -> Result<(), MailboxError> {
        getrandom::fill(&mut self.guid).map_err(|e| {
            MailboxError::Io("making a GUID".into(), io::Error::other(e.to_string()))
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        self.uidvalidity = now.max(1);
        self.uidnext = 1;
        self.highest_modseq = 1;
        self.records.clear();
        Ok(())
    }

    fn parse(&mut self, text: &str) -> Result<(), MailboxError> {
        let corrupt = |what: &str| MailboxError::Corrupt(what.to_owned());
        let mut lines = text.lines();
        let head: Vec<&str> = lines
            .next()
            .ok_or_else(|| corrupt("empty"))?
            .split(' ')
            .collect();
        let [v, validity, next, modseq, guid] = head[..] else {
            return Err(corrupt("bad header"));
        };
        if v != "V1" {
            return Err(corrupt("unknown version"));
        }
        self.uidvalidity = validity.parse().map_err(|_| corrupt("uidvalidity"))?;
        self.uidnext = next.parse().map_err(|_| corrupt("uidnext"))?;
        self.highest_modseq = modseq.parse().map_err(|_| corrupt("modseq"))?;
        self.guid = unhex(guid).ok_or_else(|| corrupt("guid"))?;
        self.records.clear();
        for line in lines {
            let f: Vec<&str> = line.splitn(6, ' ').collect();
            let [uid, added, modseq, expunged, flags, base] = f[..] else {
                return Err(corrupt("bad record"));
            };
            let num = |s: &str| s.parse::<u64>().map_err(|_| corrupt("bad number"));
            self.records.push(Record {
                uid: uid.parse().map_err(|_| corrupt("bad uid"))?,
                added: num(added)?,
                modseq: num(modseq)?,
                expunged: num(expunged)?,
                flags: if flags == "-" {
                    String::new()
                } else {
                    flags.to_owned()
                },
                base: base.to_owned(),
            });
        }
        Ok(())
    }

    fn write(&self, path: &Path) -> Result<(), MailboxError> {
        let mut out = format!(
            "V1 {} {} {} {}\n",
            self.uidvalidity,
            self.uidnext,
            self.highest_modseq,
            hex(&self.guid)
        );
        for r in &self.records {
            let flags = if r.flags.is_empty() { "-" } else { &r.flags };
            out.push_str(&format!(
                "{} {} {} {} {flags} {}\n",
                r.uid, r.added, r.modseq, r.expunged, r.base
            ));
        }
        // Write beside and rename: a crash never leaves half a list.
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io_err(tmp.display()))?;
        f.write_all(out.as_bytes()).map_err(io_err(tmp.display()))?;
        fs::rename(&tmp, path).map_err(io_err(path.display()))
    }
}

fn list(dir: &Path) -> Result<Vec<String>, MailboxError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            MailboxError::NotFound(dir.display().to_string())
        } else {
            MailboxError::Io(dir.display().to_string(), e)
        }
    })?;
    for e in entries.flatten() {
        if let Some(name) = e.file_name().to_str() {
            if !name.starts_with('.') {
                out.push(name.to_owned());
            }
        }
    }
    Ok(out)
}

fn sorted(flags: &str) -> String {
    let mut c: Vec<char> = flags.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    c.sort_unstable();
    c.dedup();
    c.into_iter().collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Deliver a message the Maildir way: write in `tmp/`, rename into `new/`.
pub fn deliver(root: &Path, name: &str, body: &[u8]) -> io::Result<PathBuf> {
    deliver_then(root, name, body, || ())
}

/// [`deliver`], calling `at_rename` just before the rename that makes the
/// message visible: a delivery clock starts there, not at the `tmp/` write.
pub fn deliver_then(
    root: &Path,
    name: &str,
    body: &[u8],
    at_rename: impl FnOnce(),
) -> io::Result<PathBuf> {
    let dir = folder(root, name).ok_or_else(|| io::Error::other("bad mailbox name"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| io::Error::other(e.to_string()))?;
    let unique = format!(
        "{}.M{}P{}R{}.lab",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        hex(&rnd)
    );
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let tmp = dir.join("tmp").join(&unique);
    fs::write(&tmp, body)?;
    let to = dir.join("new").join(&unique);
    at_rename();
    fs::rename(&tmp, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_modseqs_and_tombstones() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let (mb, recent) = Mailbox::open(root, "inbox").unwrap();
        assert_eq!(mb.name, "INBOX");
        assert!(recent.is_empty());
        let v = mb.uidvalidity;
        deliver(root, "INBOX", b"Subject: a\r\n\r\na\r\n").unwrap();
        deliver(root, "INBOX", b"Subject: b\r\n\r\nb\r\n").unwrap();
        let (mut mb, recent) = Mailbox::open(root, "INBOX").unwrap();
        assert_eq!(recent, vec![1, 2]);
        assert_eq!(mb.uidvalidity, v);
        let m0 = mb.highest_modseq;
        // Flag one, expunge the other, as another client would.
        let cur = root.join("cur");
        let r1 = mb.record(1).unwrap().base.clone();
        let r2 = mb.record(2).unwrap().base.clone();
        fs::rename(cur.join(format!("{r1}:2,")), cur.join(format!("{r1}:2,S"))).unwrap();
        fs::remove_file(cur.join(format!("{r2}:2,"))).unwrap();
        assert!(mb.sync().unwrap().is_empty());
        let r1 = mb.record(1).unwrap();
        assert!(r1.modseq > m0);
        assert_eq!(r1.imap_flags(), "(\\Seen)");
        assert!(mb.record(2).unwrap().expunged > m0);
        assert_eq!(mb.present().count(), 1);
        // Another opener sees the same identity and records.
        let (again, _) = Mailbox::open(root, "INBOX").unwrap();
        assert_eq!(again.guid, mb.guid);
        assert_eq!(again.records, mb.records);
    }

    #[test]
    fn other_folders_must_exist() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            Mailbox::open(t.path(), "Archive"),
            Err(MailboxError::NotFound(_))
        ));
        assert!(folder(t.path(), "../x").is_none());
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(t.path().join(".Archive").join(sub)).unwrap();
        }
        let (mb, _) = Mailbox::open(t.path(), "Archive").unwrap();
        fs::remove_dir_all(t.path().join(".Archive")).unwrap();
        let mut mb = mb;
        assert!(matches!(mb.sync(), Err(MailboxError::NotFound(_))));
    }
}
