//! ZDC noise removal: from the flow's normalised image back to whole photon counts.
//!
//! Training adds `noise_mul · U[0, 1)` to every pixel before normalising, so the flow learns
//! the normalised *noised* image. Generation rescales it to the noised total
//! `S + 1936 · noise_mul / 2` (the published `prepare_noised_samples`), giving per-pixel values
//! x ≈ c + noise_mul·u, and then removes the noise in one of these ways (`sample --denoise`):
//!
//! | name               | per pixel                                   | published name   |
//! |--------------------|---------------------------------------------|------------------|
//! | `sub-floor`        | max(⌊x − noise_mul/2⌋, 0)                   | `sub_norecalc`   |
//! | `sub-floor-recalc` | `sub-floor`, then recalc                    | `sub_recalc`     |
//! | `floor`            | max(⌊x⌋, 0)                                 | `floor_norecalc` |
//! | `floor-recalc`     | `floor`, then recalc                        | `floor_recalc`   |
//! | `round`            | max(round(x − noise_mul/2), 0)              | (ours)           |
//! | `sub-floor-fill`   | `sub-floor`, then +1 photon for the round(S) − Σ pixels with the largest fractional parts | (ours) |
//!
//! recalc (published `recalc`): renormalise the image to sum 1, multiply by the photon sum S,
//! floor and clamp at 0 again.
//!
//! The default, `sub-floor-fill`, is chosen on *generated* responses (docs/validation.md, "ZDC
//! inference protocol and diversity weights"): a model spreads a sparse response over many pixels
//! with sub-photon values, which `round` and the floors remove (the image total falls short of S
//! by a median of ~30 % on the demo student), while `sub-floor-fill` keeps the total at round(S)
//! by construction. On reference images it is near exact as `round` is
//! (`round_trip_table_on_reference_images`).

use serde::{Deserialize, Serialize};

use crate::data::channels::PIXELS;
use crate::data::preprocess::ZdcPreprocessing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Denoise {
    /// Subtract the mean noise (noise_mul/2), floor (the former default).
    SubFloor,
    /// `sub-floor`, then renormalise to the photon sum and floor again.
    SubFloorRecalc,
    /// Floor only (the noise is in [0, noise_mul) < 1 photon).
    Floor,
    /// `floor`, then renormalise to the photon sum and floor again.
    FloorRecalc,
    /// Subtract the mean noise, round to the nearest photon.
    Round,
    /// `sub-floor`, then one photon more for each of the pixels with the largest fractional parts
    /// until the total is round(S) (the photons that flooring sub-photon values loses).
    #[default]
    SubFloorFill,
}

impl Denoise {
    pub const ALL: [Denoise; 6] = [
        Denoise::SubFloor,
        Denoise::SubFloorRecalc,
        Denoise::Floor,
        Denoise::FloorRecalc,
        Denoise::Round,
        Denoise::SubFloorFill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Denoise::SubFloor => "sub-floor",
            Denoise::SubFloorRecalc => "sub-floor-recalc",
            Denoise::Floor => "floor",
            Denoise::FloorRecalc => "floor-recalc",
            Denoise::Round => "round",
            Denoise::SubFloorFill => "sub-floor-fill",
        }
    }

    /// Noised photon-scaled pixels `x` of a response with `photon_sum` photons → counts.
    pub fn apply(self, x: &[f64], photon_sum: f64, noise_mul: f64, out: &mut [f32]) {
        let half = 0.5 * noise_mul;
        if self == Denoise::SubFloorFill {
            return fill_to_photon_sum(x, half, photon_sum, out);
        }
        for (o, &v) in out.iter_mut().zip(x) {
            *o = match self {
                Denoise::SubFloor | Denoise::SubFloorRecalc => (v - half).floor(),
                Denoise::Floor | Denoise::FloorRecalc => v.floor(),
                Denoise::Round => (v - half).round(),
                Denoise::SubFloorFill => unreachable!("handled above"),
            }
            .max(0.0) as f32;
        }
        if matches!(self, Denoise::SubFloorRecalc | Denoise::FloorRecalc) {
            recalc(out, photon_sum);
        }
    }
}

