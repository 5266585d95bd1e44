//! What the whole machine spends, from `/proc/meminfo` and
//! `/proc/net/sockstat`: user space, kernel slabs and socket buffers of
//! every process together, so kernel memory a process's PSS leaves out
//! (socket structures, inotify marks, descriptor tables) is counted too.

use std::time::Duration;

/// One reading, kB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineMem {
    /// MemTotal - MemAvailable: what could not be handed to a newcomer.
    pub used_kb: f64,
    pub slab_kb: f64,
    pub sunreclaim_kb: f64,
    /// Buffer memory of TCP sockets (sockstat's `mem`, in pages).
    pub tcp_buf_kb: f64,
}

fn meminfo_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn sockstat_tcp_pages(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

impl MachineMem {
    /// One reading now; zeros where /proc says nothing.
    pub fn read() -> MachineMem {
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let sock = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let page_kb = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4.0, |b| b as f64 / 1024.0);
        let total = meminfo_field(&mem, "MemTotal").unwrap_or(0.0);
        let avail = meminfo_field(&mem, "MemAvailable").unwrap_or(total);
        MachineMem {
            used_kb: total - avail,
            slab_kb: meminfo_field(&mem, "Slab").unwrap_or(0.0),
            sunreclaim_kb: meminfo_field(&mem, "SUnreclaim").unwrap_or(0.0),
            tcp_buf_kb: sockstat_tcp_pages(&sock).unwrap_or(0.0) * page_kb,
        }
    }

    /// The median of several readings a little apart: other processes on
    /// the machine move these figures by a few MB at any moment.
    pub fn settled() -> MachineMem {
        let mut reads: Vec<MachineMem> = (0..7)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                MachineMem::read()
            })
            .collect();
        let mid = reads.len() / 2;
        let median = |reads: &mut Vec<MachineMem>, f: fn(&MachineMem) -> f64| {
            reads.sort_by(|a, b| f(a).total_cmp(&f(b)));
            f(&reads[mid])
        };
        MachineMem {
            used_kb: median(&mut reads, |m| m.used_kb),
            slab_kb: median(&mut reads, |m| m.slab_kb),
            sunreclaim_kb: median(&mut reads, |m| m.sunreclaim_kb),
            tcp_buf_kb: median(&mut reads, |m| m.tcp_buf_kb),
        }
    }

    /// Growth from `earlier` to `self` per each of `n` things added.
    pub fn per(&self, earlier: &MachineMem, n: f64) -> Growth {
        let d = |a: f64, b: f64| (a - b) * 1024.0 / n;
        Growth {
            used: d(self.used_kb, earlier.used_kb),
            slab: d(self.slab_kb, earlier.slab_kb),
            sunreclaim: d(self.sunreclaim_kb, earlier.sunreclaim_kb),
            tcp_buf: d(self.tcp_buf_kb, earlier.tcp_buf_kb),
        }
    }
}

/// Growth of each [`MachineMem`] figure per thing added, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Growth {
    pub used: f64,
    pub slab: f64,
    pub sunreclaim: f64,
    pub tcp_buf: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let mem = "MemTotal:       24683584 kB\nMemAvailable:   23384864 kB\nSlab: 456508 kB\n";
        assert_eq!(meminfo_field(mem, "MemTotal"), Some(24683584.0));
        assert_eq!(meminfo_field(mem, "Slab"), Some(456508.0));
        assert_eq!(meminfo_field(mem, "SUnreclaim"), None);
        let sock =
            "sockets: used 24\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 7\nUDP: inuse 0 mem 0\n";
        assert_eq!(sockstat_tcp_pages(sock), Some(7.0));
        let m = MachineMem::read();
        assert!(m.used_kb > 0.0, "{m:?}");
    }
}
