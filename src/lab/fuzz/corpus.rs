//! The corpus on disk: one directory per target, one input per file.
//! Files are named by a hash of their bytes, so saving the same input
//! twice writes one file; `crash-` and `hang-` prefixes mark findings.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Most kept (non-finding) inputs one target's directory may hold: the
/// corpus lives in the repository and must stay small.
pub const MAX_KEPT: usize = 50;

/// FNV-1a, 64 bits: enough to name files and classes, and no dependency.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn file_name(prefix: &str, data: &[u8]) -> String {
    format!("{prefix}{:016x}", hash(data))
}

fn is_finding(name: &str) -> bool {
    name.starts_with("crash-") || name.starts_with("hang-")
}

/// Every input in `dir`, in name order so a seeded run repeats; a missing
/// directory is an empty corpus. Findings are loaded too: a crash that
/// was not fixed shows up again at once.
pub fn load(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| fs::read(p).ok()).collect()
}

/// How many kept inputs (not findings) `dir` holds.
pub fn kept(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| !is_finding(&e.file_name().to_string_lossy()))
            .count()
    })
}

pub fn save(dir: &Path, name: &str, data: &[u8]) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(name);
    fs::write(&path, data)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_load_back_in_order_and_findings_are_not_kept() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("x");
        assert!(load(&dir).is_empty());
        save(&dir, &file_name("", b"b"), b"b").unwrap();
        save(&dir, &file_name("", b"a"), b"a").unwrap();
        save(&dir, &file_name("crash-", b"c"), b"c").unwrap();
        assert_eq!(kept(&dir), 2);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let want: Vec<Vec<u8>> = names
            .iter()
            .map(|n| fs::read(dir.join(n)).unwrap())
            .collect();
        assert_eq!(load(&dir), want);
        assert_eq!(file_name("hang-", b""), "hang-cbf29ce484222325");
    }
}
