//! Batches of preprocessed rows streamed from a data file.
//!
//! A [`RowSource`] turns a block of events into rows (a ZDC event gives one row, a CaloChallenge
//! event gives one row for Flow-1/2 and 44 for Flow-3). An epoch visits the training events in
//! blocks of about 64 MB in a seeded random order, shuffles the rows of a few blocks at a time and
//! cuts batches, so memory stays bounded however large the file is. Every draw comes from
//! generators derived from (seed, epoch, block), so an epoch can be replayed exactly.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::util::rng::{derive, tag};

/// Rows of a batch or block: `x` (n × x_dim), `ctx` (n × ctx_dim), optional per-row weights.
#[derive(Clone, Debug, Default)]
pub struct Rows {
    pub x: Vec<f32>,
    pub ctx: Vec<f32>,
    pub weight: Vec<f32>,
    pub n: usize,
}

impl Rows {
    fn append(&mut self, other: Rows) {
        self.x.extend(other.x);
        self.ctx.extend(other.ctx);
        self.weight.extend(other.weight);
        self.n += other.n;
    }

    /// Reorders rows by `order`.
    fn permute(&mut self, order: &[usize], dx: usize, dc: usize) {
        let gather = |v: &[f32], d: usize| -> Vec<f32> {
            if d == 0 {
                return Vec::new();
            }
            order.iter().flat_map(|&i| v[i * d..(i + 1) * d].iter().copied()).collect()
        };
        self.x = gather(&self.x, dx);
        self.ctx = gather(&self.ctx, dc);
        if !self.weight.is_empty() {
            self.weight = order.iter().map(|&i| self.weight[i]).collect();
        }
    }

    /// Splits off the first `k` rows.
    fn take_front(&mut self, k: usize, dx: usize, dc: usize) -> Rows {
        let k = k.min(self.n);
        let front = Rows {
            x: self.x.drain(..k * dx).collect(),
            ctx: self.ctx.drain(..k * dc).collect(),
            weight: if self.weight.is_empty() { Vec::new() } else { self.weight.drain(..k).collect() },
            n: k,
        };
        self.n -= k;
        front
    }
}

/// Tensors of one batch on the training device.
pub struct Batch {
    pub x: Tensor,
    pub ctx: Option<Tensor>,
    pub weight: Option<Tensor>,
    pub n: usize,
}

impl Batch {
    pub fn from_rows(rows: Rows, dx: usize, dc: usize, dtype: DType, device: &Device) -> Result<Self> {
        let n = rows.n;
        let x = Tensor::from_vec(rows.x, (n, dx), device)?.to_dtype(dtype)?;
        let ctx = if dc > 0 { Some(Tensor::from_vec(rows.ctx, (n, dc), device)?.to_dtype(dtype)?) } else { None };
        let weight = if rows.weight.is_empty() {
            None
        } else {
            Some(Tensor::from_vec(rows.weight, n, device)?.to_dtype(dtype)?)
        };
        Ok(Self { x, ctx, weight, n })
    }
}

/// Where the rows of a model come from.
pub trait RowSource: Sync {
    fn x_dim(&self) -> usize;
    fn ctx_dim(&self) -> usize;
    /// Rows each event yields.
    fn rows_per_event(&self) -> usize;
    /// Events read together (bounds memory).
    fn block_events(&self) -> usize;
    /// Preprocessed rows of `events` (ascending), with noise from `rng`.
    fn rows(&self, events: &[usize], rng: &mut ChaCha8Rng) -> Result<Rows>;
    /// `events` split by the data file holding them (for `epochs_per_file`); one file by default.
    fn by_file(&self, events: &[usize]) -> Vec<Vec<usize>> {
        vec![events.to_vec()]
    }
}

/// Training data smaller than this is read into memory once (larger files stream every epoch,
/// keeping memory bounded).
pub const CACHE_BYTES: usize = 768 << 20;

/// Blocks read and shuffled together.
const BLOCKS_PER_BUFFER: usize = 4;

/// Batches per epoch for `events` (before any cap).
pub fn batches_per_epoch(source: &dyn RowSource, events: usize, batch_size: usize) -> usize {
    (events * source.rows_per_event()).div_ceil(batch_size.max(1))
}

/// The training batches of one epoch, in a seeded order.
pub struct EpochStream<'a> {
    source: &'a dyn RowSource,
    blocks: Vec<Vec<usize>>,
    next_block: usize,
    pending: Rows,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    buffer: u64,
    shuffle: bool,
}

impl<'a> EpochStream<'a> {
    /// Training order: shuffled blocks, shuffled rows.
    pub fn training(source: &'a dyn RowSource, events: &[usize], batch_size: usize, seed: u64, epoch: usize) -> Self {
        let mut blocks: Vec<Vec<usize>> = events.chunks(source.block_events().max(1)).map(|c| c.to_vec()).collect();
        blocks.shuffle(&mut derive(seed, &[tag::SHUFFLE, epoch as u64]));
        Self::new(source, blocks, batch_size, seed, epoch as u64, true)
    }

