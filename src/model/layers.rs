//! Layer constructors shared by the towers, with the initialisations of the reference
//! implementations (timm and Hugging Face: weights ~ N(0, 0.02), biases 0, norms 1/0).
//! Loading a checkpoint overwrites all of them; they matter when training from scratch.

use tch::nn::{self, Module};
use tch::Tensor;

const INIT_STD: f64 = 0.02;

pub fn linear(p: &nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    nn::linear(
        p,
        in_dim,
        out_dim,
        nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

pub fn layer_norm(p: &nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

pub fn embedding(p: &nn::Path, num: i64, dim: i64) -> nn::Embedding {
    nn::embedding(
        p,
        num,
        dim,
        nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            ..Default::default()
        },
    )
}

/// A biased 2-D convolution with square kernel, stride and padding.
///
/// Not `tch::nn::Conv2D`: that goes through `at::conv2d`, which on NVIDIA GPUs since Ampere
/// silently computes in TF32 (10-bit mantissa) by default. liteclip's fp32 is full fp32, as on
/// the CPU, so each call states `allow_tf32 = false`; reduced precision is an explicit choice.
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
        x.internal_convolution(
            &self.ws,
            Some(&self.bs),
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
    let ws = p.var(
        "weight",
        &[out_dim, in_dim / groups, kernel, kernel],
        nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
    );
    let bs = p.var("bias", &[out_dim], nn::Init::Const(0.0));
    Conv2d {
        ws,
        bs,
        stride,
        padding,
        groups,
    }
}
