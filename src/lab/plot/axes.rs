//! Axis ranges and tick values: "nice" 1-2-5 steps on linear axes,
//! decades on log axes, and the tick labels.

/// How many labelled ticks a linear axis aims for; the 1-2-5 rounding
/// gives between about 4 and 11.
const LINEAR_TARGET: f64 = 5.0;
/// At most this many labelled decades on a log axis; wider spans label
/// every second (third, ...) decade.
const MAX_DECADES: i32 = 8;
/// Up to this many decades a log axis also gets minor ticks at 2..9, and
/// up to `LABEL_25_DECADES` labels at 2 and 5 as well: a span of one or
/// two decades has too few decade ticks to read values off.
const MINOR_DECADES: i32 = 4;
const LABEL_25_DECADES: i32 = 2;
/// Slack for floating-point error when a bound sits exactly on a tick.
const EPS: f64 = 1e-9;

/// One axis: the span it covers and its ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
    /// Labelled ticks, ascending, from `lo` to `hi`.
    pub ticks: Vec<f64>,
    /// The label of each tick.
    pub labels: Vec<String>,
    /// Unlabelled ticks between the labelled ones.
    pub minor: Vec<f64>,
}

impl Axis {
    /// Where `v` lies along the axis, 0 at `lo` and 1 at `hi`.
    pub fn fraction(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

/// A 1, 2 or 5 times a power of ten, near `span / target`: (that
/// multiplier, that power); `None` when that is no normal f64 (zero,
/// subnormal, overflowing).
fn nice_step(span: f64, target: f64) -> Option<(f64, i32)> {
    let raw = span / target;
    if !raw.is_normal() {
        return None;
    }
    let mut exp = raw.log10().floor() as i32;
    let norm = raw / pow10(exp);
    let mult = if norm <= 1.0 + EPS {
        1.0
    } else if norm <= 2.0 + EPS {
        2.0
    } else if norm <= 5.0 + EPS {
        5.0
    } else {
        exp += 1;
        1.0
    };
    scaled(1.0, mult, exp).is_normal().then_some((mult, exp))
}

/// 10^e, as exact as f64 allows: 10^-3 as 1/1000 rather than
/// 0.1*0.1*0.1, so ticks land on the values their labels say.
fn pow10(e: i32) -> f64 {
    if e >= 0 {
        10f64.powi(e)
    } else {
        1.0 / 10f64.powi(-e)
    }
}

/// `k * mult * 10^exp` with one rounding, for the same reason.
fn scaled(k: f64, mult: f64, exp: i32) -> f64 {
    if exp >= 0 {
        k * mult * pow10(exp)
    } else {
        k * mult / pow10(-exp)
    }
}

/// A linear axis covering the data from `lo` to `hi` (finite, lo <= hi).
/// The axis reaches zero when the data start less than half-way from
/// zero to their far end, so amounts (bytes, connections, fractions) are
/// not exaggerated, while data far from zero keep their detail. A single
/// value is shown from zero to it. `None` when f64 cannot tick the span
/// (non-finite bounds, spans near the limits of the type).
pub fn linear(lo: f64, hi: f64) -> Option<Axis> {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return None;
    }
    let (mut lo, mut hi) = (lo, hi);
    if lo == hi {
        match lo.partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) => lo = 0.0,
            Some(std::cmp::Ordering::Less) => hi = 0.0,
            _ => hi = 1.0,
        }
    }
    if lo > 0.0 && lo <= hi / 2.0 {
        lo = 0.0;
    }
    if hi < 0.0 && hi >= lo / 2.0 {
        hi = 0.0;
    }
    // Halved so that data near f64::MAX do not overflow the span.
    let (mult, exp) = nice_step(hi / 2.0 - lo / 2.0, LINEAR_TARGET / 2.0)?;
    let step = scaled(1.0, mult, exp);
    let first = (lo / step + EPS).floor();
    let last = (hi / step - EPS).ceil();
    let (from, to) = (scaled(first, mult, exp), scaled(last, mult, exp));
    if !(from.is_finite() && to.is_finite() && from < to) {
        return None;
    }
    let decimals = exp.min(0).unsigned_abs() as usize;
    let mut ticks = Vec::new();
    let mut k = first;
    while k <= last {
        ticks.push(scaled(k, mult, exp));
        k += 1.0;
    }
    let labels = ticks.iter().map(|&t| label(t, decimals)).collect();
    Some(Axis {
        lo: from,
        hi: to,
        log: false,
        ticks,
        labels,
        minor: Vec::new(),
    })
}

