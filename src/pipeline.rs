//! Zero-shot classification: which of the candidate labels best describes each image.
//! Probabilities are liteCLIP's: a softmax over the labels of `exp(logit_scale) * cosine`.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::image::ImageInput;
use crate::liteclip::LiteClip;

/// `(label, probability)` pairs, most probable first.
pub type Ranking = Vec<(String, f64)>;

/// Ranks `labels` for every image; at most `top_k` pairs per image.
pub fn zero_shot(
    model: &LiteClip,
    images: &[ImageInput],
    labels: &[String],
    top_k: usize,
) -> Result<Vec<Ranking>> {
    if labels.len() < 2 {
        return Err(Error::invalid(format!(
            "provide at least 2 labels to choose from, got {}",
            labels.len()
        )));
    }
    if top_k == 0 {
        return Err(Error::invalid("top_k must be at least 1"));
    }
    let texts: Vec<&str> = labels.iter().map(String::as_str).collect();
    let text_emb = model.encode_texts(&texts)?;
    let image_emb = model.encode_images(images)?;
    rank(&image_emb, &text_emb, model.logit_scale()?, labels, top_k)
}

/// Softmax over labels of the scaled similarities, sorted; ties keep the label order.
pub fn rank(
    image_emb: &Tensor,
    text_emb: &Tensor,
    logit_scale: f64,
    labels: &[String],
    top_k: usize,
) -> Result<Vec<Ranking>> {
    let logits = image_emb
        .f_matmul(&text_emb.f_tr()?)?
        .f_mul_scalar(logit_scale)?;
    let probs = logits.f_softmax(1, Kind::Float)?;
    let (n, m) = (probs.size()[0], probs.size()[1] as usize);
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let row = probs.f_get(i)?;
        let mut values = vec![0f32; m];
        row.f_copy_data(&mut values, m)?;
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        out.push(
            order
                .into_iter()
                .take(top_k)
                .map(|j| (labels[j].clone(), f64::from(values[j])))
                .collect(),
        );
    }
    Ok(out)
}
