//! What /proc says about a process: memory, descriptors, wake-ups.

/// Proportional set size in kB (shared pages divided among their users).
pub fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Open descriptors.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The descriptor count once it stops moving (a stats connection may
/// still be closing).
pub fn settled_fds(pid: u32) -> usize {
    let mut last = fds(pid);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(150));
        let now = fds(pid);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Open inotify instances.
pub fn inotify_instances(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify")
            })
            .count()
    })
}

/// Voluntary context switches so far: each is the process going back to
/// sleep, so their growth over an idle period counts its wake-ups.
/// (Involuntary ones are preemptions while it runs, not wake-ups.)
pub fn wakeups(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time the process has run so far, in nanoseconds (the scheduler's
/// own count, finer than the clock ticks of `stat`).
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Processes whose parent is `ppid` and whose argv[0] (up to a space) is
/// `name`.
pub fn children_named(ppid: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = stat.get(stat.rfind(')').unwrap_or(0) + 2..).unwrap_or("");
        let parent: u32 = rest
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|&b| b == 0 || b == b' ').next().unwrap_or(&[]);
        if parent == ppid && argv0 == name.as_bytes() {
            found.push(pid);
        }
    }
    found
}

/// Socket inodes of established TCP connections whose local port is
/// `port` (IPv4 and IPv6).
fn tcp_inodes_on_port(port: u16) -> std::collections::HashSet<u64> {
    let mut found = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) && *state == "01" {
                if let Ok(i) = inode.parse() {
                    found.insert(i);
                }
            }
        }
    }
    found
}

/// Descriptors the processes `pids` hold of established TCP connections
/// to local port `port`: the clients they serve, counted.
pub fn tcp_conns_on_port(pids: &[u32], port: u16) -> usize {
    let inodes = tcp_inodes_on_port(port);
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| {
                t.to_string_lossy()
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|i| i.parse::<u64>().ok())
                    .is_some_and(|i| inodes.contains(&i))
            })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(pss_kb(me) > 0);
        assert!(fds(me) >= 3);
        let _i =
            nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC).unwrap();
        assert!(inotify_instances(me) >= 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(wakeups(me) > 0);
    }

    #[test]
    fn counts_our_own_tcp_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _s = l.accept().unwrap();
        assert_eq!(tcp_conns_on_port(&[std::process::id()], port), 1);
    }
}
