//! The ConvNeXt image tower with timm's `convnext_*` numerics and parameter names
//! (`stem.0`, `stages.N.downsample.M`, `stages.N.blocks.M.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}`,
//! `head.norm`). The classifier is absent, as in liteCLIP (`head.fc = Identity`): the output is the
//! average-pooled, head-normed feature vector.

use tch::nn::{self, Module};
use tch::Tensor;

use super::layers::{conv2d, layer_norm, linear, Conv2d, LayerNorm};
use super::mlp::Mlp;
use super::precision::{memory_format_channels_last, to_channels_last};
use crate::config::ConvNextConfig;

/// LayerNorm over the channels of an NCHW tensor (timm `LayerNorm2d`).
fn layer_norm_2d(x: &Tensor, norm: &LayerNorm) -> Tensor {
    x.permute([0, 2, 3, 1]).apply(norm).permute([0, 3, 1, 2])
}

/// `conv_dw -> LayerNorm -> Linear -> GELU -> Linear -> * gamma`, plus the residual.
#[derive(Debug)]
struct Block {
    conv_dw: Conv2d,
    norm: LayerNorm,
    mlp: Mlp,
    gamma: Tensor,
}

impl Block {
    fn new(p: &nn::Path, dim: i64, cfg: &ConvNextConfig) -> Self {
        let conv_dw = conv2d(
            &(p / "conv_dw"),
            dim,
            dim,
            cfg.kernel_size,
            1,
            cfg.kernel_size / 2,
            dim,
        );
        let hidden = dim * cfg.mlp_ratio;
        Block {
            conv_dw,
            norm: layer_norm(&(p / "norm"), dim, cfg.layer_norm_eps),
            mlp: Mlp {
                fc1: linear(&(p / "mlp" / "fc1"), dim, hidden),
                fc2: linear(&(p / "mlp" / "fc2"), hidden, dim),
            },
            gamma: p.var("gamma", &[dim], nn::Init::Const(cfg.layer_scale_init)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // Channels-last inside the block, as timm does with conv_mlp=False.
        let y = x
            .apply(&self.conv_dw)
            .permute([0, 2, 3, 1])
            .apply(&self.norm)
            .apply(&self.mlp)
            * &self.gamma;
        y.permute([0, 3, 1, 2]) + x
    }
}

#[derive(Debug)]
struct Stage {
    /// LayerNorm2d + 2x2 stride-2 conv; absent in the first stage (the stem downsamples).
    downsample: Option<(LayerNorm, Conv2d)>,
    blocks: Vec<Block>,
}

#[derive(Debug)]
pub struct ConvNext {
    stem_conv: Conv2d,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    head_norm: LayerNorm,
}

impl ConvNext {
    pub fn new(p: &nn::Path, cfg: &ConvNextConfig) -> Self {
        let eps = cfg.layer_norm_eps;
        let stem_conv = conv2d(
            &(p / "stem" / 0),
            cfg.in_channels,
            cfg.dims[0],
            cfg.patch_size,
            cfg.patch_size,
            0,
            1,
        );
        let stem_norm = layer_norm(&(p / "stem" / 1), cfg.dims[0], eps);
        let mut stages = Vec::with_capacity(cfg.dims.len());
        for (i, (&dim, &depth)) in cfg.dims.iter().zip(&cfg.depths).enumerate() {
            let sp = p / "stages" / i;
            let downsample = (i > 0).then(|| {
                let prev = cfg.dims[i - 1];
                let ds = &sp / "downsample";
                (
                    layer_norm(&(&ds / 0), prev, eps),
                    conv2d(&(&ds / 1), prev, dim, 2, 2, 0, 1),
                )
            });
            let blocks = (0..depth)
                .map(|j| Block::new(&(&sp / "blocks" / j), dim, cfg))
                .collect();
            stages.push(Stage { downsample, blocks });
        }
        let head_norm = layer_norm(&(p / "head" / "norm"), cfg.out_dim(), eps);
        ConvNext {
            stem_conv,
            stem_norm,
            stages,
            head_norm,
        }
    }

    /// `(N, 3, S, S)` normalised pixels to `(N, dims[-1])` pooled features.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let pixels = if memory_format_channels_last() {
            to_channels_last(pixels)
        } else {
            pixels.shallow_clone()
        };
        let mut x = layer_norm_2d(&self.stem_conv.forward(&pixels), &self.stem_norm);
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = layer_norm_2d(&x, norm).apply(conv);
            }
            for block in &stage.blocks {
                x = block.forward(&x);
            }
        }
        // Global average pool, then the head's LayerNorm over channels.
        x.mean_dim([2i64, 3].as_slice(), false, None)
            .apply(&self.head_norm)
    }
}
