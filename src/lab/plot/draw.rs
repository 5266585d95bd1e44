//! Laying a chart out and drawing it: the plot area with its grid and
//! ticks, the series in their styles, the legend.

use super::axes::{self, Axis};
use super::style::{marker, style, Style, LINE_WIDTH, MARKER_LIMIT};
use super::svg::{text_width, Anchor, Doc, Stroke};
use super::{Chart, Series};

const PLOT_W: f64 = 560.0;
const PLOT_H: f64 = 340.0;
const FONT: f64 = 12.0;
const TITLE_FONT: f64 = 15.0;
const MARGIN: f64 = 16.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
const TICK: f64 = 5.0;
const MINOR_TICK: f64 = 3.0;
const LEGEND_PAD: f64 = 8.0;
const LEGEND_SAMPLE: f64 = 36.0;
const LEGEND_ROW: f64 = 20.0;
/// How far outside its axis a point may map (rounding) and still be drawn.
const SLACK: f64 = 1e-6;

/// The plot area in pixels and the axes that map data onto it.
struct Frame {
    x: Axis,
    y: Axis,
    left: f64,
    top: f64,
}

impl Frame {
    fn right(&self) -> f64 {
        self.left + PLOT_W
    }

    fn bottom(&self) -> f64 {
        self.top + PLOT_H
    }

    fn px(&self, x: f64) -> f64 {
        self.left + self.x.fraction(x) * PLOT_W
    }

    fn py(&self, y: f64) -> f64 {
        self.bottom() - self.y.fraction(y) * PLOT_H
    }

    /// The pixel position of a data point, or `None` when it cannot be
    /// drawn (not a number, x <= 0 on a log axis, outside the axes).
    fn place(&self, (x, y): (f64, f64)) -> Option<(f64, f64)> {
        if !usable(self.x.log, (x, y)) {
            return None;
        }
        let (fx, fy) = (self.x.fraction(x), self.y.fraction(y));
        let inside = |f: f64| f.is_finite() && (-SLACK..=1.0 + SLACK).contains(&f);
        (inside(fx) && inside(fy)).then(|| (self.px(x), self.py(y)))
    }
}

fn usable(x_log: bool, (x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && (!x_log || x > 0.0)
}

/// The axes covering every usable point, and whether there was any.
fn fit(chart: &Chart) -> (Axis, Axis, bool) {
    let pts = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|&p| usable(chart.x_log, p))
    };
    let span = |f: fn((f64, f64)) -> f64| {
        pts().map(f).fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })
    };
    let (Some((x0, x1)), Some((y0, y1))) = (span(|p| p.0), span(|p| p.1)) else {
        return (axes::unit(chart.x_log), axes::unit(false), false);
    };
    // Data too extreme to tick get the unit span, and their points are
    // then left out as outside it.
    let x = if chart.x_log {
        axes::log(x0, x1)
    } else {
        axes::linear(x0, x1)
    };
    let x = x.unwrap_or_else(|| axes::unit(chart.x_log));
    let y = axes::linear(y0, y1).unwrap_or_else(|| axes::unit(false));
    (x, y, true)
}

