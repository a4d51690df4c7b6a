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

/// The part of the CLIP loss of a batch of `N` pairs spread over several processes that
/// falls to `rows` of its rows: `(sum of the image->text cross-entropies of those rows + sum of
/// their text->image ones) / 2N`, so that the shares of disjoint rows covering the batch sum to
/// [`clip_loss`]. `real` (`[N]`, 0 or 1) marks padding rows, which take part in nothing: their
/// logits are masked out as columns, their cross-entropies weigh zero, and `N` counts only real
/// pairs. The embeddings are the gathered `[N, D]` L2-normalised float matrices.
pub fn clip_loss_share(
    image_emb: &Tensor,
    text_emb: &Tensor,
    real: &Tensor,
    logit_scale: &Tensor,
    first_row: i64,
    rows: i64,
) -> tch::Result<Tensor> {
    let padding = real.f_eq(0.0)?;
    // Zeroed, not just masked: a padding row's NaN would otherwise reach the real rows'
    // gradients through the matrix product (0 * NaN).
    let image_emb = image_emb.f_masked_fill(&padding.f_unsqueeze(1)?, 0.0)?;
    let text_emb = text_emb.f_masked_fill(&padding.f_unsqueeze(1)?, 0.0)?;
    let scale = logit_scale.f_exp()?.f_to_kind(Kind::Float)?;
    let targets = Tensor::f_arange_start(
        first_row,
        first_row + rows,
        (Kind::Int64, image_emb.device()),
    )?;
    let weights = real.f_narrow(0, first_row, rows)?.f_to_kind(Kind::Float)?;
    let column_padding = padding.f_unsqueeze(0)?;
    // Rows of one modality against every column of the other; padding columns get a logit
    // that no softmax sees (finite, so padding rows stay finite and weigh exactly zero).
    let summed_ce = |rows_of: &Tensor, columns_of: &Tensor| -> tch::Result<Tensor> {
        let logits = rows_of
            .f_narrow(0, first_row, rows)?
            .f_matmul(&columns_of.f_tr()?)?
            .f_mul(&scale)?
            .f_masked_fill(&column_padding, -1e9)?;
        logits
            .f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, -100, 0.0)?
            .f_mul(&weights)?
            .f_sum(Kind::Float)
    };
    let pairs = real.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    summed_ce(&image_emb, &text_emb)?
        .f_add(&summed_ce(&text_emb, &image_emb)?)?
        .f_div(&pairs.f_mul_scalar(2.0)?)
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