/// A log axis covering the data from `lo` to `hi` (finite, 0 < lo <= hi),
/// from the decade at or below `lo` to the one at or above `hi`. `None`
/// when those decades are beyond f64 (below 1e-308, above 1e308).
pub fn log(lo: f64, hi: f64) -> Option<Axis> {
    if !(lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi) {
        return None;
    }
    let first = (lo.log10() + EPS).floor() as i32;
    let mut last = (hi.log10() - EPS).ceil() as i32;
    if last <= first {
        last = first + 1;
    }
    let decades = last - first;
    let stride = (decades + MAX_DECADES - 1) / MAX_DECADES;
    // Round the top up to a labelled decade so the axis ends on a label.
    let last = first + stride * ((decades + stride - 1) / stride);
    let mut ticks = Vec::new();
    let mut labels = Vec::new();
    let mut minor = Vec::new();
    for e in (first..=last).step_by(stride as usize) {
        let decimals = e.min(0).unsigned_abs() as usize;
        ticks.push(pow10(e));
        labels.push(label(pow10(e), decimals));
        if e == last || decades > MINOR_DECADES {
            continue;
        }
        for m in 2..=9 {
            let v = scaled(f64::from(m), 1.0, e);
            if decades <= LABEL_25_DECADES && (m == 2 || m == 5) {
                ticks.push(v);
                labels.push(label(v, decimals));
            } else {
                minor.push(v);
            }
        }
    }
    let (from, to) = (pow10(first), pow10(last));
    (from.is_normal() && to.is_finite()).then_some(Axis {
        lo: from,
        hi: to,
        log: true,
        ticks,
        labels,
        minor,
    })
}

/// The axis of a chart without data: 0..1, or 1..10 when logarithmic.
pub fn unit(log: bool) -> Axis {
    let axis = if log {
        self::log(1.0, 10.0)
    } else {
        linear(0.0, 1.0)
    };
    axis.expect("fixed spans in the middle of f64 always have ticks")
}

