//! Empirical cumulative distributions: latency samples turned into the
//! points of a CDF chart.

/// The empirical CDF of `samples`: for each distinct value x, ascending,
/// the point (x, fraction of samples <= x); the last point's fraction is
/// one. NaN and infinite samples are left out (of the count too): a
/// sample that is not a number has no place on the x axis, and a CDF
/// whose last point stayed below one would misstate the finite ones.
pub fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, &x) in s.iter().enumerate() {
        let frac = (i + 1) as f64 / n;
        match out.last_mut() {
            // -0.0 and 0.0 are one value here, as on the axis.
            Some(last) if last.0 == x => last.1 = frac,
            _ => out.push((x, frac)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_samples() {
        assert_eq!(
            cdf(&[3.0, 1.0, 2.0, 4.0]),
            [(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]
        );
    }

    #[test]
    fn repeated_values_are_one_step() {
        assert_eq!(cdf(&[5.0, 1.0, 5.0, 5.0, 1.0]), [(1.0, 0.4), (5.0, 1.0)]);
        assert_eq!(cdf(&[0.0, -0.0]), [(0.0, 1.0)]);
    }

    #[test]
    fn empty_single_and_non_finite() {
        assert!(cdf(&[]).is_empty());
        assert!(cdf(&[f64::NAN, f64::INFINITY]).is_empty());
        assert_eq!(cdf(&[7.5]), [(7.5, 1.0)]);
        assert_eq!(
            cdf(&[2.0, f64::NAN, 1.0, f64::NEG_INFINITY]),
            [(1.0, 0.5), (2.0, 1.0)]
        );
    }

    #[test]
    fn fractions_rise_to_one() {
        let samples: Vec<f64> = (0..1000)
            .map(|i| f64::from((i * 7919) % 1000) / 10.0)
            .collect();
        let c = cdf(&samples);
        assert_eq!(c.len(), 1000);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(c.last(), Some(&(99.9, 1.0)));
        assert_eq!(c[499], (49.9, 0.5));
    }
}
