//! Whole charts: they parse as XML, carry their texts escaped, hold no
//! NaN or out-of-frame coordinate, and cope with empty, single-point and
//! non-finite data. Also writes example charts (into `PLOT_EXAMPLES_DIR`
//! when that is set, to look at; into a temporary directory otherwise).

use super::*;

const SVG_NS: &str = "http://www.w3.org/2000/svg";

/// Memory against parked connections for three setups, shaped like the
/// bench's figures (a base plus a per-connection slope); illustrative,
/// not measured.
fn memory_chart() -> Chart {
    let setup = |name: &str, base_kb: f64, bytes_per_conn: f64, max: u32| {
        let points = (0..=5)
            .map(|i| f64::from(i * max / 5))
            .map(|n| (n, (base_kb * 1000.0 + n * bytes_per_conn) / 1e6))
            .collect();
        Series::new(name, points)
    };
    Chart {
        title: "PSS of the hibernation process (illustrative data)".into(),
        x_label: "parked connections".into(),
        y_label: "PSS (MB)".into(),
        x_log: false,
        series: vec![
            setup("imap-idle (native)", 1000.0, 237.0, 19_000),
            setup("Dovecot imap-hibernate", 1100.0, 6663.0, 9_000),
            setup("imap-idle --dovecot", 1050.0, 511.0, 9_000),
        ],
    }
}

/// Deterministic pseudo-random latencies, ms: a log-normal-ish body
/// around `median` with a tail.
fn latencies(median: f64, n: u32, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            median * (3.0 * (u - 0.5)).exp() * (1.0 + 60.0 * (u - 0.95).max(0.0))
        })
        .collect()
}

fn cdf_chart(x_log: bool) -> Chart {
    let a = latencies(2.9, 1900, 1);
    let b = latencies(1261.3, 900, 2);
    let c = latencies(1105.1, 900, 3);
    Chart::latency_cdf(
        "delivery → EXISTS at the client (illustrative data)",
        x_log,
        &[
            ("imap-idle (native)", &a),
            ("Dovecot imap-hibernate", &b),
            ("imap-idle --dovecot", &c),
        ],
    )
}

/// Parses `svg`, checks what every chart must satisfy, and returns the
/// texts of its `<text>` elements.
fn check(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some(SVG_NS));
    assert_eq!(root.attribute("version"), Some("1.1"));
    let dim = |a: &str| -> f64 { root.attribute(a).expect(a).parse().expect(a) };
    let (w, h) = (dim("width"), dim("height"));
    assert_eq!(
        root.attribute("viewBox"),
        Some(format!("0 0 {w} {h}").as_str())
    );
    assert!(!svg.contains("NaN"), "NaN in output:\n{svg}");
    for node in root.descendants().filter(|n| n.is_element()) {
        for attr in node.attributes() {
            let v = attr.value().to_ascii_lowercase();
            assert!(
                !v.contains("nan") && !v.contains("inf"),
                "{}={v:?}",
                attr.name()
            );
            let (limit, values): (f64, Vec<&str>) = match attr.name() {
                "x" | "x1" | "x2" | "cx" | "width" => (w, vec![attr.value()]),
                "y" | "y1" | "y2" | "cy" | "height" => (h, vec![attr.value()]),
                "points" => (w.max(h), attr.value().split([' ', ',']).collect()),
                _ => continue,
            };
            for v in values {
                let v: f64 = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{} = {v:?}", attr.name()));
                assert!(
                    (0.0..=limit).contains(&v),
                    "{} = {v} outside 0..{limit}",
                    attr.name()
                );
            }
        }
    }
    root.descendants()
        .filter(|n| n.has_tag_name((SVG_NS, "text")))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}

fn count(svg: &str, element: &str) -> usize {
    svg.matches(&format!("<{element} ")).count()
}

#[test]
fn writes_example_charts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("PLOT_EXAMPLES_DIR").map_or(tmp.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&dir).expect("create dir");
    let charts = [
        ("memory.svg", memory_chart()),
        ("latency-cdf-log.svg", cdf_chart(true)),
        ("latency-cdf.svg", cdf_chart(false)),
    ];
    for (file, chart) in &charts {
        let path = dir.join(file);
        std::fs::write(&path, chart.svg()).expect("write");
        let svg = std::fs::read_to_string(&path).expect("read back");
        let texts = check(&svg);
        for t in [&chart.title, &chart.y_label] {
            assert!(texts.contains(t), "{file}: no {t:?} in {texts:?}");
        }
        assert!(
            texts.iter().any(|t| t.starts_with(&chart.x_label)),
            "{file}"
        );
        for s in &chart.series {
            assert!(
                texts.contains(&s.name),
                "{file}: no legend entry {:?}",
                s.name
            );
        }
        assert_eq!(count(&svg, "polyline"), chart.series.len(), "{file}");
    }
    let memory = charts[0].1.svg();
    // A marker on each of the 6 points of 3 series and in each legend
    // entry; the other rects are the background, plot frame, legend box.
    let shapes = count(&memory, "circle") + count(&memory, "rect") + count(&memory, "polygon");
    assert_eq!(shapes, 3 * (6 + 1) + 3);
    let log = charts[1].1.svg();
    let texts = check(&log);
    for decade in ["0.1", "1", "10", "100", "1,000", "10,000"] {
        assert!(
            texts.iter().any(|t| t == decade),
            "no decade {decade} in {texts:?}"
        );
    }
    assert!(texts.contains(&"latency (ms), log scale".to_string()));
    // The CDFs hold thousands of points: bare lines, no markers.
    assert_eq!(count(&log, "circle"), 0);
}

