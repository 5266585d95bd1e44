//! What one setup measured in one round.

use super::{DONE_LOAD_RATE, DONE_RATE};
use crate::lab::load::{Load, Report};
use crate::lab::rig::machine::Growth;
use crate::proto::native::Stats;

#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub name: String,
    /// Connections parked (measured) at the smaller and the larger size.
    pub parked_small: usize,
    pub parked: usize,
    /// Hibernation processes at the larger size, and how many of them the
    /// paced deliveries woke a client in.
    pub daemons: usize,
    pub daemons_woken: usize,
    /// PSS of the hibernation processes at the larger size, kB.
    pub pss_kb: Option<u64>,
    /// PSS growth per parked connection between the two sizes, bytes.
    pub bytes_per_conn: Option<f64>,
    /// The same for a mail/imap process holding idle clients itself, bytes.
    pub server_bytes_per_client: Option<f64>,
    /// The whole machine's growth per parked connection, both ends.
    pub machine: Option<Growth>,
    /// What was subtracted per connection for the client's socket end.
    pub client_socket_end: Option<f64>,
    /// The server side: every server process's PSS and the kernel slab
    /// less the client ends', bytes; of which user space; and by
    /// MemTotal - MemAvailable.
    pub machine_server_per_conn: Option<f64>,
    pub machine_server_user: Option<f64>,
    pub machine_available_per_conn: Option<f64>,
    /// The server side per idle client when nothing hibernates, bytes.
    pub machine_server_per_client: Option<f64>,
    /// (connections, server-side machine memory above the first point, bytes)
    pub memory_curve: Vec<(f64, f64)>,
    /// The same with nothing hibernated (the server holds its clients).
    pub memory_curve_unparked: Vec<(f64, f64)>,
    pub fds_per_conn: Option<f64>,
    pub inotify_per_conn: Option<f64>,
    /// From the first connection to all parked, seconds.
    pub park_secs: Option<f64>,
    /// Parks per second straight into the daemon (one link, no IMAP).
    pub park_rate: Option<f64>,
    /// Daemon-internal: change noticed -> descriptor sent back, ms, for
    /// the paced deliveries and for the mass wake.
    pub wake_ms: Vec<f64>,
    pub wake_mass_ms: Vec<f64>,
    /// Wakes by a change, and connections given up on, over both.
    pub wakes_changed: u64,
    pub wakes_gave_up: u64,
    pub exists_ms: Vec<f64>,
    pub exists_expected: usize,
    /// DONE -> OK, paced (a client typing now and then) and under load.
    pub done_ms: Vec<f64>,
    pub done_load_ms: Vec<f64>,
    pub done_load_rate: f64,
    /// One delivery to a mailbox watched by this many parked connections.
    pub mass_k: usize,
    pub mass_ms: Vec<f64>,
    pub wakeups_per_sec: Option<f64>,
    pub wakeup_window_secs: f64,
    pub keepalives: u64,
    pub failed: usize,
    /// Why clients failed, with counts.
    pub failures: Vec<(String, usize)>,
}

