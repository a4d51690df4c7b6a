//! liteCLIP's projection head, one per tower:
//! `x = Linear(x); return x + LayerNorm(Dropout(GELU(x)))`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::layers::{layer_norm, linear, LayerNorm, Linear};

#[derive(Debug)]
pub struct ProjectionHead {
    proj: Linear,
    ln: LayerNorm,
    dropout: f64,
}

impl ProjectionHead {
    pub fn new(p: &nn::Path, in_dim: i64, out_dim: i64, dropout: f64, eps: f64) -> Self {
        ProjectionHead {
            proj: linear(&(p / "proj"), in_dim, out_dim),
            ln: layer_norm(&(p / "ln"), out_dim, eps),
            dropout,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.proj.forward(x);
        let branch = x.gelu("none").dropout(self.dropout, train).apply(&self.ln);
        x + branch
    }
}
