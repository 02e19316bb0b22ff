//! Photon-total error of generated ZDC responses: how far each image's total Σ lies from the
//! photon sum S it was generated for, |Σ − S| / S, summarised by its median and 90th percentile.
//! Responses generated for S = 0 have no relative error and are counted apart.

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PhotonTotalError {
    /// Median of |Σ − S| / S over the responses with S > 0 (NaN when there are none).
    pub median: f64,
    /// 90th percentile of the same.
    pub p90: f64,
    /// Responses with S > 0.
    pub events: usize,
    /// Responses with S = 0 (not scored).
    pub zero_sum: usize,
}

/// Collects the per-response errors of a stream of batches.
#[derive(Default)]
pub struct PhotonTotalTally {
    errors: Vec<f64>,
    zero_sum: usize,
}

impl PhotonTotalTally {
    /// Adds responses `images` (n × pixels, row-major) generated for the photon sums `sums` (n).
    pub fn add(&mut self, images: &[f32], sums: &[f32]) {
        if sums.is_empty() {
            return;
        }
        let pixels = images.len() / sums.len();
        for (img, &s) in images.chunks(pixels).zip(sums) {
            if s > 0.0 {
                let total: f64 = img.iter().map(|&v| v as f64).sum();
                self.errors.push((total - s as f64).abs() / s as f64);
            } else {
                self.zero_sum += 1;
            }
        }
    }

    pub fn summary(mut self) -> PhotonTotalError {
        self.errors.sort_by(f64::total_cmp);
        PhotonTotalError {
            median: quantile(&self.errors, 0.5),
            p90: quantile(&self.errors, 0.9),
            events: self.errors.len(),
            zero_sum: self.zero_sum,
        }
    }
}

/// The q-quantile of sorted values, linearly interpolated between order statistics (numpy's
/// default); NaN for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let pos = q * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

impl std::fmt::Display for PhotonTotalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "photon-total error |Σ − S|/S: median {:.2} %, 90th percentile {:.2} % ({} responses",
            100.0 * self.median,
            100.0 * self.p90,
            self.events
        )?;
        if self.zero_sum > 0 {
            write!(f, "; {} with S = 0 not scored", self.zero_sum)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photon_total_error_by_hand() {
        // Two-pixel images: totals 9 (S 10 → 0.1), 10 (S 10 → 0), 6 (S 4 → 0.5), 3 (S 0: apart),
        // 20 (S 25 → 0.2). Sorted errors 0, 0.1, 0.2, 0.5: median 0.15; p90 at 0.9·3 = 2.7 →
        // 0.2 + 0.7·0.3 = 0.41.
        let images = [4.0, 5.0, 10.0, 0.0, 3.0, 3.0, 1.0, 2.0, 10.0, 10.0];
        let mut t = PhotonTotalTally::default();
        t.add(&images[..4], &[10.0, 10.0]);
        t.add(&images[4..], &[4.0, 0.0, 25.0]);
        let s = t.summary();
        assert_eq!((s.events, s.zero_sum), (4, 1));
        assert!((s.median - 0.15).abs() < 1e-12 && (s.p90 - 0.41).abs() < 1e-12, "{s:?}");
        assert!(PhotonTotalTally::default().summary().median.is_nan());
    }
}
