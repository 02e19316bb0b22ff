//! Random numbers for sampling (the sampler's and the photon-sum flow's test report's).
//!
//! On the CPU every event draws from its own streams, derived from (seed, event index, draw), so
//! a batch's numbers do not depend on how events are batched or sharded: the shards of a job
//! array concatenate to exactly the file one job would write. On a GPU the numbers come from the
//! device generator (seeded per batch) so that nothing waits for the host; they are reproducible
//! on the same GPU and batch size, but differ from the CPU's.

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::util::rng::{derive, derive_seed, tag};

/// Where a sampler's noise comes from, one draw of `d` numbers per event at a time.
pub trait NoiseSource {
    /// (n, d) standard normals.
    fn normal(&mut self, d: usize) -> candle_core::Result<Tensor>;
    /// (n, d) uniforms on [0, 1).
    fn uniform(&mut self, d: usize) -> candle_core::Result<Tensor>;
}

impl NoiseSource for BatchNoise {
    fn normal(&mut self, d: usize) -> candle_core::Result<Tensor> {
        BatchNoise::normal(self, d)
    }
    fn uniform(&mut self, d: usize) -> candle_core::Result<Tensor> {
        BatchNoise::uniform(self, d)
    }
}

/// Noise for one batch of events `first..first + n`.
pub struct BatchNoise {
    seed: u64,
    first: u64,
    n: usize,
    draw: u64,
    dtype: DType,
    device: Device,
}

impl BatchNoise {
    pub fn new(seed: u64, first: usize, n: usize, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        if !device.is_cpu() {
            device.set_seed(derive_seed(seed, &[tag::SAMPLE, first as u64]))?;
        }
        Ok(Self { seed, first: first as u64, n, draw: 0, dtype, device: device.clone() })
    }

    fn host(&mut self, d: usize, normal: bool) -> candle_core::Result<Tensor> {
        self.draw += 1;
        let (seed, first, draw) = (self.seed, self.first, self.draw);
        let mut v = vec![0f32; self.n * d];
        v.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, row)| {
            let mut rng = derive(seed, &[tag::SAMPLE, first + r as u64, draw]);
            for x in row.iter_mut() {
                *x = if normal { rng.sample::<f32, _>(StandardNormal) } else { rng.random::<f32>() };
            }
        });
        Tensor::from_vec(v, (self.n, d), &self.device)?.to_dtype(self.dtype)
    }

    /// (n, d) standard normals.
    pub fn normal(&mut self, d: usize) -> candle_core::Result<Tensor> {
        if self.device.is_cpu() {
            self.host(d, true)
        } else {
            Tensor::randn(0f32, 1f32, (self.n, d), &self.device)?.to_dtype(self.dtype)
        }
    }

    /// (n, d) uniforms on [0, 1).
    pub fn uniform(&mut self, d: usize) -> candle_core::Result<Tensor> {
        if self.device.is_cpu() {
            self.host(d, false)
        } else {
            Tensor::rand(0f32, 1f32, (self.n, d), &self.device)?.to_dtype(self.dtype)
        }
    }
}