/// `sub-floor-fill`: v = max(x − `half`, 0), ⌊v⌋, and one photon more for each of the
/// T − Σ⌊v⌋ pixels with the largest fractional parts of v (ties: the lower pixel index), so the
/// total is exactly T = round(S). On a reference image (whole counts + noise) the pixels filled
/// are those whose noise fell below the mean, so it is near exact; on a generated one it keeps
/// the sub-photon mass that flooring removes. Where Σ⌊v⌋ already exceeds T, v is first scaled by
/// T / Σv; an image with nothing above the mean noise is taken from x itself.
fn fill_to_photon_sum(x: &[f64], half: f64, photon_sum: f64, out: &mut [f32]) {
    let mut v: Vec<f64> = x.iter().map(|&p| (p - half).max(0.0)).collect();
    let mut total: f64 = v.iter().sum();
    if total <= 0.0 {
        v = x.iter().map(|&p| p.max(0.0)).collect();
        total = v.iter().sum();
    }
    let target = photon_sum.max(0.0).round();
    if total <= 0.0 || target == 0.0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let floors: f64 = v.iter().map(|p| p.floor()).sum();
    let scale = if floors > target { target / total } else { 1.0 };
    let mut fractions = Vec::with_capacity(v.len());
    let mut whole = 0.0;
    for (i, (o, &p)) in out.iter_mut().zip(&v).enumerate() {
        let s = p * scale;
        let f = s.floor();
        *o = f as f32;
        whole += f;
        fractions.push((s - f, i));
    }
    let missing = ((target - whole).round().max(0.0) as usize).min(fractions.len());
    if missing == 0 {
        return;
    }
    let largest_first = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    fractions.select_nth_unstable_by(missing - 1, largest_first);
    for &(_, i) in &fractions[..missing] {
        out[i] += 1.0;
    }
}

/// Renormalise to sum 1 (+1e-16, as published), × `photon_sum`, floor, clamp at 0.
fn recalc(img: &mut [f32], photon_sum: f64) {
    let total: f64 = img.iter().map(|&v| (v as f64).abs()).sum::<f64>() + 1e-16;
    for v in img.iter_mut() {
        *v = (*v as f64 / total * photon_sum).floor().max(0.0) as f32;
    }
}

/// Flow features `y` of one response → the noised photon-scaled pixels (published
/// `prepare_noised_samples`): normalised image × (S + PIXELS · noise_mul / 2).
pub fn noised_pixels(prep: &ZdcPreprocessing, y: &[f32], photon_sum: f32) -> Vec<f64> {
    let scale = photon_sum as f64 + PIXELS as f64 * 0.5 * prep.noise_mul;
    prep.normalised(y).into_iter().map(|p| p * scale).collect()
}

