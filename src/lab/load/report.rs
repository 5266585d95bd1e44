//! What the load tool prints: a table for people, JSON for scripts.

use std::fmt::Write as _;

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: String,
    pub requested: usize,
    pub users: usize,
    pub workers: usize,
    /// Clients that connected, logged in, selected and idled.
    pub idle: usize,
    /// Failure reasons with counts, most common first.
    pub failures: Vec<(String, usize)>,
    pub connect_secs: f64,
    pub deliveries: usize,
    pub exists_expected: usize,
    pub exists_received: usize,
    /// Delivery -> EXISTS per client and delivery, ms.
    pub latency_ms: Vec<f64>,
    /// DONE -> tagged OK per client, ms.
    pub done_ms: Vec<f64>,
    pub keepalives: u64,
    /// The longest time any client waited between two keepalives.
    pub keepalive_gap_ms: f64,
}

/// The `q` quantile (0..=1) of `v`, nearest rank; None when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

impl Report {
    pub fn failed(&self) -> usize {
        self.failures.iter().map(|(_, n)| n).sum()
    }

    /// Every client idle and every expected EXISTS seen.
    pub fn complete(&self) -> bool {
        self.failed() == 0 && self.exists_received == self.exists_expected
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let l = &self.latency_ms;
        let d = &self.done_ms;
        let _ = writeln!(
            t,
            "{} clients to {} ({} users, {} client processes)",
            self.requested, self.target, self.users, self.workers
        );
        let rate = if self.connect_secs > 0.0 {
            self.idle as f64 / self.connect_secs
        } else {
            0.0
        };
        let _ = writeln!(
            t,
            "  connected and idle      {} of {} in {:.2} s ({rate:.0}/s)",
            self.idle, self.requested, self.connect_secs
        );
        let _ = writeln!(t, "  failed                  {}", self.failed());
        for (why, n) in &self.failures {
            let _ = writeln!(t, "    {n:>6}  {why}");
        }
        let _ = writeln!(t, "  deliveries              {}", self.deliveries);
        let _ = writeln!(
            t,
            "  EXISTS received         {} of {} expected",
            self.exists_received, self.exists_expected
        );
        let _ = writeln!(
            t,
            "  delivery -> EXISTS ms   min {}  median {}  p90 {}  p99 {}  max {}",
            ms(quantile(l, 0.0)),
            ms(quantile(l, 0.5)),
            ms(quantile(l, 0.9)),
            ms(quantile(l, 0.99)),
            ms(quantile(l, 1.0))
        );
        let _ = writeln!(
            t,
            "  DONE -> OK ms           median {}  p99 {}  ({} clients)",
            ms(quantile(d, 0.5)),
            ms(quantile(d, 0.99)),
            d.len()
        );
        let per = if self.idle > 0 {
            self.keepalives as f64 / self.idle as f64
        } else {
            0.0
        };
        let _ = writeln!(
            t,
            "  keepalives seen         {} ({per:.2} per client)",
            self.keepalives
        );
        t
    }

    pub fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".into(), |x| format!("{x:.3}"));
        let l = &self.latency_ms;
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(why, n)| format!("{{\"reason\":{},\"count\":{n}}}", json_str(why)))
            .collect();
        format!(
            "{{\"target\":{},\"requested\":{},\"users\":{},\"workers\":{},\"idle\":{},\
             \"failed\":{},\"failures\":[{}],\"connect_secs\":{:.3},\"deliveries\":{},\
             \"exists_expected\":{},\"exists_received\":{},\
             \"latency_ms\":{{\"samples\":{},\"min\":{},\"median\":{},\"p90\":{},\"p99\":{},\"max\":{}}},\
             \"done_ms\":{{\"samples\":{},\"median\":{},\"p99\":{}}},\"keepalives\":{}}}\n",
            json_str(&self.target),
            self.requested,
            self.users,
            self.workers,
            self.idle,
            self.failed(),
            failures.join(","),
            self.connect_secs,
            self.deliveries,
            self.exists_expected,
            self.exists_received,
            l.len(),
            num(quantile(l, 0.0)),
            num(quantile(l, 0.5)),
            num(quantile(l, 0.9)),
            num(quantile(l, 0.99)),
            num(quantile(l, 1.0)),
            self.done_ms.len(),
            num(quantile(&self.done_ms, 0.5)),
            num(quantile(&self.done_ms, 0.99)),
            self.keepalives
        )
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_json() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
        let r = Report {
            failures: vec![("LOGIN failed: \"x\"".into(), 2)],
            latency_ms: vec![1.0, 2.0],
            ..Report::default()
        };
        let j = r.json();
        assert!(
            j.contains("\"reason\":\"LOGIN failed: \\\"x\\\"\",\"count\":2"),
            "{j}"
        );
        assert!(j.contains("\"median\":1.000"), "{j}");
        assert!(!r.complete());
    }
}
