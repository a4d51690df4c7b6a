//! Zero-shot classification: which of the candidate labels best describes each image.
//! Probabilities are liteCLIP's: a softmax over the labels of `exp(logit_scale) * cosine`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::liteclip::{Images, LiteClip};
use crate::zeroshot::fill_template;

/// `(label, probability)` pairs, most probable first.
pub type Ranking = Vec<(String, f64)>;

/// Text embeddings of recently used prompts: users call `predict` again and again with the
/// same labels, and a server answers many requests that share some; a prompt costs nothing
/// after its first use. Rows are kept one per prompt (copied out of the batch that computed
/// them, so one kept row does not pin a whole batch); the oldest prompt goes first.
pub struct PromptCache {
    entries: Mutex<PromptEntries>,
    capacity: usize,
}

#[derive(Default)]
struct PromptEntries {
    rows: HashMap<String, Tensor>,
    order: VecDeque<String>,
}

impl PromptCache {
    pub fn new(capacity: usize) -> Self {
        PromptCache {
            entries: Mutex::new(PromptEntries::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PromptEntries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The embeddings of `prompts`, one row each in order; the prompts not cached are encoded
    /// by `model` in one call. (A cache belongs to one model: the pipeline that owns it.)
    pub fn embeddings(&self, model: &LiteClip, prompts: &[String]) -> Result<Tensor> {
        let mut found: HashMap<&str, Tensor> = HashMap::with_capacity(prompts.len());
        let mut missing: Vec<&str> = Vec::new();
        {
            let entries = self.lock();
            for p in prompts {
                if found.contains_key(p.as_str()) || missing.contains(&p.as_str()) {
                    continue;
                }
                match entries.rows.get(p) {
                    Some(row) => {
                        found.insert(p, row.shallow_clone());
                    }
                    None => missing.push(p),
                }
            }
        }
        if !missing.is_empty() {
            let emb = model.encode_texts(&missing)?;
            let mut entries = self.lock();
            for (i, p) in missing.iter().enumerate() {
                let row = emb.f_get(i as i64)?.f_detach_copy()?;
                if !entries.rows.contains_key(*p) {
                    if entries.order.len() == self.capacity {
                        if let Some(old) = entries.order.pop_front() {
                            entries.rows.remove(&old);
                        }
                    }
                    entries.order.push_back(p.to_string());
                    entries.rows.insert(p.to_string(), row.shallow_clone());
                }
                found.insert(p, row);
            }
        }
        let rows: Vec<&Tensor> = prompts.iter().map(|p| &found[p.as_str()]).collect();
        Ok(Tensor::f_stack(&rows, 0)?)
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
    cache: &PromptCache,
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

/// Ranks a different set of candidates for each image (a server gathering requests that each
/// bring their own labels): one image pass for all images and one text pass for the prompts
/// not cached yet, then each image against its own candidates, cut at its own `top_k`.
pub fn zero_shot_each(
    model: &LiteClip,
    images: &Images,
    candidates: &[Candidates],
    top_k: &[usize],
    cache: &PromptCache,
) -> Result<Vec<Ranking>> {
    if top_k.len() != candidates.len() {
        return Err(Error::invalid(format!(
            "give one top_k per label set: {} label sets, {} top_k values",
            candidates.len(),
            top_k.len()
        )));
    }
    for (set, &k) in candidates.iter().zip(top_k) {
        check_labels(&set.labels, k)?;
    }
    let image_emb = model.encode(images)?;
    let n_images = image_emb.size()[0] as usize;
    if n_images != candidates.len() {
        return Err(Error::invalid(format!(
            "give one label set per image: {n_images} images, {} label sets",
            candidates.len()
        )));
    }
    // Every distinct prompt once, and where each set's prompts sit among them.
    let mut union: Vec<String> = Vec::new();
    let mut position: HashMap<&str, i64> = HashMap::new();
    let mut rows_of = Vec::with_capacity(candidates.len());
    for set in candidates {
        let rows: Vec<i64> = set
            .prompts
            .iter()
            .map(|p| {
                *position.entry(p.as_str()).or_insert_with(|| {
                    union.push(p.clone());
                    union.len() as i64 - 1
                })
            })
            .collect();
        rows_of.push(rows);
    }
    let text_emb = cache.embeddings(model, &union)?;
    let scale = model.logit_scale()?;
    let mut out = Vec::with_capacity(candidates.len());
    for (i, (set, rows)) in candidates.iter().zip(&rows_of).enumerate() {
        let index = Tensor::from_slice(rows).to_device(text_emb.device());
        let texts = text_emb.f_index_select(0, &index)?;
        let image = image_emb.f_narrow(0, i as i64, 1)?;
        let ranking = rank(&image, &texts, scale, &set.labels, top_k[i])?;
        out.extend(ranking);
    }
    Ok(out)
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

    fn nano() -> LiteClip {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(3);
        LiteClip::new(crate::config::LiteClipConfig::nano(), tch::Device::Cpu).unwrap()
    }

    fn image(seed: u8) -> crate::image::ImageInput {
        let pixels = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([x as u8 * seed, y as u8 * 7, seed.wrapping_mul(31)])
        });
        crate::image::ImageInput::Pixels(pixels)
    }

    /// Each image against its own label set gives what ranking it alone against that set gives,
    /// whatever the other sets in the batch (shared, overlapping, cached or not).
    #[test]
    fn each_image_with_its_own_labels_matches_one_at_a_time() {
        let model = nano();
        let sets = [
            Candidates::new(labels(&["a cat", "a dog", "a car"]), None),
            Candidates::new(labels(&["a dog", "a boat"]), Some("a photo of {}")),
            Candidates::new(labels(&["a cat", "a dog", "a car"]), None),
        ];
        let images: Vec<_> = (1..=3).map(image).collect();
        let batch = Images::Inputs(images.clone());
        let cache = PromptCache::new(2); // smaller than the batch's prompts: evictions happen
        let got = zero_shot_each(&model, &batch, &sets, &[3, 1, 2], &cache).unwrap();
        for (i, set) in sets.iter().enumerate() {
            let alone = Images::Inputs(vec![images[i].clone()]);
            let fresh = PromptCache::new(16);
            let k = [3, 1, 2][i];
            let expected = zero_shot(&model, &alone, set, k, &fresh).unwrap().remove(0);
            assert_eq!(got[i].len(), k);
            for ((label, p), (want_label, want_p)) in got[i].iter().zip(&expected) {
                assert_eq!(label, want_label);
                assert!((p - want_p).abs() < 1e-5, "{p} vs {want_p}");
            }
        }
        let wrong = zero_shot_each(&model, &batch, &sets[..2], &[1, 1], &cache);
        assert!(wrong.is_err(), "two label sets for three images");
        assert!(zero_shot_each(&model, &batch, &sets, &[1, 1], &cache).is_err());
    }

    #[test]
    fn fewer_than_two_labels_or_no_top_k_are_refused() {
        assert!(check_labels(&labels(&["a"]), 1).is_err());
        assert!(check_labels(&labels(&["a", "b"]), 0).is_err());
        assert!(check_labels(&labels(&["a", "b"]), 1).is_ok());
    }
}
