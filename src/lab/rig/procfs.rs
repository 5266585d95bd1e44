//! What /proc says about a process: memory, descriptors, wake-ups.

/// Proportional set size in kB (shared pages divided among their users).
pub fn pss_kb(pid: u32) -> u64 {
    rollup_kb(pid, "Pss:")
}

/// The anonymous part of the PSS in kB: heap and stacks, without the
/// program's own pages, whose share moves whenever another process of the
/// same binary starts or ends.
pub fn pss_anon_kb(pid: u32) -> u64 {
    rollup_kb(pid, "Pss_Anon:")
}

fn rollup_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix(field))
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

/// Every process below `pid` (children, theirs, and so on).
pub fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = processes();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Processes whose parent is `ppid` and whose argv[0] (up to a space) is
/// `name`.
pub fn children_named(ppid: u32, name: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&(pid, parent)| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|&b| b == 0 || b == b' ').next().unwrap_or(&[]);
            parent == ppid && argv0 == name.as_bytes()
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Processes running the executable at `exe`, whoever their parent is.
pub fn running(exe: &std::path::Path) -> Vec<u32> {
    processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))
        .collect()
}

/// Every process now, with its parent: (pid, ppid).
fn processes() -> Vec<(u32, u32)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name in parentheses may hold spaces: fields start
        // after the last ')'.
        let rest = stat.get(stat.rfind(')').unwrap_or(0) + 2..).unwrap_or("");
        if let Some(parent) = rest.split(' ').nth(1).and_then(|v| v.parse().ok()) {
            all.push((pid, parent));
        }
    }
    all
}

/// TCP sockets the process holds open: for a hibernation process, its
/// clients (everything else it holds is a UNIX socket, pipe or inotify).
pub fn tcp_sockets(pid: u32) -> usize {
    tcp_socket_inodes(pid).len()
}

/// Inodes of the TCP sockets among the process's descriptors, matched
/// against the TCP tables of its own network namespace.
pub fn tcp_socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let mut tcp = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode.
        tcp.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9))
                .filter_map(|i| i.parse::<u64>().ok())
                .filter(|&i| i != 0),
        );
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|i| tcp.contains(i))
        .collect()
}

/// Whether `pid` has exited: gone, or a zombie its parent has not reaped.
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_children_and_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let below = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(below.contains(&child.id()), "{below:?}");
        assert!(below.len() >= 2, "the shell's sleep too: {below:?}");
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(pss_kb(me) > 0);
        assert!(pss_anon_kb(me) > 0 && pss_anon_kb(me) <= pss_kb(me));
        assert!(fds(me) >= 3);
        let _i =
            nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC).unwrap();
        assert!(inotify_instances(me) >= 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(wakeups(me) > 0);
    }

    #[test]
    fn finds_tcp_sockets_and_nothing_else() {
        use std::os::fd::AsFd;
        let inode = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        // Other tests open sockets meanwhile: look only for ours.
        let held = tcp_socket_inodes(std::process::id());
        for fd in [listener.as_fd(), client.as_fd(), server.as_fd()] {
            assert!(held.contains(&inode(fd)));
        }
        assert!(!held.contains(&inode(unix.as_fd())));
        let client_inode = inode(client.as_fd());
        drop(client);
        assert!(!tcp_socket_inodes(std::process::id()).contains(&client_inode));
    }
}
