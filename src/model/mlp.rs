//! `fc2(GELU(fc1(x)))`, the feed-forward part of both towers (exact erf GELU), and most of
//! their arithmetic.
//!
//! Three ways through it:
//! - training (autograd records the ops): the plain three steps;
//! - inference on the CPU: the same ops on chunks of rows, so that the hidden activations (four
//!   times the width) stay in cache and their buffer is reused. Whole-batch, the first ConvNeXt
//!   stage's hidden tensor is 77 MB at batch 16: writing it, applying GELU and reading it back
//!   went to memory, and its fresh pages had to be faulted in at every call;
//! - int8 on the CPU: fused around the int8 products ([`super::int8::mlp`]).

use tch::nn::Module;
use tch::{Device, Kind, Tensor};

use super::layers::Linear;
use super::precision::compute_kind;

#[derive(Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        if let (Some(fc1), Some(fc2)) = (self.fc1.int8_weight(x), self.fc2.int8_weight(x)) {
            return super::int8::mlp(fc1, fc2, x);
        }
        if x.device() == Device::Cpu && !self.records_grad(x) {
            return self.forward_in_chunks(x);
        }
        x.apply(&self.fc1).gelu("none").apply(&self.fc2)
    }
}

impl Mlp {
    /// Whether autograd would record this layer's ops on `x` (training, or gradients wanted
    /// for the input): the chunked path writes into buffers, which autograd cannot follow.
    fn records_grad(&self, x: &Tensor) -> bool {
        x.requires_grad() || (self.fc1.bs.narrow(0, 0, 1) * 1.0).requires_grad()
    }

    /// The three steps on chunks of rows, in the compute dtype.
    fn forward_in_chunks(&self, x: &Tensor) -> Tensor {
        let kind = compute_kind();
        let (w1, b1) = (self.fc1.ws.to_kind(kind), self.fc1.bs.to_kind(kind));
        let (w2, b2) = (self.fc2.ws.to_kind(kind), self.fc2.bs.to_kind(kind));
        let (hidden, n) = (w1.size()[0], w2.size()[0]);
        let (rows, shape) = as_rows(x, kind);
        let m = rows.size()[0];
        let out = Tensor::empty([m, n], (kind, Device::Cpu));
        let chunk = chunk_rows(hidden as usize, m as usize);
        let buffer = Tensor::empty([chunk as i64, hidden], (kind, Device::Cpu));
        let (w1t, w2t) = (w1.tr(), w2.tr());
        for (start, len) in row_chunks(m as usize, chunk) {
            let (start, len) = (start as i64, len as i64);
            let mut h = buffer.narrow(0, 0, len);
            let _ = b1.addmm_out(&h, &rows.narrow(0, start, len), &w1t);
            let _ = h.gelu_("none");
            let _ = b2.addmm_out(&out.narrow(0, start, len), &h, &w2t);
        }
        with_last_dim(out, shape, n)
    }
}

/// `x` (`[..., k]`) as a contiguous `[rows, k]` matrix of `kind`, and its shape (for
/// [`with_last_dim`]).
pub(super) fn as_rows(x: &Tensor, kind: Kind) -> (Tensor, Vec<i64>) {
    let shape = x.size();
    let k = *shape.last().expect("a linear layer's input has dimensions");
    (x.to_kind(kind).contiguous().view([-1, k]), shape)
}

/// `out` (`[rows, n]`) in the input's `shape` with the last dimension `n`.
pub(super) fn with_last_dim(out: Tensor, mut shape: Vec<i64>, n: i64) -> Tensor {
    *shape.last_mut().expect("as_rows took a last dimension") = n;
    out.view(shape.as_slice())
}

/// Rows per chunk for a hidden layer `width` wide: about 1 MB of fp32 (measured best for
/// fp32 on the ConvNeXt stages), at least 256 rows (below that the products lose efficiency),
/// at most the `rows` there are.
pub(super) fn chunk_rows(width: usize, rows: usize) -> usize {
    ((1 << 18) / width.max(1)).max(256).min(rows.max(1))
}

/// `(start, len)` of each chunk of `rows` rows.
pub(super) fn row_chunks(rows: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rows)
        .step_by(chunk.max(1))
        .map(move |start| (start, chunk.min(rows - start)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::linear;
    use tch::nn;

    fn mlp(vs: &nn::VarStore, width: i64, hidden: i64) -> Mlp {
        let root = vs.root();
        Mlp {
            fc1: linear(&(&root / "fc1"), width, hidden),
            fc2: linear(&(&root / "fc2"), hidden, width),
        }
    }

    /// Inference in chunks gives the plain three steps' result (several chunks and a partial
    /// last one), and training still gets gradients through the plain path.
    #[test]
    fn chunked_inference_matches_the_plain_steps_and_training_keeps_gradients() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = mlp(&vs, 32, 1024); // 256 rows per chunk
        let x = Tensor::randn([3, 250, 32], (tch::Kind::Float, Device::Cpu));
        let plain = x.apply(&layer.fc1).gelu("none").apply(&layer.fc2);
        let chunked = tch::no_grad(|| layer.forward(&x));
        assert_eq!(chunked.size(), [3, 250, 32]);
        let diff = (&chunked - &plain).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert!(!chunked.requires_grad());
        let trained = layer.forward(&x);
        assert!(trained.requires_grad());
        trained.sum(tch::Kind::Float).backward();
        assert!(
            layer
                .fc1
                .ws
                .grad()
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}