/// A tick label with `decimals` places, thousands separated from 1,000
/// up, in e-notation where plain digits would run too long.
pub fn label(v: f64, decimals: usize) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-6..1e9).contains(&a) {
        return format!("{v:e}");
    }
    let s = format!("{v:.decimals$}");
    let s = if s.trim_start_matches(['-', '0', '.']).is_empty() {
        // "-0", "-0.00": rounding a tiny negative gave a signed zero.
        s.trim_start_matches('-').to_string()
    } else {
        s
    };
    if a < 1000.0 {
        return s;
    }
    let (sign, rest) = s.split_at(usize::from(s.starts_with('-')));
    let (int, frac) = rest.split_at(rest.find('.').unwrap_or(rest.len()));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(lo: f64, hi: f64) -> Axis {
        linear(lo, hi).unwrap_or_else(|| panic!("no axis for {lo}..{hi}"))
    }

    fn lg(lo: f64, hi: f64) -> Axis {
        log(lo, hi).unwrap_or_else(|| panic!("no log axis for {lo}..{hi}"))
    }

    #[test]
    fn spans_beyond_f64_have_no_axis() {
        assert_eq!(linear(0.0, f64::MAX), None, "the top tick would overflow");
        assert_eq!(linear(0.0, 1e-310), None, "subnormal step");
        assert_eq!(linear(f64::NAN, 1.0), None);
        assert_eq!(linear(0.0, f64::INFINITY), None);
        assert_eq!(linear(2.0, 1.0), None);
        assert_eq!(log(0.0, 1.0), None);
        assert_eq!(log(1.0, f64::MAX), None, "1e309 is no f64");
        assert_eq!(log(f64::MIN_POSITIVE / 1e10, 1.0), None, "subnormal decade");
        assert!(linear(-1e307, 1e307).is_some());
        assert!(log(1e-300, 1e300).is_some());
        assert_eq!(unit(true).labels, ["1", "2", "5", "10"]);
    }

    fn ticks(a: &Axis) -> Vec<String> {
        a.labels.clone()
    }

    #[test]
    fn linear_ticks_step_by_one_two_five() {
        assert_eq!(
            ticks(&lin(0.0, 1.0)),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"].map(String::from)
        );
        assert_eq!(
            ticks(&lin(0.0, 100.0)),
            ["0", "20", "40", "60", "80", "100"].map(String::from)
        );
        assert_eq!(
            ticks(&lin(3.0, 97.0)).first().map(String::as_str),
            Some("0")
        );
        let a = lin(0.0, 19_000.0);
        assert_eq!(
            ticks(&a),
            ["0", "5,000", "10,000", "15,000", "20,000"].map(String::from)
        );
        assert_eq!((a.lo, a.hi), (0.0, 20_000.0));
        let a = lin(1003.0, 1047.0);
        assert_eq!(
            ticks(&a),
            ["1,000", "1,010", "1,020", "1,030", "1,040", "1,050"].map(String::from)
        );
        let a = lin(0.0013, 0.0042);
        assert_eq!(a.labels.first().map(String::as_str), Some("0.000"));
        assert_eq!(a.labels.last().map(String::as_str), Some("0.005"));
        let a = lin(-7.0, 3.0);
        assert_eq!(
            ticks(&a),
            ["-8", "-6", "-4", "-2", "0", "2", "4"].map(String::from)
        );
    }

    #[test]
    fn every_linear_step_is_one_two_or_five_and_covers_the_data() {
        let ranges = [
            (0.0, 0.37),
            (2.0, 3.0),
            (0.0, 7.7e6),
            (-1e-4, 1e-4),
            (12.5, 12.6),
            (0.0, 1e300),
        ];
        for (lo, hi) in ranges {
            let a = lin(lo, hi);
            assert!(a.lo <= lo && a.hi >= hi, "{lo}..{hi}: {a:?}");
            assert!((4..=11).contains(&a.ticks.len()), "{lo}..{hi}: {a:?}");
            let step = a.ticks[1] - a.ticks[0];
            let norm = step / pow10(step.log10().floor() as i32);
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (norm - m).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
            assert!(a.ticks.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn single_values_get_a_span() {
        assert_eq!((lin(5.0, 5.0).lo, lin(5.0, 5.0).hi), (0.0, 5.0));
        assert_eq!((lin(0.0, 0.0).lo, lin(0.0, 0.0).hi), (0.0, 1.0));
        assert_eq!((lin(-3.0, -3.0).lo, lin(-3.0, -3.0).hi), (-3.0, 0.0));
        let a = lg(5.0, 5.0);
        assert_eq!((a.lo, a.hi), (1.0, 10.0));
    }

    #[test]
    fn log_ticks_are_decades() {
        let a = lg(0.17, 2365.5);
        assert_eq!(
            ticks(&a),
            ["0.1", "1", "10", "100", "1,000", "10,000"].map(String::from)
        );
        assert_eq!((a.lo, a.hi), (0.1, 10_000.0));
        assert!(a.minor.is_empty(), "five decades: no minor ticks");
        let a = lg(1.0, 1000.0);
        assert_eq!(ticks(&a), ["1", "10", "100", "1,000"].map(String::from));
        assert_eq!(a.minor.len(), 3 * 8);
        // One or two decades: 2 and 5 are labelled too.
        let a = lg(2.9, 9.5);
        assert_eq!(ticks(&a), ["1", "2", "5", "10"].map(String::from));
        assert_eq!(a.minor, [3.0, 4.0, 6.0, 7.0, 8.0, 9.0]);
        // Wide spans label every other decade, and end on a label.
        let a = lg(1e-3, 1e12);
        assert_eq!(a.ticks.len(), 9);
        assert_eq!((a.lo, a.hi), (1e-3, 1e13));
        assert_eq!(a.labels[0], "0.001");
        assert_eq!(a.labels.last().map(String::as_str), Some("1e13"));
    }

    #[test]
    fn fractions_place_values_on_the_axis() {
        let a = lg(1.0, 100.0);
        assert!((a.fraction(10.0) - 0.5).abs() < 1e-12);
        let a = lin(0.0, 10.0);
        assert!((a.fraction(2.5) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn labels() {
        assert_eq!(label(1234567.0, 0), "1,234,567");
        assert_eq!(label(-25000.5, 1), "-25,000.5");
        assert_eq!(label(999.0, 0), "999");
        assert_eq!(label(1000.0, 0), "1,000");
        assert_eq!(label(-0.0001, 2), "0.00");
        assert_eq!(label(2e9, 0), "2e9");
        assert_eq!(label(0.0, 3), "0.000");
    }
}
