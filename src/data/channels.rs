//! The ZDC neutron calorimeter's 44×44 fibre grid and its five readout channels — one map,
//! used by the distillation's channel loss and by evaluation.
//!
//! As in the ZDC community's `sum_channels_parallel`: channel 0 (the paper's "1") collects every
//! second fibre, the pixels with (row + col) odd; the other fibres ((row + col) even) are read in
//! four groups by quadrant: 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right (rows and
//! columns split at 22; row 0 is the top).

/// Pixels per side.
pub const SIDE: usize = 44;
/// Pixels per response.
pub const PIXELS: usize = SIDE * SIDE;
/// Readout channels.
pub const CHANNELS: usize = 5;

/// The channel of pixel (row, col).
pub fn channel_of(row: usize, col: usize) -> usize {
    if (row + col) % 2 == 1 {
        return 0;
    }
    let half = SIDE / 2;
    match (row < half, col < half) {
        (true, true) => 1,
        (true, false) => 2,
        (false, true) => 3,
        (false, false) => 4,
    }
}

/// The channel of every pixel, row-major.
pub fn channel_map() -> Vec<usize> {
    (0..PIXELS).map(|p| channel_of(p / SIDE, p % SIDE)).collect()
}

/// The five channel sums of one row-major 44×44 image.
pub fn channel_sums(image: &[f32]) -> [f64; CHANNELS] {
    debug_assert_eq!(image.len(), PIXELS);
    let mut sums = [0.0; CHANNELS];
    for (p, &v) in image.iter().enumerate() {
        sums[channel_of(p / SIDE, p % SIDE)] += v as f64;
    }
    sums
}

/// A (PIXELS, CHANNELS) 0/1 matrix: `images (n, PIXELS) · m` gives the channel sums (n, 5).
pub fn channel_matrix(
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> candle_core::Result<candle_core::Tensor> {
    let mut m = vec![0f32; PIXELS * CHANNELS];
    for (p, c) in channel_map().into_iter().enumerate() {
        m[p * CHANNELS + c] = 1.0;
    }
    candle_core::Tensor::from_vec(m, (PIXELS, CHANNELS), device)?.to_dtype(dtype)
}

/// A test image that is zero except at the given (row, column, photons).
#[cfg(test)]
pub(crate) fn image_with(pixels: &[(usize, usize, f32)]) -> Vec<f32> {
    let mut img = vec![0f32; PIXELS];
    for &(r, c, v) in pixels {
        img[r * SIDE + c] = v;
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sums_of_a_hand_made_image() {
        // One photon count per pixel: channel 0 holds half the fibres, each quadrant a quarter of
        // the other half.
        let ones = vec![1f32; PIXELS];
        assert_eq!(channel_sums(&ones), [968.0, 242.0, 242.0, 242.0, 242.0]);
        // Single lit pixels: (0,0) even → top-left; (0,1) odd → checkerboard; (43,43) even →
        // bottom-right; (0,42) even → top-right; (43,1) even → bottom-left.
        let mut img = vec![0f32; PIXELS];
        for (r, c, v) in [(0, 0, 1.0), (0, 1, 10.0), (43, 43, 100.0), (0, 42, 1000.0), (43, 1, 5.0)] {
            img[r * SIDE + c] = v;
        }
        assert_eq!(channel_sums(&img), [10.0, 1.0, 1000.0, 5.0, 100.0]);
    }

    #[test]
    fn channel_matrix_agrees_with_channel_sums() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let img: Vec<f32> = (0..PIXELS).map(|p| (p % 7) as f32).collect();
        let t = candle_core::Tensor::from_vec(img.clone(), (1, PIXELS), &dev)?;
        let m = channel_matrix(candle_core::DType::F32, &dev)?;
        let sums = t.matmul(&m)?.to_vec2::<f32>()?;
        let expected = channel_sums(&img);
        for c in 0..CHANNELS {
            assert_eq!(sums[0][c] as f64, expected[c]);
        }
        Ok(())
    }
}
