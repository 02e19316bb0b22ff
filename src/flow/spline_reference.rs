//! The schema of nflows' rational-quadratic-spline reference files (`tests/data/rqs_public.json`,
//! described in its README): read by the reference test and by `zdcflow selftest`.

use serde::Deserialize;

use super::spline::{Direction, SplineConfig};

#[derive(Deserialize)]
pub struct Reference {
    pub cases: Vec<Case>,
}

/// One spline configuration with its inputs and nflows' outputs.
#[derive(Deserialize)]
pub struct Case {
    pub num_bins: usize,
    pub tail_bound: f64,
    pub min_bin_width: f64,
    pub min_bin_height: f64,
    pub min_derivative: f64,
    pub inverse: bool,
    pub inputs: Vec<f64>,
    pub unnormalized_widths: Vec<Vec<f64>>,
    pub unnormalized_heights: Vec<Vec<f64>>,
    pub unnormalized_derivatives: Vec<Vec<f64>>,
    pub outputs: Vec<f64>,
    pub logabsdet: Vec<f64>,
}

impl Case {
    pub fn config(&self) -> SplineConfig {
        SplineConfig {
            num_bins: self.num_bins,
            tail_bound: self.tail_bound,
            min_bin_width: self.min_bin_width,
            min_bin_height: self.min_bin_height,
            min_derivative: self.min_derivative,
        }
    }

    pub fn direction(&self) -> Direction {
        if self.inverse {
            Direction::Inverse
        } else {
            Direction::Forward
        }
    }

    /// Raw parameters of point i in our layout: widths, heights, inner derivatives.
    pub fn params(&self, i: usize) -> Vec<f64> {
        [&self.unnormalized_widths[i], &self.unnormalized_heights[i], &self.unnormalized_derivatives[i]]
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }
}
