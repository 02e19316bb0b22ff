//! Reduced-precision products for frozen (sampling) networks: an opt-in trade of accuracy for
//! speed, like PyTorch's `set_float32_matmul_precision`. Only the masked layers' products change;
//! the spline, the context layers and everything after stay in the model's precision.

use candle_core::{DType, Tensor};

/// How the masked layers of a frozen float32 network multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// The model's own precision.
    #[default]
    Full,
    /// Inputs and weights rounded to bf16 (8 significant bits), products summed in float32: on
    /// CPUs with AMX tiles on those (fast), elsewhere on the CPU the same numbers with float32
    /// arithmetic (slow), on CUDA by cuBLAS in bf16.
    Bf16,
}

/// `xs` rounded to the nearest bf16 (ties to even), in its own dtype.
pub fn round_bf16(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.to_dtype(DType::BF16)?.to_dtype(xs.dtype())
}
