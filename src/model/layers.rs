//! The layers the towers are built from, with the initialisations of the reference
//! implementations (timm and Hugging Face: weights ~ N(0, 0.02), biases 0, norms 1/0; loading a
//! checkpoint overwrites them, they matter when training from scratch).
//!
//! Our own rather than `tch::nn`'s, for two reasons:
//! - precision: weights stay fp32; matrix layers compute in the thread's compute dtype
//!   ([`super::precision`]) and norms in fp32, which is what PyTorch's autocast does;
//! - convolutions state `allow_tf32 = false`, so fp32 is full fp32 on GPUs too.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use std::sync::OnceLock;

use super::int8::Int8Weight;
use super::precision::{compute_kind, int8_linear, memory_format_channels_last};

const INIT_STD: f64 = 0.02;

fn normal() -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: INIT_STD,
    }
}

/// `x @ W^T + b`, in the compute dtype (or in int8 on the CPU, see [`super::int8`]).
#[derive(Debug)]
pub struct Linear {
    pub ws: Tensor,
    pub bs: Tensor,
    /// The int8 weight, quantized at the first int8 call (int8 is for inference: the weights
    /// do not change after it).
    int8: OnceLock<Int8Weight>,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(int8) = self.int8_weight(x) {
            return int8.forward(x);
        }
        let kind = compute_kind();
        x.to_kind(kind)
            .linear(&self.ws.to_kind(kind), Some(&self.bs.to_kind(kind)))
    }
}

impl Linear {
    /// The int8 weight when this thread computes in int8 and `x` is on the CPU.
    pub(super) fn int8_weight(&self, x: &Tensor) -> Option<&Int8Weight> {
        computes_int8(x).then(|| {
            self.int8
                .get_or_init(|| Int8Weight::new(&self.ws, &self.bs))
        })
    }
}

/// Whether a linear layer given `x` computes in int8: this thread's precision is int8 and `x`
/// is on the CPU.
pub(super) fn computes_int8(x: &Tensor) -> bool {
    int8_linear() && x.device() == tch::Device::Cpu
}

pub fn linear(p: &nn::Path, in_dim: i64, out_dim: i64) -> Linear {
    Linear {
        ws: p.var("weight", &[out_dim, in_dim], normal()),
        bs: p.var("bias", &[out_dim], nn::Init::Const(0.0)),
        int8: OnceLock::new(),
    }
}

/// LayerNorm over the last dimension, always computed in fp32 (its output is fp32).
#[derive(Debug)]
pub struct LayerNorm {
    pub ws: Tensor,
    pub bs: Tensor,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.ws.size()[0];
        x.to_kind(Kind::Float).layer_norm(
            [dim].as_slice(),
            Some(&self.ws),
            Some(&self.bs),
            self.eps,
            true,
        )
    }
}

pub fn layer_norm(p: &nn::Path, dim: i64, eps: f64) -> LayerNorm {
    LayerNorm {
        ws: p.var("weight", &[dim], nn::Init::Const(1.0)),
        bs: p.var("bias", &[dim], nn::Init::Const(0.0)),
        eps,
    }
}

/// A lookup table; its output is fp32 like the table.
#[derive(Debug)]
pub struct Embedding {
    pub ws: Tensor,
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.ws, ids, -1, false, false)
    }
}

pub fn embedding(p: &nn::Path, num: i64, dim: i64) -> Embedding {
    Embedding {
        ws: p.var("weight", &[num, dim], normal()),
    }
}

/// A biased 2-D convolution with square kernel, stride and padding, in the compute dtype.
///
/// Not `at::conv2d`: on NVIDIA GPUs since Ampere it silently computes in TF32 (10-bit mantissa)
/// by default, so each call states `allow_tf32 = false`. Weights follow the input's memory
/// format (channels-last when the model runs so, see `precision`).
#[derive(Debug)]
pub struct Conv2d {
    pub ws: Tensor,
    pub bs: Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = compute_kind();
        let mut ws = self.ws.to_kind(kind);
        if memory_format_channels_last() {
            ws = super::precision::to_channels_last(&ws);
        }
        x.to_kind(kind).internal_convolution(
            &ws,
            Some(&self.bs.to_kind(kind)),
            [self.stride, self.stride].as_slice(),
            [self.padding, self.padding].as_slice(),
            [1i64, 1].as_slice(),
            false,
            [0i64, 0].as_slice(),
            self.groups,
            false, // benchmark
            false, // deterministic
            true,  // cudnn enabled
            false, // allow_tf32
        )
    }
}

pub fn conv2d(
    p: &nn::Path,
    in_dim: i64,
    out_dim: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    groups: i64,
) -> Conv2d {
    Conv2d {
        ws: p.var(
            "weight",
            &[out_dim, in_dim / groups, kernel, kernel],
            normal(),
        ),
        bs: p.var("bias", &[out_dim], nn::Init::Const(0.0)),
        stride,
        padding,
        groups,
    }
}
