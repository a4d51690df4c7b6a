//! Layer constructors shared by the towers, with the initialisations of the reference
//! implementations (timm and Hugging Face: weights ~ N(0, 0.02), biases 0, norms 1/0).
//! Loading a checkpoint overwrites all of them; they matter when training from scratch.

use tch::nn;

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
pub fn conv2d(
    p: &nn::Path,
    in_dim: i64,
    out_dim: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    groups: i64,
) -> nn::Conv2D {
    nn::conv2d(
        p,
        in_dim,
        out_dim,
        kernel,
        nn::ConvConfig {
            stride,
            padding,
            groups,
            bias: true,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        },
    )
}