impl Figures {
    /// What makes this round's figures unfit to report, if anything.
    pub fn invalid(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.failed > 0 {
            why.push(format!("{} clients failed", self.failed));
        }
        if self.exists_ms.len() < self.exists_expected {
            why.push(format!(
                "{} of {} EXISTS missing",
                self.exists_expected - self.exists_ms.len(),
                self.exists_expected
            ));
        }
        if self.mass_ms.len() < self.mass_k {
            why.push(format!(
                "mass wake: {} of {} clients saw no EXISTS",
                self.mass_k - self.mass_ms.len(),
                self.mass_k
            ));
        }
        if self.wakes_gave_up > 0 {
            why.push(format!(
                "{} woken connections given up on",
                self.wakes_gave_up
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The daemons' wake windows: the paced deliveries between readings
    /// `paced.0` and `paced.1`, the mass wake between `mass.0` and `mass.1`.
    pub fn wakes(&mut self, paced: (&[Stats], &[Stats]), mass: (&[Stats], &[Stats])) {
        let (paced_ms, changed, gave_up, woken) = wakes_across(paced.0, paced.1);
        let (mass_ms, changed_m, gave_up_m, _) = wakes_across(mass.0, mass.1);
        self.daemons_woken = woken;
        self.wake_ms = paced_ms;
        self.wake_mass_ms = mass_ms;
        self.wakes_changed = changed + changed_m;
        self.wakes_gave_up = gave_up + gave_up_m;
    }

    /// End the loads and take their figures: DONE paced on `timed`, DONE
    /// under load on the first bulk step, the other clients hang up.
    pub fn end_loads(&mut self, timed: Load, bulk: Vec<Load>, mass: Load, mass_k: usize) {
        let timed = timed.finish_paced(DONE_RATE);
        let bulk: Vec<Report> = bulk
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    l.finish_paced(DONE_LOAD_RATE)
                } else {
                    l.hang_up()
                }
            })
            .collect();
        self.done_load_rate = DONE_LOAD_RATE;
        self.take_reports(&timed, &bulk, &mass.hang_up(), mass_k);
    }

    /// The paced load, the bulk loads (some with DONE under load) and the
    /// mass wake.
    fn take_reports(&mut self, timed: &Report, bulk: &[Report], mass: &Report, mass_k: usize) {
        self.exists_ms = timed.latency_ms.clone();
        self.exists_expected = timed.exists_expected;
        self.done_ms = timed.done_ms.clone();
        self.done_load_ms = bulk
            .iter()
            .flat_map(|r| r.done_ms.iter().copied())
            .collect();
        self.mass_k = mass_k;
        self.mass_ms = mass.latency_ms.clone();
        let all: Vec<&Report> = std::iter::once(timed).chain(bulk).chain([mass]).collect();
        self.failures = merge_failures(&all);
        self.keepalives = all.iter().map(|r| r.keepalives).sum();
        self.failed = all.iter().map(|r| r.failed()).sum();
    }
}

/// The daemon's wake latencies recorded between two readings of its
/// counters, in ms, and the wakes by a change and give-ups between them.
pub fn wakes_between(before: &Stats, after: &Stats) -> (Vec<f64>, u64, u64) {
    let new = after.wake_samples.saturating_sub(before.wake_samples) as usize;
    let kept = &after.wake_us[after.wake_us.len().saturating_sub(new)..];
    (
        kept.iter().map(|&u| u as f64 / 1000.0).collect(),
        after.wake_changed.saturating_sub(before.wake_changed),
        after.gave_up.saturating_sub(before.gave_up),
    )
}

/// [`wakes_between`] over several daemons (readings in the same order),
/// and how many daemons had a wake by a change between them.
pub fn wakes_across(before: &[Stats], after: &[Stats]) -> (Vec<f64>, u64, u64, usize) {
    let mut all = (Vec::new(), 0, 0, 0);
    for (b, a) in before.iter().zip(after) {
        let (ms, changed, gave_up) = wakes_between(b, a);
        all.0.extend(ms);
        all.1 += changed;
        all.2 += gave_up;
        all.3 += usize::from(changed > 0);
    }
    all
}

/// The failure reasons of several loads, most common first.
pub fn merge_failures(reports: &[&Report]) -> Vec<(String, usize)> {
    let mut all: Vec<(String, usize)> = Vec::new();
    for (why, n) in reports.iter().flat_map(|r| r.failures.iter()) {
        match all.iter_mut().find(|(w, _)| w == why) {
            Some((_, m)) => *m += n,
            None => all.push((why.clone(), *n)),
        }
    }
    all.sort_by_key(|f| std::cmp::Reverse(f.1));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_between_takes_only_the_new_samples() {
        let before = Stats {
            wake_samples: 10,
            wake_changed: 10,
            wake_us: vec![1000; 10],
            ..Stats::default()
        };
        let after = Stats {
            wake_samples: 13,
            wake_changed: 14,
            gave_up: 1,
            wake_us: [vec![1000; 10], vec![2000, 3000, 4000]].concat(),
            ..Stats::default()
        };
        assert_eq!(wakes_between(&before, &after), (vec![2.0, 3.0, 4.0], 4, 1));
    }

    #[test]
    fn a_round_with_failures_is_invalid() {
        let ok = Figures {
            exists_expected: 2,
            exists_ms: vec![1.0, 2.0],
            ..Figures::default()
        };
        assert_eq!(ok.invalid(), None);
        let bad = Figures {
            failed: 1,
            mass_k: 3,
            mass_ms: vec![1.0],
            ..ok.clone()
        };
        let why = bad.invalid().unwrap();
        assert!(
            why.contains("1 clients failed") && why.contains("2 of 3"),
            "{why}"
        );
    }
}
