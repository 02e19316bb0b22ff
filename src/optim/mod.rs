//! Optimisers shared by training ([`crate::train`]) and the evaluation classifier.

pub mod adam;

pub use adam::Adam;

use candle_core::Var;
use candle_nn::VarMap;

/// Named variables in a stable order (the order an optimiser's state is kept and saved in).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> =
        varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
