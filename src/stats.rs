//! Statistics shared by training, calibration/OOD and the privacy audit: one rank-based ROC
//! AUC (Mann–Whitney U with average ranks for ties) for all three.

/// ROC AUC = P(positive score > negative score) + ½ P(equal), from average ranks so that ties
/// count one half. NaN when either side is empty. `buf` is scratch space, reused across calls
/// by the bootstrap.
pub fn rank_auc_with(positives: &[f64], negatives: &[f64], buf: &mut Vec<(f64, bool)>) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    buf.clear();
    buf.extend(positives.iter().map(|&s| (s, true)));
    buf.extend(negatives.iter().map(|&s| (s, false)));
    buf.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < buf.len() {
        let mut j = i;
        while j + 1 < buf.len() && buf[j + 1].0 == buf[i].0 {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their average
        let avg = (i + j + 2) as f64 / 2.0;
        rank_sum += avg * buf[i..=j].iter().filter(|e| e.1).count() as f64;
        i = j + 1;
    }
    let (n1, n0) = (positives.len() as f64, negatives.len() as f64);
    (rank_sum - n1 * (n1 + 1.0) / 2.0) / (n1 * n0)
}

/// [`rank_auc_with`] with its own scratch space.
pub fn rank_auc(positives: &[f64], negatives: &[f64]) -> f64 {
    rank_auc_with(positives, negatives, &mut Vec::new())
}

/// The median of some readings (the mean of the middle two for an even count; non-finite
/// readings left out; NaN when none is left).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_count_half_and_order_matters() {
        assert_eq!(rank_auc(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        assert_eq!(rank_auc(&[0.0, 1.0], &[2.0, 3.0]), 0.0);
        assert_eq!(rank_auc(&[1.0], &[1.0]), 0.5);
        // pairs: 0.8 beats 0.4 and 0.1; 0.4 ties 0.4 (½) and beats 0.1: 3.5 of 6 = 7/12
        assert!((rank_auc(&[0.8, 0.4], &[0.4, 0.1, 0.9]) - 7.0 / 12.0).abs() < 1e-12);
        assert!(rank_auc(&[], &[1.0]).is_nan());
    }
}