#[test]
fn series_differ_in_colour_and_dash() {
    let series = (0..5)
        .map(|i| {
            Series::new(
                format!("s{i}"),
                vec![(0.0, f64::from(i)), (1.0, f64::from(i) + 1.0)],
            )
        })
        .collect();
    let svg = Chart {
        series,
        ..Chart::default()
    }
    .svg();
    check(&svg);
    let lines: Vec<&str> = svg.lines().filter(|l| l.starts_with("<polyline")).collect();
    assert_eq!(lines.len(), 5);
    let attr = |l: &str, name: &str| {
        l.split(&format!(" {name}=\""))
            .nth(1)
            .map(|r| r.split('"').next().unwrap_or("").to_string())
    };
    let colours: std::collections::BTreeSet<_> = lines.iter().map(|l| attr(l, "stroke")).collect();
    let dashes: std::collections::BTreeSet<_> =
        lines.iter().map(|l| attr(l, "stroke-dasharray")).collect();
    assert_eq!(colours.len(), 5, "{svg}");
    assert_eq!(dashes.len(), 5, "{svg}");
}

#[test]
fn every_text_is_escaped() {
    let nasty = "<b>\"A&B\"</b> 'q' ]]> \u{1}";
    let chart = Chart {
        title: nasty.into(),
        x_label: format!("x {nasty}"),
        y_label: format!("y {nasty}"),
        x_log: false,
        series: vec![Series::new(nasty, vec![(1.0, 2.0), (2.0, 3.0)])],
    };
    let svg = chart.svg();
    let texts = check(&svg);
    let shown = nasty.replace('\u{1}', "\u{FFFD}");
    assert!(texts.contains(&shown), "{texts:?}");
    assert!(texts.contains(&format!("x {shown}")));
    assert!(texts.contains(&format!("y {shown}")));
    assert!(!svg.contains("<b>"));
}

#[test]
fn non_finite_points_are_skipped_and_break_the_line() {
    let chart = Chart {
        series: vec![Series::new(
            "gappy",
            vec![
                (1.0, 1.0),
                (2.0, 2.0),
                (f64::NAN, 3.0),
                (4.0, f64::INFINITY),
                (5.0, 5.0),
                (6.0, 4.0),
            ],
        )],
        ..Chart::default()
    };
    let svg = chart.svg();
    let texts = check(&svg);
    assert_eq!(count(&svg, "polyline"), 2, "{svg}");
    // The axis fits the finite points only.
    assert!(
        texts.contains(&"6".to_string()) && !texts.contains(&"7".to_string()),
        "{texts:?}"
    );
}

#[test]
fn log_axis_skips_points_at_or_below_zero() {
    let chart = Chart {
        x_log: true,
        series: vec![Series::new(
            "s",
            vec![(0.0, 0.1), (-1.0, 0.2), (3.0, 0.5), (30.0, 1.0)],
        )],
        ..Chart::default()
    };
    let svg = chart.svg();
    let texts = check(&svg);
    assert_eq!(count(&svg, "polyline"), 1);
    assert!(
        texts.contains(&"100".to_string()) && !texts.contains(&"0.1".to_string()),
        "{texts:?}"
    );
}

#[test]
fn empty_and_single_point_charts() {
    let svg = Chart::default().svg();
    assert!(check(&svg).contains(&"no data".to_string()));
    let chart = Chart {
        series: vec![
            Series::new("none", vec![]),
            Series::new("nan", vec![(f64::NAN, 1.0)]),
        ],
        ..Chart::default()
    };
    let texts = check(&chart.svg());
    assert!(texts.contains(&"none (no data)".to_string()), "{texts:?}");
    assert!(texts.contains(&"nan (no data)".to_string()), "{texts:?}");
    assert!(texts.contains(&"no data".to_string()));

    let one = Chart::latency_cdf("one", true, &[("single", &[4.2])]);
    let svg = one.svg();
    let texts = check(&svg);
    assert_eq!(count(&svg, "polyline"), 0);
    // The point, and its legend entry.
    assert_eq!(count(&svg, "circle"), 2, "{svg}");
    assert!(
        texts.contains(&"1.0".to_string()),
        "y reaches the point: {texts:?}"
    );
}

#[test]
fn extreme_values_stay_finite() {
    let chart = Chart {
        series: vec![
            Series::new("huge", vec![(0.0, f64::MAX), (f64::MAX, 0.0), (1.0, 1.0)]),
            Series::new(
                "tiny",
                vec![(f64::MIN_POSITIVE, -f64::MAX), (1e-300, 1e-300)],
            ),
        ],
        ..Chart::default()
    };
    check(&chart.svg());
    let log = Chart {
        x_log: true,
        ..chart
    };
    check(&log.svg());
    // A subnormal span has no f64 step: the unit axis, the points at 0.
    let sub = Chart {
        series: vec![Series::new("sub", vec![(1e-310, 1e-310), (2e-310, 3e-310)])],
        ..Chart::default()
    };
    check(&sub.svg());
}

#[test]
fn output_is_deterministic() {
    let a = cdf_chart(true).svg();
    assert_eq!(a, cdf_chart(true).svg());
    assert_eq!(memory_chart().svg(), memory_chart().clone().svg());
}
