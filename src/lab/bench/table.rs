//! The table that puts setups side by side, each figure the median of
//! its rounds with their min..max, and the targets judged on medians.

use std::fmt::Write as _;

use super::figures::Figures;
use crate::lab::load::quantile;

/// The name of the setup whose imap-idle has CAP_DAC_READ_SEARCH.
pub const WITH_CAP: &str = "imap-idle --dovecot +cap";

/// A table line: its label, how to read one round's value, how to print
/// a value.
type Get = Box<dyn Fn(&Figures) -> Option<f64>>;

struct Line {
    label: String,
    get: Get,
    show: fn(f64) -> String,
}

fn line(
    label: &str,
    get: impl Fn(&Figures) -> Option<f64> + 'static,
    show: fn(f64) -> String,
) -> Line {
    Line {
        label: label.to_owned(),
        get: Box::new(get),
        show,
    }
}

pub fn fmt_ms(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

fn ms(x: f64) -> String {
    format!("{} ms", fmt_ms(x))
}

fn bytes(x: f64) -> String {
    format!("{} B", thousands(x))
}

fn count(x: f64) -> String {
    thousands(x)
}

fn two(x: f64) -> String {
    format!("{x:.2}")
}

pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::from(if n.round() < 0.0 { "-" } else { "" });
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median of the rounds that have the figure, and its min and max.
pub fn spread(values: &[Option<f64>]) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    Some((quantile(&v, 0.5)?, quantile(&v, 0.0)?, quantile(&v, 1.0)?))
}

fn lat(v: &[f64], p: f64) -> Option<f64> {
    quantile(v, p)
}

#[rustfmt::skip]
fn lines() -> Vec<Line> {
    vec![
        line("connections parked (measured)", |f| Some(f.parked as f64), count),
        line("hibernation processes", |f| (f.daemons > 0).then_some(f.daemons as f64), count),
        line("  of them woken by the paced deliveries", |f| (f.daemons > 0 && f.wakes_changed > 0).then_some(f.daemons_woken as f64), count),
        line("memory per parked connection, user space (PSS growth)", |f| f.bytes_per_conn, bytes),
        line("memory per parked connection, whole server side (PSS + slab)", |f| f.machine_server_per_conn, bytes),
        line("  of which user space, every server process (anonymous PSS)", |f| f.machine_server_user, bytes),
        line("  server side by MemTotal - MemAvailable (noisy)", |f| f.machine_available_per_conn, bytes),
        line("  whole machine, both ends (MemTotal - MemAvailable)", |f| f.machine.map(|m| m.used), bytes),
        line("  client side subtracted there: one socket end", |f| f.client_socket_end, bytes),
        line("  of which kernel slab, both ends", |f| f.machine.map(|m| m.slab), bytes),
        line("  of which unreclaimable slab, both ends", |f| f.machine.map(|m| m.sunreclaim), bytes),
        line("  TCP socket buffers (sockstat), both ends", |f| f.machine.map(|m| m.tcp_buf), bytes),
        line("PSS of the hibernation processes", |f| f.pss_kb.map(|k| k as f64 * 1024.0), bytes),
        line("without hibernation: server process per idle client (PSS)", |f| f.server_bytes_per_client, bytes),
        line("without hibernation: whole server side per idle client (PSS + slab)", |f| f.machine_server_per_client, bytes),
        line("fds per parked connection", |f| f.fds_per_conn, two),
        line("inotify instances per parked connection", |f| f.inotify_per_conn, two),
        line("time for all to be parked", |f| f.park_secs, |s| format!("{s:.1} s")),
        line("park rate into the daemon (one link)", |f| f.park_rate, |r| format!("{}/s", thousands(r))),
        line("wake in daemon, paced deliveries, p50", |f| lat(&f.wake_ms, 0.5), ms),
        line("wake in daemon, paced deliveries, p99", |f| lat(&f.wake_ms, 0.99), ms),
        line("wake in daemon, mass wake, p50", |f| lat(&f.wake_mass_ms, 0.5), ms),
        line("wake in daemon, mass wake, p99", |f| lat(&f.wake_mass_ms, 0.99), ms),
        line("  wakes by a change", |f| (f.wakes_changed > 0).then_some(f.wakes_changed as f64), count),
        line("  sampled wakes", |f| (f.wakes_changed > 0).then_some((f.wake_ms.len() + f.wake_mass_ms.len()) as f64), count),
        line("  woken connections given up on", |f| (f.wakes_changed > 0).then_some(f.wakes_gave_up as f64), count),
        line("delivery -> EXISTS at client, p50", |f| lat(&f.exists_ms, 0.5), ms),
        line("delivery -> EXISTS at client, p99", |f| lat(&f.exists_ms, 0.99), ms),
        line("  EXISTS missing", |f| Some(f.exists_expected.saturating_sub(f.exists_ms.len()) as f64), count),
        line("DONE -> OK, paced, p50", |f| lat(&f.done_ms, 0.5), ms),
        line("DONE -> OK, paced, p99", |f| lat(&f.done_ms, 0.99), ms),
        line("DONE -> OK under load, p50", |f| lat(&f.done_load_ms, 0.5), ms),
        line("DONE -> OK under load, p99", |f| lat(&f.done_load_ms, 0.99), ms),
        line("  DONEs per second under load", |f| (f.done_load_rate > 0.0).then_some(f.done_load_rate), count),
        line("mass wake: watchers of one mailbox (K)", |f| (f.mass_k > 0).then_some(f.mass_k as f64), count),
        line("mass wake: EXISTS at client, p50", |f| lat(&f.mass_ms, 0.5), ms),
        line("mass wake: all K have it", |f| lat(&f.mass_ms, 1.0), ms),
        line("idle wake-ups per second per hibernation process", |f| f.wakeups_per_sec, two),
        line("keepalives seen by clients", |f| Some(f.keepalives as f64), count),
        line("clients failed", |f| Some(f.failed as f64), count),
    ]
}