/// Flow features → photon counts with `variant`.
pub fn image_inverse(prep: &ZdcPreprocessing, variant: Denoise, y: &[f32], photon_sum: f32, out: &mut [f32]) {
    variant.apply(&noised_pixels(prep, y, photon_sum), photon_sum as f64, prep.noise_mul, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::channels::channel_sums;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(v: Denoise, x: &[f64], s: f64) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        v.apply(x, s, 0.5, &mut out);
        out
    }

    #[test]
    fn each_variant_on_a_hand_made_image() {
        // Pixels (noise_mul = 0.5, so the mean noise is 0.25), photon sum S = 10.
        let x = [0.1, 0.3, 2.2, 2.6, 5.9, 0.8];
        // ⌊x − 0.25⌋ → [-1, 0, 1, 2, 5, 0] → clamp.
        assert_eq!(run(Denoise::SubFloor, &x, 10.0), vec![0.0, 0.0, 1.0, 2.0, 5.0, 0.0]);
        // ⌊x⌋.
        assert_eq!(run(Denoise::Floor, &x, 10.0), vec![0.0, 0.0, 2.0, 2.0, 5.0, 0.0]);
        // round(x − 0.25): -0.15, 0.05, 1.95, 2.35, 5.65, 0.55 → 0, 0, 2, 2, 6, 1.
        assert_eq!(run(Denoise::Round, &x, 10.0), vec![0.0, 0.0, 2.0, 2.0, 6.0, 1.0]);
        // recalc of sub-floor [0,0,1,2,5,0] (sum 8) to S = 10: ×1.25 → 1.25, 2.5, 6.25 → ⌊⌋.
        assert_eq!(run(Denoise::SubFloorRecalc, &x, 10.0), vec![0.0, 0.0, 1.0, 2.0, 6.0, 0.0]);
        // recalc of floor [0,0,2,2,5,0] (sum 9) to S = 10: ×10/9 → 2.22, 2.22, 5.56.
        assert_eq!(run(Denoise::FloorRecalc, &x, 10.0), vec![0.0, 0.0, 2.0, 2.0, 5.0, 0.0]);
        // sub-floor-fill: v = [0, .05, 1.95, 2.35, 5.65, .55], ⌊v⌋ = [0,0,1,2,5,0] (8) + one photon
        // each for the two largest fractions (.95 at 2, .65 at 4) → total 10.
        assert_eq!(run(Denoise::SubFloorFill, &x, 10.0), vec![0.0, 0.0, 2.0, 2.0, 6.0, 0.0]);
        // Floors above S: v × 6/10.55 = [0, .028, 1.109, 1.336, 3.213, .313] → [0,0,1,1,3,0] (5)
        // + the largest fraction (.336 at 3).
        assert_eq!(run(Denoise::SubFloorFill, &x, 6.0), vec![0.0, 0.0, 1.0, 2.0, 3.0, 0.0]);
        // Nothing above the mean noise: x itself, v = [.2, .1, 0] → +1 at 0, 1, then 2 (ties of 0
        // by the lower index); S = 0 gives an empty image.
        assert_eq!(run(Denoise::SubFloorFill, &[0.2, 0.1, 0.0], 3.0), vec![1.0, 1.0, 1.0]);
        assert_eq!(run(Denoise::SubFloorFill, &x, 0.0), vec![0.0; 6]);
        // An empty image stays empty under recalc (no division by zero).
        assert_eq!(run(Denoise::FloorRecalc, &[0.2, 0.1], 5.0), vec![0.0, 0.0]);
    }

    /// A generated-like response: S photons spread smoothly as a wide Gaussian blob (most pixels
    /// well below one photon, as a flow spreads a sparse response), plus the training noise,
    /// scaled to the noised total S + 1936·noise_mul/2 as generation does.
    fn generated_like(s: f64, width: f64, noise_mul: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
        use rand::Rng;
        let side = crate::data::channels::SIDE;
        let (r0, c0) = (20.3, 23.7);
        let blob: Vec<f64> = (0..PIXELS)
            .map(|p| {
                let (r, c) = ((p / side) as f64 - r0, (p % side) as f64 - c0);
                (-(r * r + c * c) / (2.0 * width * width)).exp()
            })
            .collect();
        let blob_total: f64 = blob.iter().sum();
        let x: Vec<f64> = blob.iter().map(|b| b / blob_total * s + noise_mul * rng.random::<f64>()).collect();
        let scale = (s + PIXELS as f64 * 0.5 * noise_mul) / x.iter().sum::<f64>();
        x.into_iter().map(|v| v * scale).collect()
    }

    #[test]
    fn the_default_keeps_the_photon_total_of_a_generated_like_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(30);
        let noise_mul = ZdcPreprocessing::default().noise_mul;
        for (s, width) in [(60.0, 6.0), (158.0, 8.0), (108.0, 5.0), (900.0, 4.0)] {
            let x = generated_like(s, width, noise_mul, &mut rng);
            let peak = x.iter().cloned().fold(0.0, f64::max) - 0.5 * noise_mul;
            let total = |v: Denoise| {
                let mut out = vec![0f32; PIXELS];
                v.apply(&x, s, noise_mul, &mut out);
                out.iter().map(|&c| c as f64).sum::<f64>()
            };
            let default = total(Denoise::default());
            assert!((default - s).abs() <= 0.02 * s, "S = {s}: the default keeps {default} photons");
            // The image is the hard case: round loses a clear share of it (for the sparse ones).
            if peak < 1.0 {
                let round = total(Denoise::Round);
                assert!(round < 0.9 * s, "S = {s} (peak {peak:.2}): round keeps {round} photons");
            }
        }
    }

    /// One round trip's figures: mean photon bias per pixel, mean |error| per pixel, and the mean
    /// over the 5 channels of the WS between original and round-tripped channel sums.
    fn round_trip(v: Denoise, images: &[f32], prep: &ZdcPreprocessing) -> (f64, f64, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut y = vec![0f32; PIXELS];
        let mut out = vec![0f32; PIXELS];
        let (mut bias, mut abs) = (0.0, 0.0);
        let (mut ch_ref, mut ch_out) = (Vec::new(), Vec::new());
        for img in images.chunks(PIXELS) {
            prep.image(img, &mut rng, &mut y);
            let s: f32 = img.iter().sum();
            image_inverse(prep, v, &y, s, &mut out);
            for (o, c) in out.iter().zip(img) {
                bias += (o - c) as f64;
                abs += (o - c).abs() as f64;
            }
            ch_ref.push(channel_sums(img));
            ch_out.push(channel_sums(&out));
        }
        let n = images.len() as f64;
        (bias / n, abs / n, crate::eval::zdc_metrics::ws_channels(&ch_ref, &ch_out).1)
    }

    /// The round trip on reference images (the synthetic ZDC generator) → preprocessing with its
    /// noise → inverse with the true photon sum → compared with the original. Prints the table
    /// (docs/validation.md "Noise removal (ZDC)"; `cargo test --release --lib sample::denoise --
    /// --nocapture`) and checks that the default (chosen on generated images) is the closest
    /// variant here too.
    #[test]
    fn round_trip_table_on_reference_images() {
        let events = crate::data::synth::zdc::generate_zdc(21, 400);
        let prep = ZdcPreprocessing::default();
        let lit = events.responses.iter().filter(|&&c| c > 0.0).count() as f64 / events.responses.len() as f64;
        let mean_sum = events.responses.iter().map(|&c| c as f64).sum::<f64>() / 400.0;
        println!(
            "round trip on 400 reference responses (mean photon sum {mean_sum:.0}, {:.1}% pixels lit)",
            100.0 * lit
        );
        println!("{:<18} {:>16} {:>16} {:>12}", "variant", "bias/pixel", "|error|/pixel", "WS (ch.)");
        let mut rows = Vec::new();
        for v in Denoise::ALL {
            let (bias, abs, ws) = round_trip(v, &events.responses, &prep);
            println!("{:<18} {:>16.5} {:>16.5} {:>12.3}", v.name(), bias, abs, ws);
            rows.push((v, bias, abs, ws));
        }
        let best = rows.iter().min_by(|a, b| a.2.partial_cmp(&b.2).unwrap()).unwrap();
        // The default is chosen on generated images; on reference images it is the closest too.
        assert_eq!(best.0, Denoise::default(), "the default should be the closest round trip on reference images");
        let d = rows.iter().find(|r| r.0 == Denoise::default()).unwrap();
        // Bound on the default's bias: below 0.005 photon per pixel (≈ 10 photons per response).
        assert!(d.1.abs() < 5e-3, "default round-trip bias {} photons/pixel", d.1);
        // and the former default loses photons (about one in every other lit pixel).
        let sub = rows.iter().find(|r| r.0 == Denoise::SubFloor).unwrap();
        assert!(sub.1 < -0.1 * lit, "sub-floor bias {} should be clearly negative", sub.1);
    }
}
