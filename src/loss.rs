//! The contrastive loss of CLIP: symmetric cross-entropy over the `B x B` similarity logits of a
//! batch of matching (image, caption) pairs, the i-th image matching the i-th caption.

use tch::{Kind, Reduction, Tensor};

/// The largest logit scale CLIP allows (`exp(logit_scale) <= 100`).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// `logits_per_image = exp(logit_scale) * img @ txt^T` of L2-normalised embeddings.
pub fn logits(image_emb: &Tensor, text_emb: &Tensor, logit_scale: &Tensor) -> Tensor {
    logit_scale.exp() * image_emb.matmul(&text_emb.tr())
}

/// Mean of the image->text and text->image cross-entropies against the diagonal.
pub fn clip_loss(image_emb: &Tensor, text_emb: &Tensor, logit_scale: &Tensor) -> Tensor {
    let per_image = logits(image_emb, text_emb, logit_scale).to_kind(Kind::Float);
    let n = per_image.size()[0];
    let targets = Tensor::arange(n, (Kind::Int64, per_image.device()));
    let ce =
        |l: &Tensor| l.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
    (ce(&per_image) + ce(&per_image.tr())) / 2.0
}

/// Keeps `exp(logit_scale)` in `[1, MAX_LOGIT_SCALE]` (the CLIP paper clamps it at 100).
pub fn clamp_logit_scale(logit_scale: &mut Tensor) {
    tch::no_grad(|| {
        let _ = logit_scale.clamp_(0.0, MAX_LOGIT_SCALE.ln());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// log(sum(exp(row))) - row[target], computed by hand in f64.
    fn ce_by_hand(logits: &[Vec<f64>], transpose: bool) -> f64 {
        let n = logits.len();
        let at = |i: usize, j: usize| {
            if transpose {
                logits[j][i]
            } else {
                logits[i][j]
            }
        };
        (0..n)
            .map(|i| {
                let lse = (0..n).map(|j| at(i, j).exp()).sum::<f64>().ln();
                lse - at(i, i)
            })
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn matches_the_formula_on_known_embeddings() {
        // Three unit vectors in 2-D and a logit scale of ln(10).
        let img = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8]).view([3, 2]);
        let txt = Tensor::from_slice(&[0.8f32, 0.6, 0.0, 1.0, 1.0, 0.0]).view([3, 2]);
        let scale = Tensor::from_slice(&[10f32.ln()]).squeeze();
        let l: Vec<Vec<f64>> = [[0.8, 0.0, 1.0], [0.6, 1.0, 0.0], [0.96, 0.8, 0.6]]
            .iter()
            .map(|r| r.iter().map(|v| v * 10.0).collect())
            .collect();
        let expected = (ce_by_hand(&l, false) + ce_by_hand(&l, true)) / 2.0;
        let got = clip_loss(&img, &txt, &scale).double_value(&[]);
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn gradients_reach_embeddings_and_temperature() {
        let _rng = crate::torch_rng_lock();
        let img = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let txt = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let scale = Tensor::from_slice(&[2.0f32])
            .squeeze()
            .set_requires_grad(true);
        clip_loss(&img, &txt, &scale).backward();
        for t in [&img, &txt, &scale] {
            assert!(t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    #[test]
    fn clamps_at_one_hundred() {
        let mut s = Tensor::from_slice(&[7.0f32]);
        clamp_logit_scale(&mut s);
        assert!((s.exp().double_value(&[0]) - 100.0).abs() < 1e-3);
    }
}
