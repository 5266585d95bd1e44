//! What one setup measured, and the table that puts setups side by side.

use std::fmt::Write as _;

use crate::lab::load::quantile;

#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub name: String,
    /// Connections parked at the larger size.
    pub parked: usize,
    /// PSS of the hibernation process at the larger size, kB.
    pub pss_kb: Option<u64>,
    /// PSS growth per parked connection between the two sizes, bytes.
    pub bytes_per_conn: Option<f64>,
    /// The same for a mail/imap process holding idle clients itself, bytes.
    pub server_bytes_per_client: Option<f64>,
    pub fds_per_conn: Option<f64>,
    pub inotify_per_conn: Option<f64>,
    /// From the first connection to all parked, seconds.
    pub park_secs: Option<f64>,
    /// Parks per second straight into the daemon (one link, no IMAP).
    pub park_rate: Option<f64>,
    /// Daemon-internal: change noticed -> descriptor sent back, ms.
    pub wake_ms: Vec<f64>,
    pub exists_ms: Vec<f64>,
    pub exists_expected: usize,
    pub done_ms: Vec<f64>,
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

fn q(v: &[f64], p: f64) -> Option<f64> {
    quantile(v, p)
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x < 1.0 => format!("{x:.3}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn pair(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!("{} / {}", fmt_ms(q(v, 0.5)), fmt_ms(q(v, 0.99)))
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), f)
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table line: its label, and how to read it off one setup's figures.
type Line = (&'static str, Box<dyn Fn(&Figures) -> String>);

pub fn table(rows: &[Figures]) -> String {
    let lines: Vec<Line> = vec![
        (
            "connections parked",
            Box::new(|f| thousands(f.parked as f64)),
        ),
        (
            "memory per parked connection (PSS growth)",
            Box::new(|f| opt(f.bytes_per_conn, |b| format!("{} B", thousands(b)))),
        ),
        (
            "PSS of the hibernation process",
            Box::new(|f| {
                opt(f.pss_kb.map(|k| k as f64), |k| {
                    format!("{} kB", thousands(k))
                })
            }),
        ),
        (
            "  for reference: server process per idle client",
            Box::new(|f| opt(f.server_bytes_per_client, |b| format!("{} B", thousands(b)))),
        ),
        (
            "fds per parked connection",
            Box::new(|f| opt(f.fds_per_conn, |v| format!("{v:.2}"))),
        ),
        (
            "inotify instances per parked connection",
            Box::new(|f| opt(f.inotify_per_conn, |v| format!("{v:.2}"))),
        ),
        (
            "time for all to be parked",
            Box::new(|f| opt(f.park_secs, |s| format!("{s:.1} s"))),
        ),
        (
            "park rate into the daemon (one link)",
            Box::new(|f| opt(f.park_rate, |r| format!("{}/s", thousands(r)))),
        ),
        (
            "wake in daemon, change -> fd back, p50 / p99 ms",
            Box::new(|f| pair(&f.wake_ms)),
        ),
        (
            "delivery -> EXISTS at client, p50 / p99 ms",
            Box::new(|f| pair(&f.exists_ms)),
        ),
        (
            "  EXISTS received / expected",
            Box::new(|f| format!("{} / {}", f.exists_ms.len(), f.exists_expected)),
        ),
        (
            "DONE -> OK Idle completed, p50 / p99 ms",
            Box::new(|f| pair(&f.done_ms)),
        ),
        (
            "mass wake: one delivery, K watchers",
            Box::new(|f| {
                if f.mass_ms.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "K={}: p50 {} ms, all in {} ms",
                        f.mass_k,
                        fmt_ms(q(&f.mass_ms, 0.5)),
                        fmt_ms(q(&f.mass_ms, 1.0))
                    )
                }
            }),
        ),
        (
            "idle wake-ups per second (from /proc)",
            Box::new(|f| {
                opt(f.wakeups_per_sec, |w| {
                    format!("{w:.2} (over {:.0} s)", f.wakeup_window_secs)
                })
            }),
        ),
        (
            "keepalives seen by clients",
            Box::new(|f| f.keepalives.to_string()),
        ),
        ("clients failed", Box::new(|f| f.failed.to_string())),
    ];
    let mut cells: Vec<Vec<String>> = vec![std::iter::once(String::new())
        .chain(rows.iter().map(|r| r.name.clone()))
        .collect()];
    for (label, get) in &lines {
        cells.push(
            std::iter::once(label.to_string())
                .chain(rows.iter().map(get))
                .collect(),
        );
    }
    let cols = rows.len() + 1;
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for c in 1..cols {
            let _ = write!(line, "  {:>w$}", row[c], w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(line.trim_end().chars().count()));
            out.push('\n');
        }
    }
    out
}

/// The targets, checked against the figures: one line each.
pub fn targets(rows: &[Figures]) -> String {
    let mut out = String::new();
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    if let Some(n) = rows
        .iter()
        .find(|r| r.name.starts_with("imap-idle (native)"))
    {
        if let Some(b) = n.bytes_per_conn {
            let _ = writeln!(
                out,
                "memory per parked connection <= 384 B at {}: {b:.0} B, {}",
                n.parked,
                check(b <= 384.0)
            );
        }
        if let (Some(f), Some(i)) = (n.fds_per_conn, n.inotify_per_conn) {
            let _ = writeln!(
                out,
                "1 fd and 0 inotify instances per parked connection: {f:.2} and {i:.2}, {}",
                check(f <= 1.01 && i < 0.01)
            );
        }
        if let Some(r) = n.park_rate {
            let _ = writeln!(
                out,
                "park rate >= 20,000/s: {}/s, {}",
                thousands(r),
                check(r >= 20_000.0)
            );
        }
        if let Some(p) = q(&n.wake_ms, 0.99) {
            let _ = writeln!(
                out,
                "daemon-internal wake latency p99 <= 1 ms: {} ms, {}",
                fmt_ms(Some(p)),
                check(p <= 1.0)
            );
        }
        if let Some(w) = n.wakeups_per_sec {
            let _ = writeln!(
                out,
                "idle daemon with {} parked wakes < 1/s: {w:.2}/s, {}",
                n.parked,
                check(w < 1.0)
            );
        }
    }
    let dovecot = rows.iter().find(|r| r.name.starts_with("Dovecot"));
    let ours = rows.iter().find(|r| r.name.contains("--dovecot"));
    if let (Some(d), Some(o)) = (dovecot, ours) {
        if let (Some(dm), Some(om)) = (q(&d.exists_ms, 0.5), q(&o.exists_ms, 0.5)) {
            let ratio = om / dm;
            let _ = writeln!(
                out,
                "under Dovecot, delivery -> EXISTS median ratio imap-idle / imap-hibernate <= 1.0: {ratio:.2}, {}",
                check(ratio <= 1.0)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_up_and_targets_judge() {
        let a = Figures {
            name: "imap-idle (native)".into(),
            parked: 19_000,
            bytes_per_conn: Some(190.0),
            fds_per_conn: Some(1.0),
            inotify_per_conn: Some(0.0),
            park_rate: Some(25_000.0),
            wake_ms: vec![0.05, 0.2, 2.0],
            wakeups_per_sec: Some(0.3),
            ..Figures::default()
        };
        let t = table(std::slice::from_ref(&a));
        assert!(t.contains("19,000"), "{t}");
        assert!(t.contains("190 B"), "{t}");
        let g = targets(&[a]);
        assert!(g.contains("190 B, met"), "{g}");
        assert!(g.contains("2.0 ms, MISSED"), "{g}");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