    /// Validation order: file order, fixed noise.
    pub fn validation(source: &'a dyn RowSource, events: &[usize], batch_size: usize, seed: u64) -> Self {
        let blocks = events.chunks(source.block_events().max(1)).map(|c| c.to_vec()).collect();
        Self::new(source, blocks, batch_size, seed, u64::MAX, false)
    }

    fn new(
        source: &'a dyn RowSource,
        blocks: Vec<Vec<usize>>,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        shuffle: bool,
    ) -> Self {
        Self { source, blocks, next_block: 0, pending: Rows::default(), batch_size, seed, epoch, buffer: 0, shuffle }
    }

    fn refill(&mut self) -> Result<()> {
        let (dx, dc) = (self.source.x_dim(), self.source.ctx_dim());
        let end = (self.next_block + BLOCKS_PER_BUFFER).min(self.blocks.len());
        for b in self.next_block..end {
            let noise_tag = if self.shuffle { tag::NOISE } else { tag::VALIDATION };
            let mut rng = derive(self.seed, &[noise_tag, self.epoch, b as u64]);
            let rows = self.source.rows(&self.blocks[b], &mut rng)?;
            self.pending.append(rows);
        }
        self.next_block = end;
        if self.shuffle {
            let mut order: Vec<usize> = (0..self.pending.n).collect();
            order.shuffle(&mut derive(self.seed, &[tag::SHUFFLE, self.epoch, 1 << 32 | self.buffer]));
            self.pending.permute(&order, dx, dc);
        }
        self.buffer += 1;
        Ok(())
    }
}

impl Iterator for EpochStream<'_> {
    type Item = Result<Rows>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.n < self.batch_size && self.next_block < self.blocks.len() {
            if let Err(e) = self.refill() {
                return Some(Err(e));
            }
        }
        if self.pending.n == 0 {
            return None;
        }
        let (dx, dc) = (self.source.x_dim(), self.source.ctx_dim());
        Some(Ok(self.pending.take_front(self.batch_size, dx, dc)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::Rng;

    /// Event i gives `per_event` rows with x = [i, j] and a noise column in ctx.
    pub struct Counting {
        pub per_event: usize,
    }

    impl RowSource for Counting {
        fn x_dim(&self) -> usize {
            2
        }
        fn ctx_dim(&self) -> usize {
            1
        }
        fn rows_per_event(&self) -> usize {
            self.per_event
        }
        fn block_events(&self) -> usize {
            3
        }
        fn rows(&self, events: &[usize], rng: &mut ChaCha8Rng) -> Result<Rows> {
            let mut r = Rows::default();
            for &e in events {
                for j in 0..self.per_event {
                    r.x.extend([e as f32, j as f32]);
                    r.ctx.push(rng.random());
                    r.n += 1;
                }
            }
            Ok(r)
        }
    }

    #[test]
    fn an_epoch_visits_every_row_once_in_a_seeded_order() {
        let src = Counting { per_event: 2 };
        let events: Vec<usize> = (0..20).collect();
        let collect = |seed, epoch| -> Vec<Vec<f32>> {
            EpochStream::training(&src, &events, 7, seed, epoch).map(|b| b.unwrap().x).collect()
        };
        let a = collect(1, 0);
        assert_eq!(a.len(), batches_per_epoch(&src, 20, 7));
        let mut seen: Vec<(u32, u32)> = a.concat().chunks(2).map(|p| (p[0] as u32, p[1] as u32)).collect();
        seen.sort();
        let expected: Vec<(u32, u32)> = (0..20).flat_map(|e| [(e, 0), (e, 1)]).collect();
        assert_eq!(seen, expected);
        assert_eq!(a, collect(1, 0), "replayable");
        assert_ne!(a, collect(1, 1), "epochs differ");
        assert_ne!(a, collect(2, 0), "seeds differ");
    }

    #[test]
    fn validation_keeps_file_order_and_fixed_noise() {
        let src = Counting { per_event: 1 };
        let events: Vec<usize> = (0..10).collect();
        let v: Vec<Rows> = EpochStream::validation(&src, &events, 4, 3).map(|b| b.unwrap()).collect();
        let xs: Vec<f32> = v.iter().flat_map(|r| r.x.chunks(2).map(|p| p[0])).collect();
        assert_eq!(xs, (0..10).map(|i| i as f32).collect::<Vec<_>>());
        let again: Vec<Rows> = EpochStream::validation(&src, &events, 4, 3).map(|b| b.unwrap()).collect();
        assert_eq!(v[0].ctx, again[0].ctx);
    }
}
