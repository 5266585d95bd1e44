//! The SVG text writer: XML escaping, coordinate formatting, and the few
//! elements the charts are drawn with.
//!
//! Only text from the caller (titles, labels, series names) goes through
//! [`escape`], always into element content; attribute values are built
//! here from numbers and the fixed palette, so they never carry input.

use std::fmt::Write as _;

/// Average glyph width of the sans-serif font as a fraction of its size;
/// only used to reserve room for text, so an estimate is enough.
const GLYPH_WIDTH: f64 = 0.6;

/// `s` made safe for XML element content and attribute values. Characters
/// XML 1.0 does not allow at all (most C0 controls) become U+FFFD, because
/// no escape can carry them and a parser rejects the whole file.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate or length: one decimal (a tenth of a pixel is finer than
/// any screen), no trailing ".0", never "-0". Callers only pass finite
/// values; a non-finite one would make the file invalid, so it is written
/// as 0 rather than as "NaN".
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        debug_assert!(false, "non-finite coordinate {v}");
        return "0".into();
    }
    let r = (v * 10.0).round() / 10.0;
    let s = format!("{r:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// How wide `text` is likely to be at font size `size`, in pixels.
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * GLYPH_WIDTH
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// How a line is stroked.
#[derive(Clone, Copy, Debug)]
pub struct Stroke<'a> {
    pub colour: &'a str,
    pub width: f64,
    /// An SVG `stroke-dasharray`, or `None` for solid.
    pub dash: Option<&'a str>,
}

/// An SVG document being written.
pub struct Doc {
    out: String,
}

impl Doc {
    /// A document `width` x `height` pixels named `title` (for viewers
    /// and screen readers), with a white background so it reads the same
    /// on dark viewers.
    pub fn new(width: f64, height: f64, title: &str) -> Doc {
        let (w, h) = (num(width), num(height));
        let mut out = String::new();
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n");
        let _ = writeln!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" \
             width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             font-family=\"sans-serif\">"
        );
        let _ = writeln!(out, "<title>{}</title>", escape(title));
        let _ = writeln!(
            out,
            "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>"
        );
        Doc { out }
    }

    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), s: Stroke) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"{}/>",
            num(x1),
            num(y1),
            num(x2),
            num(y2),
            stroke_attrs(s)
        );
    }

    /// A polyline through `points`, skipping a point that lands on the
    /// same tenth of a pixel as the one before (a CDF of many thousand
    /// samples would otherwise repeat itself for nothing).
    pub fn polyline(&mut self, points: &[(f64, f64)], s: Stroke) {
        let mut coords: Vec<String> = Vec::with_capacity(points.len());
        for &(x, y) in points {
            let c = format!("{},{}", num(x), num(y));
            if coords.last() != Some(&c) {
                coords.push(c);
            }
        }
        let _ = writeln!(
            self.out,
            "<polyline points=\"{}\" fill=\"none\" stroke-linejoin=\"round\"{}/>",
            coords.join(" "),
            stroke_attrs(s)
        );
    }

    pub fn rect(&mut self, (x, y): (f64, f64), (w, h): (f64, f64), fill: &str, s: Stroke) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"{}/>",
            num(x),
            num(y),
            num(w),
            num(h),
            stroke_attrs(s)
        );
    }

    pub fn circle(&mut self, (x, y): (f64, f64), r: f64, fill: &str, s: Stroke) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{fill}\"{}/>",
            num(x),
            num(y),
            num(r),
            stroke_attrs(s)
        );
    }

    /// A closed shape through `points`.
    pub fn polygon(&mut self, points: &[(f64, f64)], fill: &str, s: Stroke) {
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{},{}", num(x), num(y)))
            .collect();
        let _ = writeln!(
            self.out,
            "<polygon points=\"{}\" fill=\"{fill}\"{}/>",
            coords.join(" "),
            stroke_attrs(s)
        );
    }

    /// `text` at (x, y) (y is the baseline), turned by `rotate` degrees
    /// about that point when it is not 0.
    pub fn text(&mut self, (x, y): (f64, f64), size: f64, anchor: Anchor, rotate: f64, text: &str) {
        let (x, y) = (num(x), num(y));
        let turn = if rotate == 0.0 {
            String::new()
        } else {
            format!(" transform=\"rotate({} {x} {y})\"", num(rotate))
        };
        let _ = writeln!(
            self.out,
            "<text x=\"{x}\" y=\"{y}\" font-size=\"{}\" text-anchor=\"{}\"{turn}>{}</text>",
            num(size),
            anchor.as_str(),
            escape(text)
        );
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

fn stroke_attrs(s: Stroke) -> String {
    let mut a = format!(" stroke=\"{}\" stroke-width=\"{}\"", s.colour, num(s.width));
    if let Some(d) = s.dash {
        let _ = write!(a, " stroke-dasharray=\"{d}\"");
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_forbidden_characters() {
        assert_eq!(
            escape("a<b & c>\"d\" 'e'"),
            "a&lt;b &amp; c&gt;&quot;d&quot; &apos;e&apos;"
        );
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("x\u{0}y\u{1b}z"), "x\u{FFFD}y\u{FFFD}z");
        assert_eq!(escape("tab\there µs ≤"), "tab\there µs ≤");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn numbers_are_short_and_never_negative_zero() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(12.36), "12.4");
        assert_eq!(num(-0.01), "0");
        assert_eq!(num(-3.25), "-3.3");
        assert_eq!(num(1e7), "10000000");
    }

    #[test]
    fn polyline_drops_repeated_pixels() {
        let mut d = Doc::new(10.0, 10.0, "t");
        let s = Stroke {
            colour: "black",
            width: 1.0,
            dash: None,
        };
        d.polyline(&[(1.0, 1.0), (1.01, 1.02), (2.0, 2.0), (1.0, 1.0)], s);
        let out = d.finish();
        assert!(out.contains("points=\"1,1 2,2 1,1\""), "{out}");
    }

    #[test]
    fn text_is_escaped_and_rotated() {
        let mut d = Doc::new(10.0, 10.0, "t");
        d.text((5.0, 6.0), 12.0, Anchor::End, -90.0, "<y> & co");
        let out = d.finish();
        assert!(
            out.contains(
                "<text x=\"5\" y=\"6\" font-size=\"12\" text-anchor=\"end\" \
                 transform=\"rotate(-90 5 6)\">&lt;y&gt; &amp; co</text>"
            ),
            "{out}"
        );
    }
}
