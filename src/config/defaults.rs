//! The defaults of the keys of sections that also have required keys (serde's
//! `default = "…"` needs a function per value; this table writes them). Sections whose keys all
//! have defaults hold them in their `impl Default`.

use crate::flow::SplineConfig;

macro_rules! defaults {
    ($($name:ident: $ty:ty = $value:expr;)*) => {
        $(pub(super) fn $name() -> $ty {
            $value
        })*
    };
}

defaults! {
    blocks: usize = 8;
    hidden_layers: usize = 2;
    bins: usize = SplineConfig::DEFAULT.num_bins;
    tail_bound: f64 = SplineConfig::DEFAULT.tail_bound;
    min_bin_width: f64 = SplineConfig::DEFAULT.min_bin_width;
    min_bin_height: f64 = SplineConfig::DEFAULT.min_bin_height;
    min_derivative: f64 = SplineConfig::DEFAULT.min_derivative;
    seed: u64 = 1;
    gamma: f64 = 0.5;
    pct_start: f64 = 0.4;
    final_div_factor: f64 = 10.0;
    base_momentum: f64 = 0.85;
    max_momentum: f64 = 0.95;
    beta1: f64 = 0.9;
    beta2: f64 = 0.999;
    eps: f64 = 1e-8;
}
