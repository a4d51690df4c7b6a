//! Zero-shot classification: which of the candidate labels best describes each image.
//! Probabilities are liteCLIP's: a softmax over the labels of `exp(logit_scale) * cosine`.

use std::collections::VecDeque;
use std::sync::Mutex;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::eval::fill_template;
use crate::image::ImageInput;
use crate::liteclip::LiteClip;

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
    images: &[ImageInput],
    candidates: &Candidates,
    top_k: usize,
    cache: &LabelCache,
) -> Result<Vec<Ranking>> {
    check_labels(&candidates.labels, top_k)?;
    rank_candidates(
        model,
        &model.encode_images(images)?,
        candidates,
        top_k,
        cache,
    )
}

/// [`zero_shot`] for images already preprocessed into a `(N, 3, S, S)` batch.
pub fn zero_shot_pixels(
    model: &LiteClip,
    pixels: &Tensor,
    candidates: &Candidates,
    top_k: usize,
    cache: &LabelCache,
) -> Result<Vec<Ranking>> {
    check_labels(&candidates.labels, top_k)?;
    rank_candidates(
        model,
        &model.encode_pixels(pixels)?,
        candidates,
        top_k,
        cache,
    )
}

fn rank_candidates(
    model: &LiteClip,
    image_emb: &Tensor,
    candidates: &Candidates,
    top_k: usize,
    cache: &LabelCache,
) -> Result<Vec<Ranking>> {
    let text_emb = cache.embeddings(model, &candidates.prompts)?;
    rank(
        image_emb,
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
