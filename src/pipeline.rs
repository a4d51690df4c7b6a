//! Zero-shot classification: which of the candidate labels best describes each image.
//! Probabilities are liteCLIP's: a softmax over the labels of `exp(logit_scale) * cosine`.

use std::collections::VecDeque;
use std::sync::Mutex;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::eval::fill_template;
use crate::liteclip::{Images, LiteClip};

/// `(label, probability)` pairs, most probable first.
pub type Ranking = Vec<(String, f64)>;

/// Text embeddings of recently used label sets: users call `predict` again and again with the
/// same labels, and the labels then cost nothing after the first call.
pub struct LabelCache {
    entries: Mutex<VecDeque<(Vec<String>, Tensor)>>,
    capacity: usize,
}

impl LabelCache {
    pub fn new(capacity: usize) -> Self {
        LabelCache {
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
        }
    }

    /// The embeddings of `labels`, computed by `model` on a miss. (A cache belongs to one
    /// model: the pipeline that owns it.)
    pub fn embeddings(&self, model: &LiteClip, labels: &[String]) -> Result<Tensor> {
        let lock = || self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, emb)) = lock().iter().find(|(k, _)| k.as_slice() == labels) {
            return Ok(emb.shallow_clone());
        }
        let texts: Vec<&str> = labels.iter().map(String::as_str).collect();
        let emb = model.encode_texts(&texts)?;
        let mut entries = lock();
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back((labels.to_vec(), emb.shallow_clone()));
        Ok(emb)
    }
}

fn check_labels(labels: &[String], top_k: usize) -> Result<()> {
    if labels.len() < 2 {
        return Err(Error::invalid(format!(
            "provide at least 2 labels to choose from, got {}",
            labels.len()
        )));
    }
    if top_k == 0 {
        return Err(Error::invalid("top_k must be at least 1"));
    }
    Ok(())
}

/// What a zero-shot ranking chooses between: labels as returned to the user, and the texts
/// actually embedded for them (the labels themselves, or the labels put into a template such
/// as "a photo of a {}").
pub struct Candidates {
    pub labels: Vec<String>,
    pub prompts: Vec<String>,
}

impl Candidates {
    pub fn new(labels: Vec<String>, template: Option<&str>) -> Self {
        let prompts = match template {
            Some(t) => labels.iter().map(|l| fill_template(t, l)).collect(),
            None => labels.clone(),
        };
        Candidates { labels, prompts }
    }
}

/// Ranks the candidates for every image; at most `top_k` pairs per image.
pub fn zero_shot(
    model: &LiteClip,
    images: &Images,
    candidates: &Candidates,
    top_k: usize,
    cache: &LabelCache,
) -> Result<Vec<Ranking>> {
    check_labels(&candidates.labels, top_k)?;
    let image_emb = model.encode(images)?;
    let text_emb = cache.embeddings(model, &candidates.prompts)?;
    rank(
        &image_emb,
        &text_emb,
        model.logit_scale()?,
        &candidates.labels,
        top_k,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Probabilities are a softmax over labels of `scale * cosine`, worked out here in f64;
    /// the ranking is most probable first, ties in label order, cut at `top_k`.
    #[test]
    fn ranking_is_the_softmax_of_scaled_similarities() {
        let img = Tensor::from_slice(&[1.0f32, 0.0, 0.6, 0.8]).view([2, 2]);
        // Labels a and c have the same embedding: a tie.
        let txt = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0]).view([3, 2]);
        let scale = 3.0;
        let got = rank(&img, &txt, scale, &labels(&["a", "b", "c"]), 2).unwrap();
        let softmax = |logits: [f64; 3]| {
            let z: f64 = logits.iter().map(|l| l.exp()).sum();
            logits.map(|l| l.exp() / z)
        };
        // Image 0 = (1, 0): cosines a 1, b 0, c 1.
        let p0 = softmax([scale, 0.0, scale]);
        assert_eq!(got[0].len(), 2);
        assert_eq!((got[0][0].0.as_str(), got[0][1].0.as_str()), ("a", "c"));
        assert!((got[0][0].1 - p0[0]).abs() < 1e-6 && (got[0][1].1 - p0[2]).abs() < 1e-6);
        // Image 1 = (0.6, 0.8): cosines a 0.6, b 0.8, c 0.6.
        let p1 = softmax([0.6 * scale, 0.8 * scale, 0.6 * scale]);
        assert_eq!((got[1][0].0.as_str(), got[1][1].0.as_str()), ("b", "a"));
        assert!((got[1][0].1 - p1[1]).abs() < 1e-6 && (got[1][1].1 - p1[0]).abs() < 1e-6);
        // All labels: the probabilities sum to one.
        let all = rank(&img, &txt, scale, &labels(&["a", "b", "c"]), 10).unwrap();
        assert!((all[1].iter().map(|(_, p)| p).sum::<f64>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fewer_than_two_labels_or_no_top_k_are_refused() {
        assert!(check_labels(&labels(&["a"]), 1).is_err());
        assert!(check_labels(&labels(&["a", "b"]), 0).is_err());
        assert!(check_labels(&labels(&["a", "b"]), 1).is_ok());
    }
}
