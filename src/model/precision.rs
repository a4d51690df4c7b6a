//! How the model computes: the dtype of its matrix products and whether convolutions run
//! channels-last. Weights are always stored in fp32; this only changes the arithmetic, the way
//! PyTorch's autocast does (matrix layers in the reduced dtype, norms and the loss in fp32).
//!
//! The setting is per thread (so that two pipelines of different precision can run side by
//! side) and scoped: [`Precision::enter`] returns a guard that restores the previous setting.

use std::cell::Cell;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The arithmetic of a forward (and backward) pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    /// Full fp32 everywhere (no TF32): exact parity with the original.
    Fp32,
    /// bf16 matrix products and convolutions, fp32 norms, residual stream and loss.
    Bf16,
    /// fp16 likewise (training needs loss scaling).
    Fp16,
    /// Inference on the CPU: linear layers in int8 (dynamic quantization, see
    /// [`super::int8`]); convolutions, norms and attention products in fp32.
    Int8,
}

crate::serde_by_name!(Precision);

impl Precision {
    /// The precisions training takes, for command-line choices.
    pub const NAMES: [&'static str; 3] = ["fp32", "bf16", "fp16"];
    /// The precisions inference takes.
    pub const INFERENCE_NAMES: [&'static str; 4] = ["fp32", "bf16", "fp16", "int8"];

    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp16" | "float16" | "half" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            other => Err(Error::invalid(format!(
                "unknown precision {other:?}: expected \"fp32\", \"bf16\", \"fp16\" or \"int8\""
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }

    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
            Precision::Int8 => Kind::Float,
        }
    }

    /// Makes this precision (and memory format) current on this thread until the guard drops.
    pub fn enter(self, channels_last: bool) -> PrecisionGuard {
        let previous = (COMPUTE.get(), CHANNELS_LAST.get(), INT8.get());
        COMPUTE.set(self.compute_kind());
        CHANNELS_LAST.set(channels_last);
        INT8.set(self == Precision::Int8);
        PrecisionGuard { previous }
    }
}

thread_local! {
    static COMPUTE: Cell<Kind> = const { Cell::new(Kind::Float) };
    static CHANNELS_LAST: Cell<bool> = const { Cell::new(false) };
    static INT8: Cell<bool> = const { Cell::new(false) };
}

/// Restores the previous precision when dropped.
pub struct PrecisionGuard {
    previous: (Kind, bool, bool),
}

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        COMPUTE.set(self.previous.0);
        CHANNELS_LAST.set(self.previous.1);
        INT8.set(self.previous.2);
    }
}

/// Whether linear layers on this thread compute in int8 ([`Precision::Int8`]).
pub fn int8_linear() -> bool {
    INT8.get()
}

/// The dtype matrix layers compute in on this thread.
pub fn compute_kind() -> Kind {
    COMPUTE.get()
}

/// Whether convolutions on this thread take channels-last (NHWC-strided) tensors.
pub fn memory_format_channels_last() -> bool {
    CHANNELS_LAST.get()
}

/// The same NCHW tensor with NHWC strides (PyTorch's `torch.channels_last`), which cuDNN's
/// fastest kernels want; the ConvNeXt block's permutes to NHWC then cost nothing.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}