/// The series' drawable runs, in pixels: a point that cannot be drawn
/// ends one run, so no line bridges a gap in the data.
fn runs(frame: &Frame, s: &Series) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &p in &s.points {
        match frame.place(p) {
            Some(xy) => out.last_mut().map_or((), |run| run.push(xy)),
            None if out.last().is_some_and(|r| !r.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// A series placed on the frame, worked out once for its line, its
/// markers and its legend entry.
struct Placed {
    legend: String,
    runs: Vec<Vec<(f64, f64)>>,
    /// Points drawn, over all runs.
    drawn: usize,
}

impl Placed {
    fn new(frame: &Frame, s: &Series) -> Placed {
        let runs = runs(frame, s);
        let drawn = runs.iter().map(Vec::len).sum();
        let legend = if drawn == 0 {
            format!("{} (no data)", s.name)
        } else {
            s.name.clone()
        };
        Placed {
            legend,
            runs,
            drawn,
        }
    }
}

pub fn render(chart: &Chart) -> String {
    let (x, y, has_data) = fit(chart);
    let y_label_w = y
        .labels
        .iter()
        .map(|l| text_width(l, FONT))
        .fold(0.0, f64::max);
    let left = MARGIN + FONT * 1.5 + y_label_w + TICK + 6.0;
    let frame = Frame {
        x,
        y,
        left,
        top: TOP,
    };
    let placed: Vec<Placed> = chart
        .series
        .iter()
        .map(|s| Placed::new(&frame, s))
        .collect();
    let widest = placed
        .iter()
        .map(|p| text_width(&p.legend, FONT))
        .reduce(f64::max);
    let legend_w = match widest {
        Some(w) => LEGEND_PAD * 3.0 + LEGEND_SAMPLE + w,
        None => 0.0,
    };
    let legend_h = LEGEND_PAD * 2.0 + LEGEND_ROW * placed.len() as f64;
    // The last x label is centred on the plot's right edge.
    let x_overhang = frame
        .x
        .labels
        .last()
        .map_or(0.0, |l| text_width(l, FONT) / 2.0);
    let right = if legend_w > 0.0 {
        MARGIN + legend_w + MARGIN.max(x_overhang)
    } else {
        MARGIN.max(x_overhang + 4.0)
    };
    let width = (frame.right() + right).max(text_width(&chart.title, TITLE_FONT) + 2.0 * MARGIN);
    let height = (TOP + PLOT_H + BOTTOM).max(TOP + legend_h + MARGIN);

    let mut doc = Doc::new(width, height, &chart.title);
    doc.text(
        (frame.left + PLOT_W / 2.0, TOP / 2.0 + TITLE_FONT / 3.0),
        TITLE_FONT,
        Anchor::Middle,
        0.0,
        &chart.title,
    );
    draw_axes(&mut doc, &frame, chart);
    if !has_data {
        doc.text(
            (frame.left + PLOT_W / 2.0, frame.top + PLOT_H / 2.0),
            FONT,
            Anchor::Middle,
            0.0,
            "no data",
        );
    }
    for (i, p) in placed.iter().enumerate() {
        draw_series(&mut doc, p, &style(i));
    }
    if legend_w > 0.0 {
        let at = (frame.right() + MARGIN.max(x_overhang), TOP);
        draw_legend(&mut doc, &placed, at, (legend_w, legend_h));
    }
    doc.finish()
}

fn draw_axes(doc: &mut Doc, f: &Frame, chart: &Chart) {
    let grid = Stroke {
        colour: "#e3e3e3",
        width: 1.0,
        dash: None,
    };
    let ink = Stroke {
        colour: "#333333",
        width: 1.0,
        dash: None,
    };
    for &t in &f.x.ticks {
        doc.line((f.px(t), f.top), (f.px(t), f.bottom()), grid);
    }
    for &t in &f.y.ticks {
        doc.line((f.left, f.py(t)), (f.right(), f.py(t)), grid);
    }
    doc.rect((f.left, f.top), (PLOT_W, PLOT_H), "none", ink);
    for (&t, l) in f.x.ticks.iter().zip(&f.x.labels) {
        let x = f.px(t);
        doc.line((x, f.bottom()), (x, f.bottom() + TICK), ink);
        doc.text(
            (x, f.bottom() + TICK + FONT + 2.0),
            FONT,
            Anchor::Middle,
            0.0,
            l,
        );
    }
    for &t in &f.x.minor {
        doc.line(
            (f.px(t), f.bottom()),
            (f.px(t), f.bottom() + MINOR_TICK),
            ink,
        );
    }
    for (&t, l) in f.y.ticks.iter().zip(&f.y.labels) {
        let y = f.py(t);
        doc.line((f.left - TICK, y), (f.left, y), ink);
        doc.text(
            (f.left - TICK - 3.0, y + FONT / 3.0),
            FONT,
            Anchor::End,
            0.0,
            l,
        );
    }
    let x_label_y = f.bottom() + TICK + FONT * 2.0 + 14.0;
    let mid_x = f.left + PLOT_W / 2.0;
    let x_label = axis_label(&chart.x_label, chart.x_log);
    doc.text((mid_x, x_label_y), FONT, Anchor::Middle, 0.0, &x_label);
    let y_label_pos = (MARGIN + FONT, f.top + PLOT_H / 2.0);
    doc.text(y_label_pos, FONT, Anchor::Middle, -90.0, &chart.y_label);
}

/// Says so when the scale is logarithmic, since the ticks alone are easy
/// to misread as evenly spaced values.
fn axis_label(label: &str, log: bool) -> String {
    if log {
        format!("{label}, log scale")
    } else {
        label.to_string()
    }
}

fn draw_series(doc: &mut Doc, p: &Placed, st: &Style) {
    let line = Stroke {
        colour: st.colour,
        width: LINE_WIDTH,
        dash: st.dash,
    };
    let all_markers = p.drawn <= MARKER_LIMIT;
    for run in &p.runs {
        if run.len() > 1 {
            doc.polyline(run, line);
        }
        // A lone point has no line, so it always gets its marker.
        if all_markers || run.len() == 1 {
            for &p in run {
                marker(doc, st, p);
            }
        }
    }
}

fn draw_legend(doc: &mut Doc, placed: &[Placed], (lx, ly): (f64, f64), size: (f64, f64)) {
    let frame = Stroke {
        colour: "#999999",
        width: 1.0,
        dash: None,
    };
    doc.rect((lx, ly), size, "white", frame);
    for (i, p) in placed.iter().enumerate() {
        let st = style(i);
        let y = ly + LEGEND_PAD + LEGEND_ROW * (i as f64 + 0.5);
        let x0 = lx + LEGEND_PAD;
        let line = Stroke {
            colour: st.colour,
            width: LINE_WIDTH,
            dash: st.dash,
        };
        doc.line((x0, y), (x0 + LEGEND_SAMPLE, y), line);
        if (1..=MARKER_LIMIT).contains(&p.drawn) {
            marker(doc, &st, (x0 + LEGEND_SAMPLE / 2.0, y));
        }
        let text_x = x0 + LEGEND_SAMPLE + LEGEND_PAD;
        doc.text(
            (text_x, y + FONT / 3.0),
            FONT,
            Anchor::Start,
            0.0,
            &p.legend,
        );
    }
}