/// One cell: the value, or with several rounds `median (min..max)`.
fn cell(rounds: &[Figures], l: &Line) -> String {
    let values: Vec<Option<f64>> = rounds.iter().map(|f| (l.get)(f)).collect();
    match spread(&values) {
        None => "-".into(),
        Some((m, lo, hi)) if values.len() == 1 || lo == hi => (l.show)(m),
        Some((m, lo, hi)) => format!("{} ({}..{})", (l.show)(m), (l.show)(lo), (l.show)(hi)),
    }
}

/// Setups in columns, each with its rounds.
pub fn table(setups: &[Vec<Figures>]) -> String {
    let head = |r: &Vec<Figures>| {
        let name = r.first().map_or(String::new(), |f| f.name.clone());
        if r.iter().any(|f| f.invalid().is_some()) {
            format!("{name} [INVALID]")
        } else {
            name
        }
    };
    let mut cells: Vec<Vec<String>> = vec![std::iter::once(String::new())
        .chain(setups.iter().map(head))
        .collect()];
    for l in lines() {
        cells.push(
            std::iter::once(l.label.clone())
                .chain(setups.iter().map(|r| cell(r, &l)))
                .collect(),
        );
    }
    let cols = setups.len() + 1;
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
        let mut text = format!("{:<w$}", row[0], w = widths[0]);
        for c in 1..cols {
            let _ = write!(text, "  {:>w$}", row[c], w = widths[c]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(text.trim_end().chars().count()));
            out.push('\n');
        }
    }
    out
}

/// The median over rounds of one figure of a setup.
fn median(rounds: &[Figures], get: impl Fn(&Figures) -> Option<f64>) -> Option<f64> {
    spread(&rounds.iter().map(get).collect::<Vec<_>>()).map(|s| s.0)
}

/// Whether a row's name is setup `base`, whatever follows it (the Dovecot
/// version), but not a variant of it (`base +cap`).
fn is_setup(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .is_some_and(|rest| !rest.starts_with(" +"))
}

