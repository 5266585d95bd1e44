//! Whole-machine memory per idle client, server side only.
//!
//! The machine's growth between two sizes counts both ends of every
//! loopback connection: the load processes and their sockets too. The
//! client side is measured apart, against `imap-idle-lab hold` (a stand-in
//! server that holds connections and nothing else): there the growth is
//! the load processes, the stand-in, and two socket ends; the load
//! processes and the stand-in are measured by their PSS, and what is left
//! is two socket ends of the same kind, so one end is half of it; the
//! same for the kernel slab alone. A setup's server side is then the
//! anonymous PSS growth of every process it runs plus the slab growth
//! less one client end's slab. Beside it, the machine's MemTotal -
//! MemAvailable growth less the load processes' PSS and one client end:
//! it counts everything, but moves with everything else on the machine
//! (page cache, memory the kernel frees late) by megabytes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::figures::{merge_failures, Figures};
use super::{say, PER_USER};
use crate::lab::load::{Load, LoadOptions};
use crate::lab::rig::machine::{Growth, MachineMem};
use crate::lab::rig::procfs;

/// What one connection's client end costs the machine, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientSide {
    /// Kernel memory of one socket end by MemAvailable (half a bare
    /// connection's, once the processes' PSS is taken away).
    pub socket_end: f64,
    /// Kernel slab of one socket end (half a bare connection's).
    pub slab_end: f64,
}

/// A server holding its idle clients itself (nothing parked), between two
/// sizes.
#[derive(Debug, Clone, Default)]
pub struct Unparked {
    /// PSS growth of the server processes per client, bytes.
    pub pss: f64,
    /// The whole machine's server side per client, bytes.
    pub machine: Option<f64>,
    pub curve: Vec<(f64, f64)>,
}

impl Unparked {
    /// From the serving processes' PSS (kB) and the points at two sizes.
    pub fn between(kb: (u64, u64), p1: Point, p2: Point, client: &ClientSide) -> Unparked {
        let grown = p2.conns.saturating_sub(p1.conns).max(1) as f64;
        Unparked {
            pss: (kb.1 as f64 - kb.0 as f64) * 1024.0 / grown,
            machine: server_side(&p1, &p2, client).map(|s| s.total),
            curve: curve(&[p1, p2], client),
        }
    }
}

/// A point of a size series: the machine, the load processes' PSS, and
/// the anonymous PSS of every process of the server side.
#[derive(Debug, Clone, Copy, Default)]
pub struct Point {
    pub conns: usize,
    pub machine: MachineMem,
    pub load_kb: u64,
    pub server_kb: u64,
}

fn pss_sum(pids: impl IntoIterator<Item = u32>) -> u64 {
    pids.into_iter().map(procfs::pss_kb).sum()
}

/// The server's processes by their anonymous memory: the program pages
/// they share with the load processes (the same binary) would move their
/// share as load processes come and go.
fn anon_sum(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| procfs::pss_anon_kb(p)).sum()
}

impl Point {
    pub fn take(conns: usize, loads: &[&Load], server: &[u32]) -> Point {
        Point {
            conns,
            machine: MachineMem::settled(),
            load_kb: pss_sum(loads.iter().flat_map(|l| l.pids())),
            server_kb: anon_sum(server),
        }
    }
}

/// The server side's growth per connection between two points, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSide {
    /// The whole machine's figures, both ends.
    pub both: Growth,
    /// Every server process's anonymous PSS, plus the kernel slab less
    /// one client socket end's.
    pub total: f64,
    /// Of which the server processes' anonymous PSS.
    pub user: f64,
    /// MemTotal - MemAvailable less the load processes and one client
    /// socket end: it counts everything, and moves with anything else the
    /// machine does (page cache, sockets freed late) by megabytes.
    pub by_available: f64,
}

/// The server side of the machine's growth between two points.
pub fn server_side(small: &Point, large: &Point, client: &ClientSide) -> Option<ServerSide> {
    let grown = large.conns.checked_sub(small.conns).filter(|&g| g > 0)? as f64;
    let both = large.machine.per(&small.machine, grown);
    let per = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / grown;
    let load = per(large.load_kb, small.load_kb);
    let user = per(large.server_kb, small.server_kb);
    Some(ServerSide {
        both,
        total: user + both.slab - client.slab_end,
        user,
        by_available: both.used - load - client.socket_end,
    })
}

