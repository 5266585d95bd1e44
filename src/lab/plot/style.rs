//! How series look: colour, dash pattern and marker by position, and the
//! markers' shapes.

use super::svg::{Doc, Stroke};

pub const LINE_WIDTH: f64 = 2.0;
/// A series with more points than this is drawn as a bare line: markers
/// on a CDF of thousands of samples would merge into a thick smear.
pub const MARKER_LIMIT: usize = 40;
const MARKER_R: f64 = 3.5;

/// Okabe-Ito colours, which stay apart under the common colour-vision
/// deficiencies; their yellow is left out as too pale on white.
const COLOURS: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];
/// Dash patterns and markers keep series apart in greyscale. The three
/// cycle lengths (7, 5, 4) are pairwise coprime, so the first 140 series each
/// get their own combination.
const DASHES: [Option<&str>; 5] = [
    None,
    Some("8 4"),
    Some("2 3"),
    Some("10 3 2 3"),
    Some("4 2 1 2 1 2"),
];
const MARKERS: [Marker; 4] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
];

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    /// Hollow, so it differs from the circle in grey as well as in shape.
    Square,
    Triangle,
    /// Hollow.
    Diamond,
}

pub struct Style {
    pub colour: &'static str,
    pub dash: Option<&'static str>,
    marker: Marker,
}

/// The style of the `i`th series.
pub fn style(i: usize) -> Style {
    Style {
        colour: COLOURS[i % COLOURS.len()],
        dash: DASHES[i % DASHES.len()],
        marker: MARKERS[i % MARKERS.len()],
    }
}

/// The series' marker, centred on (x, y).
pub fn marker(doc: &mut Doc, st: &Style, (x, y): (f64, f64)) {
    let edge = Stroke {
        colour: st.colour,
        width: 1.5,
        dash: None,
    };
    let r = MARKER_R;
    match st.marker {
        Marker::Circle => doc.circle((x, y), r, st.colour, edge),
        Marker::Square => doc.rect((x - r, y - r), (2.0 * r, 2.0 * r), "white", edge),
        Marker::Triangle => {
            let pts = [(x, y - r * 1.3), (x - r * 1.2, y + r), (x + r * 1.2, y + r)];
            doc.polygon(&pts, st.colour, edge)
        }
        Marker::Diamond => {
            let d = r * 1.35;
            let pts = [(x, y - d), (x + d, y), (x, y + d), (x - d, y)];
            doc.polygon(&pts, "white", edge)
        }
    }
}
