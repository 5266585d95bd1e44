//! Hand-written SVG charts for the bench: lines with points (memory
//! against parked connections) and CDFs (latency), several series each,
//! with a legend. The lab shares its crate, and so its run-time
//! dependencies, with the daemons, hence no plotting library.
//!
//! - [`Chart::svg`] draws a chart as a standalone SVG 1.1 document.
//! - [`cdf`] turns samples into the points of a CDF.
//! - `axes.rs`: nice ticks; `svg.rs`: the writer and its escaping;
//!   `draw.rs`: layout and the legend; `style.rs`: how series look.
//!
//! The output is a pure function of the chart (no clock, no hashing), so
//! two runs on the same figures give the same file.

mod axes;
mod cdf;
mod draw;
mod style;
mod svg;
#[cfg(test)]
mod tests;

pub use cdf::cdf;

/// One line of a chart: its legend entry and its (x, y) points, drawn in
/// the order given. A point with a NaN or infinite coordinate (or x <= 0
/// on a log axis) is left out and breaks the line there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// A chart: its texts (put the units in the axis labels, e.g.
/// "latency (ms)"), whether x is logarithmic, and its series. The axes
/// cover every drawable point; y is always linear.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub series: Vec<Series>,
}

impl Chart {
    /// The chart as an SVG 1.1 document.
    pub fn svg(&self) -> String {
        draw::render(self)
    }

    /// A latency CDF: one series per (name, samples in ms), x in ms
    /// (log scale when `x_log`), y the fraction of samples at or below x.
    pub fn latency_cdf(title: &str, x_log: bool, series: &[(&str, &[f64])]) -> Chart {
        Chart {
            title: title.into(),
            x_label: "latency (ms)".into(),
            y_label: "fraction of samples ≤ x".into(),
            x_log,
            series: series
                .iter()
                .map(|(name, samples)| Series::new(*name, cdf(samples)))
                .collect(),
        }
    }
}
