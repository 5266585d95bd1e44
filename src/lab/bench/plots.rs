//! The bench's pictures: server-side memory against connections for
//! every setup, and latency CDFs (samples of all rounds pooled).

use std::path::Path;

use super::figures::Figures;
use crate::lab::plot::{cdf, Chart, Series};

fn memory_chart(setups: &[Vec<Figures>]) -> Chart {
    let mut series = Vec::new();
    let mb = |c: &[(f64, f64)]| c.iter().map(|&(x, y)| (x, y / 1e6)).collect::<Vec<_>>();
    for rounds in setups {
        // The median round by its slope would be fairer to plot than the
        // first; all rounds are drawn instead, so their spread shows.
        for (r, f) in rounds.iter().enumerate() {
            let tag = if rounds.len() > 1 {
                format!(" (round {})", r + 1)
            } else {
                String::new()
            };
            if f.memory_curve.len() > 1 {
                series.push(Series::new(format!("{}{tag}", f.name), mb(&f.memory_curve)));
            }
        }
    }
    // Holding clients without hibernation is the same for both Dovecot
    // setups, and the reference server's for ours: one line each.
    for rounds in setups {
        if let Some(f) = rounds.first().filter(|f| f.memory_curve_unparked.len() > 1) {
            let name = if f.name.starts_with("imap-idle (native)") {
                "reference mail process, no parking".to_owned()
            } else if f.name.starts_with("Dovecot") {
                "Dovecot, no hibernation".to_owned()
            } else {
                continue;
            };
            series.push(Series::new(name, mb(&f.memory_curve_unparked)));
        }
    }
    Chart {
        title: "Whole-machine memory, server side, against idle connections".into(),
        x_label: "idle connections held".into(),
        y_label: "memory above the first size (MB)".into(),
        x_log: false,
        series,
    }
}

fn pooled(rounds: &[Figures], get: fn(&Figures) -> &Vec<f64>) -> Vec<f64> {
    rounds.iter().flat_map(|f| get(f).iter().copied()).collect()
}

/// Write the plots into `dir`; the file names written.
pub fn write(dir: &Path, setups: &[Vec<Figures>]) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    type Get = fn(&Figures) -> &Vec<f64>;
    let cdfs: [(&str, &str, Get); 4] = [
        ("exists-cdf.svg", "Delivery -> EXISTS at the client", |f| {
            &f.exists_ms
        }),
        ("done-cdf.svg", "DONE -> OK, paced and under load", |f| {
            &f.done_ms
        }),
        (
            "mass-wake-cdf.svg",
            "Mass wake: one delivery, K watchers",
            |f| &f.mass_ms,
        ),
        (
            "daemon-wake-cdf.svg",
            "Wake inside the daemon (paced, and mass)",
            |f| &f.wake_ms,
        ),
    ];
    let mut charts = vec![("memory.svg".to_owned(), memory_chart(setups))];
    for (file, title, get) in cdfs {
        let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
        for rounds in setups {
            let name = rounds.first().map_or(String::new(), |f| f.name.clone());
            // The second figure of the same kind, where there is one.
            let extra: Option<(&str, &str, Get)> = match file {
                "done-cdf.svg" => Some(("paced", "under load", |f| &f.done_load_ms)),
                "daemon-wake-cdf.svg" => Some(("paced", "mass wake", |f| &f.wake_mass_ms)),
                _ => None,
            };
            match extra {
                Some((first, what, get2)) => {
                    samples.push((format!("{name}, {first}"), pooled(rounds, get)));
                    samples.push((format!("{name}, {what}"), pooled(rounds, get2)));
                }
                None => samples.push((name.clone(), pooled(rounds, get))),
            }
        }
        let series: Vec<Series> = samples
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| Series::new(n.clone(), cdf(v)))
            .collect();
        let chart = Chart {
            title: title.into(),
            x_label: "milliseconds".into(),
            y_label: "fraction of clients".into(),
            x_log: true,
            series,
        };
        charts.push((file.to_owned(), chart));
    }
    let mut written = Vec::new();
    for (file, chart) in charts {
        let path = dir.join(&file);
        std::fs::write(&path, chart.svg()).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