/// The targets, judged on the medians of rounds: one line each.
pub fn targets(setups: &[Vec<Figures>]) -> String {
    let mut out = String::new();
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    let named = |p: &str| {
        setups
            .iter()
            .find(|r| r.first().is_some_and(|f| is_setup(&f.name, p)))
    };
    if let Some(n) = named("imap-idle (native)") {
        let parked = median(n, |f| Some(f.parked as f64)).unwrap_or(0.0);
        if let Some(b) = median(n, |f| f.bytes_per_conn) {
            let _ = writeln!(
                out,
                "user-space memory per parked connection <= 256 B at {}: {b:.0} B, {}",
                thousands(parked),
                check(b <= 256.0)
            );
        }
        if let Some(b) = median(n, |f| f.machine_server_per_conn) {
            let _ = writeln!(
                out,
                "whole server side per parked connection, PSS + slab (measured, no target): {} B",
                thousands(b)
            );
        }
        if let (Some(f), Some(i)) = (
            median(n, |f| f.fds_per_conn),
            median(n, |f| f.inotify_per_conn),
        ) {
            let _ = writeln!(
                out,
                "1 fd and 0 inotify instances per parked connection: {f:.2} and {i:.2}, {}",
                check(f <= 1.01 && i < 0.01)
            );
        }
        if let Some(r) = median(n, |f| f.park_rate) {
            let _ = writeln!(
                out,
                "park rate >= 100,000/s: {}/s, {}",
                thousands(r),
                check(r >= 100_000.0)
            );
        }
        if let Some(p) = median(n, |f| lat(&f.wake_ms, 0.99)) {
            let _ = writeln!(
                out,
                "daemon-internal wake latency p99 <= 1 ms (paced): {}, {}",
                ms(p),
                check(p <= 1.0)
            );
        }
        if let (Some(all), Some(k)) = (
            median(n, |f| lat(&f.mass_ms, 1.0)),
            median(n, |f| Some(f.mass_k as f64)),
        ) {
            let _ = writeln!(
                out,
                "mass wake of {} watchers complete <= 30 ms: {}, {}",
                thousands(k),
                ms(all),
                check(all <= 30.0)
            );
        }
        if let Some(w) = median(n, |f| f.wakeups_per_sec) {
            let _ = writeln!(
                out,
                "idle daemon with {} parked wakes < 1/s (per daemon): {w:.2}/s, {}",
                thousands(parked),
                check(w < 1.0)
            );
        }
    }
    // Notify fds shared per mailbox (10 clients each): 1.1 and 0.1; with
    // the capability Dovecot's are all closed.
    for (name, fds, inotify) in [("imap-idle --dovecot", 1.1, 0.1), (WITH_CAP, 1.0, 0.0)] {
        let Some(o) = setups
            .iter()
            .find(|r| r.first().is_some_and(|f| is_setup(&f.name, name)))
        else {
            continue;
        };
        if let (Some(f), Some(i)) = (
            median(o, |f| f.fds_per_conn),
            median(o, |f| f.inotify_per_conn),
        ) {
            let _ = writeln!(
                out,
                "{name}: <= {fds:.1} fds and <= {inotify:.1} inotify instances per hibernated client: {f:.2} and {i:.2}, {}",
                check(f <= fds + 0.01 && i <= inotify + 0.01)
            );
        }
    }
    if let (Some(d), Some(o)) = (named("Dovecot"), named("imap-idle --dovecot")) {
        if let (Some(dm), Some(om)) = (
            median(d, |f| lat(&f.exists_ms, 0.5)),
            median(o, |f| lat(&f.exists_ms, 0.5)),
        ) {
            let ratio = om / dm;
            let _ = writeln!(out, "under Dovecot, delivery -> EXISTS median ratio imap-idle / imap-hibernate <= 1.0: {ratio:.2}, {}", check(ratio <= 1.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(parked: usize, bytes: f64, wake: Vec<f64>) -> Figures {
        Figures {
            name: "imap-idle (native)".into(),
            parked,
            bytes_per_conn: Some(bytes),
            fds_per_conn: Some(1.0),
            inotify_per_conn: Some(0.0),
            park_rate: Some(125_000.0),
            wake_ms: wake,
            wakeups_per_sec: Some(0.3),
            ..Figures::default()
        }
    }

    #[test]
    fn rounds_show_median_and_range_and_targets_judge_the_median() {
        let rounds = vec![
            round(19_000, 190.0, vec![0.05, 0.2, 2.0]),
            round(19_000, 250.0, vec![0.05, 0.1, 0.5]),
            round(18_999, 300.0, vec![0.05, 0.1, 0.5]),
        ];
        let t = table(std::slice::from_ref(&rounds));
        assert!(t.contains("19,000 (18,999..19,000)"), "{t}");
        assert!(t.contains("250 B (190 B..300 B)"), "{t}");
        let g = targets(std::slice::from_ref(&rounds));
        assert!(g.contains("250 B, met"), "{g}");
        assert!(g.contains("0.500 ms, met"), "{g}");
        assert!(g.contains("125,000/s, met"), "{g}");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(thousands(-332182.0), "-332,182");
        assert_eq!(thousands(-120.0), "-120");
    }

    #[test]
    fn a_failed_round_marks_the_setup_invalid() {
        let mut bad = round(10, 200.0, vec![]);
        bad.failed = 1;
        let t = table(&[vec![round(10, 200.0, vec![]), bad]]);
        assert!(t.lines().next().unwrap().contains("[INVALID]"), "{t}");
    }
}