/// The hibernation processes at one size (parked counted, their PSS,
/// descriptors and inotify instances), and the machine.
pub struct Size {
    pub parked: usize,
    pub pss_kb: u64,
    pub fds: usize,
    pub inotify: usize,
    pub point: Point,
}

impl Figures {
    /// The per-connection figures between two sizes, divided by what was
    /// parked, not by what was planned; the memory curve through `points`.
    pub fn sizes(&mut self, small: &Size, large: &Size, points: &[Point], client: &ClientSide) {
        let grown = large.parked.saturating_sub(small.parked).max(1) as f64;
        let per = |a: f64, b: f64| Some((a - b) / grown);
        self.parked_small = small.parked;
        self.parked = large.parked;
        self.pss_kb = Some(large.pss_kb);
        self.bytes_per_conn = per(large.pss_kb as f64 * 1024.0, small.pss_kb as f64 * 1024.0);
        self.fds_per_conn = per(large.fds as f64, small.fds as f64);
        self.inotify_per_conn = per(large.inotify as f64, small.inotify as f64);
        if let Some(side) = server_side(&small.point, &large.point, client) {
            self.machine = Some(side.both);
            self.machine_server_per_conn = Some(side.total);
            self.machine_server_user = Some(side.user);
            self.machine_available_per_conn = Some(side.by_available);
        }
        self.memory_curve = curve(points, client);
        self.client_socket_end = Some(client.socket_end);
    }
}

/// Server-side memory at each point above the first, bytes (as
/// [`ServerSide::total`]).
pub fn curve(points: &[Point], client: &ClientSide) -> Vec<(f64, f64)> {
    let Some(first) = points.first() else {
        return Vec::new();
    };
    points
        .iter()
        .map(|p| {
            let conns = p.conns as f64 - first.conns as f64;
            let user = (p.server_kb as f64 - first.server_kb as f64) * 1024.0;
            let slab = (p.machine.slab_kb - first.machine.slab_kb) * 1024.0;
            (p.conns as f64, user + slab - client.slab_end * conns)
        })
        .collect()
}

/// Connections the stand-in holds at most: one process, one fd each. The
/// figure is per connection, so a smaller size measures it as well.
const HOLD_MAX: usize = 15_000;

/// The client side, measured against `imap-idle-lab hold` at two sizes.
pub fn client_side(bin: &Path, n1: usize, n: usize, progress: bool) -> Result<ClientSide, String> {
    let n = n.min(HOLD_MAX);
    let n1 = n1.min(n / 5);
    say(&format!(
        "client side: {n1} then {n} connections to a stand-in that only holds them"
    ));
    let mut hold = Command::new(bin.join("imap-idle-lab"))
        .arg("hold")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting imap-idle-lab hold: {e}"))?;
    let result = (|| {
        let out = hold.stdout.take().ok_or("no stdout from hold")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("reading hold's port: {e}"))?;
        let port: u16 = line
            .trim()
            .parse()
            .map_err(|_| format!("hold printed {line:?}, not a port"))?;
        let opts = |clients: usize| LoadOptions {
            port,
            clients,
            accounts: (1..=clients.div_ceil(PER_USER))
                .map(|i| (format!("h{i}"), "x".to_owned()))
                .collect(),
            progress,
            timeout_secs: 120,
            ..LoadOptions::default()
        };
        let first = Load::connect(&opts(n1))?;
        let hold_small = procfs::pss_kb(hold.id());
        let small = Point::take(first.idle(), &[&first], &[]);
        let second = Load::connect(&opts(n - n1))?;
        let hold_large = procfs::pss_kb(hold.id());
        let large = Point::take(first.idle() + second.idle(), &[&first, &second], &[]);
        if first.failed() + second.failed() > 0 {
            let (r1, r2) = (first.hang_up(), second.hang_up());
            let why = merge_failures(&[&r1, &r2]);
            return Err(format!("clients failed against the stand-in: {why:?}"));
        }
        let grown = (large.conns - small.conns) as f64;
        let both = large.machine.per(&small.machine, grown);
        let all = both.used;
        let load_user = (large.load_kb as f64 - small.load_kb as f64) * 1024.0 / grown;
        let hold_user = (hold_large as f64 - hold_small as f64) * 1024.0 / grown;
        Ok(ClientSide {
            socket_end: ((all - load_user - hold_user) / 2.0).max(0.0),
            slab_end: both.slab / 2.0,
        })
    })();
    let _ = hold.kill();
    let _ = hold.wait();
    result
}
