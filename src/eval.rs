//! Evaluation: image-text retrieval on a captioned data set (with the validation loss), and
//! zero-shot classification on a labelled image folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{epoch_samples, make_batches, CsvOptions, DataInfo, Dataset, Entry, ImageFolder};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::image::{DecodeMode, ImageInput};
use crate::image_embedding::embed_each;
use crate::json_options::from_json_named;
use crate::liteclip::LiteClip;
use crate::loss::clip_loss;
use crate::model::Precision;
use crate::text::TokenizedCaptions;
use crate::zeroshot::{class_embeddings, resolve_templates};

/// Retrieval metrics: R@K is the share of queries whose first correct answer ranks in the top
/// K. An image's correct answers are all of its captions (Flickr8k has five).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RetrievalMetrics {
    pub i2t_r1: f64,
    pub i2t_r5: f64,
    pub i2t_r10: f64,
    pub t2i_r1: f64,
    pub t2i_r5: f64,
    pub t2i_r10: f64,
    pub i2t_median_rank: f64,
    pub t2i_median_rank: f64,
    /// Mean contrastive loss over batches of the evaluation set.
    pub loss: f64,
    pub images: usize,
    pub captions: usize,
    /// Images that could not be decoded and were left out (with their captions).
    pub skipped_images: Vec<(PathBuf, String)>,
}

/// The images of a data set that could be embedded.
pub struct EmbeddedImages {
    /// `(n, embed_dim)`, L2-normalised, on the CPU.
    pub embeddings: Tensor,
    /// The data set entry behind each row.
    pub entries: Vec<usize>,
    /// Images that could not be decoded, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Embeds every image of `entries` (inference transform, decoded ahead of the model by
/// [`crate::image_embedding`]); images that cannot be decoded are reported and left out.
pub fn embed_entries(
    model: &LiteClip,
    entries: Arc<Dataset>,
    batch_size: usize,
) -> Result<EmbeddedImages> {
    let (size, decode) = (model.config().image_size as u32, model.decode());
    let mut parts = Vec::new();
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    embed_each(
        model,
        &entries.entries,
        batch_size.max(1),
        |entry| {
            let pixels = ImageInput::Path(entry.path.clone()).preprocess(size, decode);
            pixels.map(|p| ((), p)).map_err(|e| e.to_string())
        },
        |batch| {
            for (i, item) in batch.items.into_iter().enumerate() {
                let entry = batch.start + i;
                match item {
                    Ok(()) => kept.push(entry),
                    Err(reason) => skipped.push((entries.entries[entry].path.clone(), reason)),
                }
            }
            parts.push(batch.rows);
            Ok(())
        },
    )?;
    let embeddings = if parts.is_empty() {
        Tensor::f_zeros([0, model.config().embed_dim], (Kind::Float, Device::Cpu))?
    } else {
        Tensor::f_cat(&parts, 0)?
    };
    Ok(EmbeddedImages {
        embeddings,
        entries: kept,
        skipped,
    })
}

/// 0-based ranks of the right answers in an `(images, captions)` similarity matrix, where
/// `owner[c]` is the image (row) of caption c. Image->text: the rank of the image's
/// best-scoring own caption among all captions. Text->image: the rank of the caption's image
/// among all images. A rank counts the answers scoring strictly higher (ties favour the right
/// answer). Returns `(i2t, t2i)`, int64.
pub fn retrieval_ranks(sims: &Tensor, owner: &[i64]) -> Result<(Tensor, Tensor)> {
    let owner_t = Tensor::f_from_slice(owner)?;
    let t2i = sims.f_tr()?; // (captions, images)
    let own = t2i.f_gather(1, &owner_t.f_unsqueeze(1)?, false)?;
    let t2i_ranks =
        t2i.f_gt_tensor(&own)?
            .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?;
    let n_img = sims.size()[0];
    let is_own = Tensor::f_arange(n_img, (Kind::Int64, Device::Cpu))?
        .f_unsqueeze(1)?
        .f_eq_tensor(&owner_t.f_unsqueeze(0)?)?;
    let best_own = sims
        .f_masked_fill(&is_own.f_logical_not()?, f64::NEG_INFINITY)?
        .f_amax([1i64].as_slice(), true)?;
    let i2t_ranks =
        sims.f_gt_tensor(&best_own)?
            .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?;
    Ok((i2t_ranks, t2i_ranks))
}

/// Share of queries whose right answer ranks in the top `k` (0-based ranks below `k`).
pub fn recall_at(ranks: &Tensor, k: i64) -> Result<f64> {
    Ok(ranks
        .f_lt(k)?
        .f_to_kind(Kind::Float)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])?)
}

/// The median rank, 1-based as retrieval papers report it; of an even count, the lower of the
/// two middle ranks.
pub fn median_rank(ranks: &Tensor) -> Result<f64> {
    Ok(ranks
        .f_to_kind(Kind::Float)?
        .f_median()?
        .f_double_value(&[])?
        + 1.0)
}

/// The contrastive loss over the pairs a training epoch would see (in a fixed order), in
/// batches of `batch_size`, from embeddings already made: row `e` of `image_emb` is entry `e`
/// of `dataset`, and its captions start at row `first_caption[e]` of `text_emb`.
fn contrastive_loss(
    model: &LiteClip,
    dataset: &Dataset,
    image_emb: &Tensor,
    text_emb: &Tensor,
    first_caption: &[usize],
    batch_size: usize,
) -> Result<f64> {
    let scale = model.model().logit_scale().f_to_device(Device::Cpu)?;
    let (mut weighted, mut pairs) = (0.0, 0usize);
    for batch in make_batches(epoch_samples(dataset, 0, 0), batch_size) {
        let rows: Vec<i64> = batch.iter().map(|s| s.entry as i64).collect();
        let cols: Vec<i64> = batch
            .iter()
            .map(|s| (first_caption[s.entry as usize] + s.caption as usize) as i64)
            .collect();
        let img = image_emb.f_index_select(0, &Tensor::f_from_slice(&rows)?)?;
        let txt = text_emb.f_index_select(0, &Tensor::f_from_slice(&cols)?)?;
        let loss = tch::no_grad(|| clip_loss(&img, &txt, &scale));
        weighted += loss.f_double_value(&[])? * batch.len() as f64;
        pairs += batch.len();
    }
    Ok(weighted / pairs.max(1) as f64)
}

/// Image->text and text->image retrieval over a captioned data set, and its contrastive loss
/// in batches of `batch_size` (the validation loss of training).
pub fn retrieval(
    model: &LiteClip,
    dataset: &Dataset,
    batch_size: usize,
) -> Result<RetrievalMetrics> {
    if dataset.entries.is_empty() {
        return Err(Error::invalid("cannot evaluate an empty data set"));
    }
    let EmbeddedImages {
        embeddings: image_emb,
        entries: kept,
        skipped,
    } = embed_entries(model, Arc::new(dataset.clone()), batch_size)?;
    if kept.len() < 2 {
        return Err(Error::invalid(format!(
            "retrieval needs at least 2 readable images, found {}",
            kept.len()
        )));
    }
    // Captions of the readable images; `owner[c]` is the image row of caption c.
    let mut texts: Vec<&str> = Vec::new();
    let mut owner: Vec<i64> = Vec::new();
    let mut first_caption: Vec<usize> = Vec::new();
    for (row, &entry) in kept.iter().enumerate() {
        first_caption.push(texts.len());
        for c in &dataset.entries[entry].captions {
            texts.push(c);
            owner.push(row as i64);
        }
    }
    let text_emb = model.encode_texts(&texts)?;
    let sims = image_emb.f_matmul(&text_emb.f_tr()?)?; // (images, captions)
    let (i2t_ranks, t2i_ranks) = retrieval_ranks(&sims, &owner)?;

    let kept_set =
        Dataset::from_entries(kept.iter().map(|&e| dataset.entries[e].clone()).collect());
    let loss = contrastive_loss(
        model,
        &kept_set,
        &image_emb,
        &text_emb,
        &first_caption,
        batch_size,
    )?;

    Ok(RetrievalMetrics {
        i2t_r1: recall_at(&i2t_ranks, 1)?,
        i2t_r5: recall_at(&i2t_ranks, 5)?,
        i2t_r10: recall_at(&i2t_ranks, 10)?,
        t2i_r1: recall_at(&t2i_ranks, 1)?,
        t2i_r5: recall_at(&t2i_ranks, 5)?,
        t2i_r10: recall_at(&t2i_ranks, 10)?,
        i2t_median_rank: median_rank(&i2t_ranks)?,
        t2i_median_rank: median_rank(&t2i_ranks)?,
        loss,
        images: kept.len(),
        captions: texts.len(),
        skipped_images: skipped,
    })
}

/// Zero-shot classification results on a labelled image folder.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ZeroShotMetrics {
    pub top1: f64,
    pub top5: f64,
    pub classes: Vec<String>,
    /// Top-1 accuracy per class (NaN-free: classes without images are absent from the folder).
    pub per_class: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u32>>,
    pub images: usize,
    pub templates: Vec<String>,
    pub skipped_images: Vec<(PathBuf, String)>,
}

pub fn zero_shot(
    model: &LiteClip,
    folder: &ImageFolder,
    templates: &[String],
    batch_size: usize,
) -> Result<ZeroShotMetrics> {
    let n_classes = folder.classes.len();
    let prototypes = class_embeddings(model, &folder.classes, templates)?;
    let entries = Dataset::from_entries(
        folder
            .images
            .iter()
            .map(|(path, _)| Entry {
                path: path.clone(),
                captions: Vec::new(),
            })
            .collect(),
    );
    let EmbeddedImages {
        embeddings: image_emb,
        entries: kept,
        skipped,
    } = embed_entries(model, Arc::new(entries), batch_size)?;
    if kept.is_empty() {
        return Err(Error::invalid("no readable images in the folder"));
    }
    let logits = image_emb.f_matmul(&prototypes.f_tr()?)?;
    let k = 5.min(n_classes) as i64;
    let (_, top) = logits.f_topk(k, 1, true, true)?;
    let top: Vec<i64> = Vec::<i64>::try_from(top.f_reshape([-1])?)?;
    let mut confusion = vec![vec![0u32; n_classes]; n_classes];
    let (mut hits1, mut hits5) = (0usize, 0usize);
    for (row, &image) in kept.iter().enumerate() {
        let truth = folder.images[image].1;
        let preds = &top[row * k as usize..(row + 1) * k as usize];
        confusion[truth][preds[0] as usize] += 1;
        hits1 += usize::from(preds[0] as usize == truth);
        hits5 += usize::from(preds.iter().any(|&p| p as usize == truth));
    }
    let per_class = per_class_accuracy(&confusion);
    let n = kept.len() as f64;
    Ok(ZeroShotMetrics {
        top1: hits1 as f64 / n,
        top5: hits5 as f64 / n,
        classes: folder.classes.clone(),
        per_class,
        confusion,
        images: kept.len(),
        templates: templates.to_vec(),
        skipped_images: skipped,
    })
}

/// Accuracy of each class from a confusion matrix (`confusion[true][predicted]`); 0 for a class
/// with no images.
pub fn per_class_accuracy(confusion: &[Vec<u32>]) -> Vec<f64> {
    confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: u32 = row.iter().sum();
            if n == 0 {
                0.0
            } else {
                f64::from(row[c]) / f64::from(n)
            }
        })
        .collect()
}

/// Tokenizes the captions of a data set once, in entry order, with per-entry offsets.
pub fn tokenize_captions(
    model: &LiteClip,
    dataset: &Dataset,
) -> Result<(TokenizedCaptions, Vec<usize>)> {
    let mut offsets = Vec::with_capacity(dataset.entries.len());
    let mut texts: Vec<&str> = Vec::with_capacity(dataset.num_captions());
    for e in &dataset.entries {
        offsets.push(texts.len());
        texts.extend(e.captions.iter().map(String::as_str));
    }
    Ok((TokenizedCaptions::new(model.tokenizer(), &texts)?, offsets))
}

/// Which images of a captioned data set to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Split {
    /// The validation images of the split a training run made (same fraction and seed).
    Val,
    Train,
    All,
}

crate::serde_by_name!(Split);

impl Split {
    pub const NAMES: [&'static str; 3] = ["val", "train", "all"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "val" => Ok(Split::Val),
            "train" => Ok(Split::Train),
            "all" => Ok(Split::All),
            other => Err(Error::invalid(format!(
                "split must be \"val\", \"train\" or \"all\", got {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Val => "val",
            Split::Train => "train",
            Split::All => "all",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Task {
    /// Image-text retrieval on a captioned data set.
    Retrieval,
    /// Zero-shot classification of a folder with one sub-folder of images per class.
    ZeroShot,
}

crate::serde_by_name!(Task);

impl Task {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "retrieval" => Ok(Task::Retrieval),
            "zero-shot" | "zero_shot" => Ok(Task::ZeroShot),
            other => Err(Error::invalid(format!(
                "task must be \"retrieval\" or \"zero-shot\", got {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Retrieval => "retrieval",
            Task::ZeroShot => "zero-shot",
        }
    }
}

/// Everything `liteclip.evaluate` takes, with its defaults (defined here only). Retrieval
/// options left `None` come from the checkpoint's record of its training data (see
/// [`DataInfo`]), then from the training defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalOptions {
    pub checkpoint: PathBuf,
    /// The data set; for retrieval, by default the one the checkpoint's run trained on.
    pub data: Option<PathBuf>,
    /// Which images of a captioned set (see [`EvalOptions::split`]).
    pub split: Option<Split>,
    pub task: Task,
    /// Zero-shot prompt templates (`None`: one, "a photo of a {}."; `["ensemble"]`: 18).
    pub templates: Option<Vec<String>>,
    pub batch_size: usize,
    pub device: DeviceSpec,
    pub precision: Precision,
    pub val_fraction: Option<f64>,
    pub seed: Option<u64>,
    pub image_column: Option<String>,
    pub caption_column: Option<String>,
    pub images_dir: Option<PathBuf>,
    /// How images are decoded (scaled JPEG decoding, or every pixel).
    pub decode: DecodeMode,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            checkpoint: PathBuf::new(),
            data: None,
            split: None,
            task: Task::Retrieval,
            templates: None,
            batch_size: 64,
            device: DeviceSpec::Auto,
            precision: Precision::Fp32,
            val_fraction: None,
            seed: None,
            image_column: None,
            caption_column: None,
            images_dir: None,
            decode: DecodeMode::default(),
        }
    }
}

impl EvalOptions {
    /// The split evaluated: as given, else the run's validation images when the data is the
    /// run's own, and every image of a data set given with `data=` (a test set is evaluated
    /// whole, not cut by the run's `val_fraction`).
    pub fn split(&self) -> Split {
        self.split.unwrap_or(match self.data {
            None => Split::Val,
            Some(_) => Split::All,
        })
    }

    /// Reads options from a JSON object (see [`crate::json_options::from_json_named`]).
    pub fn from_json(text: &str) -> Result<Self> {
        let options: EvalOptions = from_json_named(text)?;
        if options.batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        if options.checkpoint.as_os_str().is_empty() {
            return Err(Error::invalid("checkpoint is required"));
        }
        Ok(options)
    }
}

/// Loads the checkpoint and evaluates it as `options` say.
pub fn evaluate_checkpoint(options: &EvalOptions) -> Result<Report> {
    let mut model = LiteClip::load(&options.checkpoint, options.device.resolve()?, None)?;
    model.set_precision(options.precision)?;
    model.set_decode(options.decode);
    evaluate(&model, options)
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Report {
    Retrieval(RetrievalMetrics),
    ZeroShot(ZeroShotMetrics),
}

/// The data set recorded with a checkpoint (what `evaluate` reads when no `data=` is given)
/// must still be there; when it is not, the error says to pass `data=`.
fn check_recorded_data_exists(
    options: &EvalOptions,
    data: &Path,
    info: Option<&DataInfo>,
) -> Result<()> {
    let val_data = info.and_then(|i| i.val_data.as_deref());
    let read = match (options.task, options.split(), val_data) {
        (Task::Retrieval, Split::Val, Some(val_data)) => val_data,
        _ => data,
    };
    if read.exists() {
        return Ok(());
    }
    Err(Error::FileNotFound {
        path: read.to_owned(),
        hint: Some(format!(
            "{} recorded this as its data set, and it is no longer there: pass data= (the \
             folder or CSV to evaluate on)",
            options.checkpoint.display()
        )),
    })
}

/// Evaluates a loaded model as `options` say (its `checkpoint` is where the record of the
/// training data is looked for).
pub fn evaluate(model: &LiteClip, options: &EvalOptions) -> Result<Report> {
    let info = DataInfo::read(&options.checkpoint);
    let data = options
        .data
        .clone()
        .or_else(|| info.as_ref().map(|i| i.data.clone()))
        .ok_or_else(|| {
            Error::invalid("data= is needed: this checkpoint does not record its data set")
        })?;
    if options.data.is_none() && !info.as_ref().is_some_and(|i| i.shards) {
        check_recorded_data_exists(options, &data, info.as_ref())?;
    }
    match options.task {
        Task::Retrieval => {
            let defaults = info.as_ref().map(DataInfo::csv_options).unwrap_or_default();
            let csv = CsvOptions {
                image_column: options
                    .image_column
                    .clone()
                    .unwrap_or(defaults.image_column),
                caption_column: options
                    .caption_column
                    .clone()
                    .unwrap_or(defaults.caption_column),
                images_dir: options.images_dir.clone().or(defaults.images_dir),
            };
            // A run with its own validation set: that set is its "val" split.
            let recorded_val = info.as_ref().and_then(|i| i.val_data.clone());
            if let (Split::Val, None, Some(val_data)) =
                (options.split(), &options.data, recorded_val)
            {
                let chosen = Dataset::open(&val_data, &csv)?;
                return Ok(Report::Retrieval(retrieval(
                    model,
                    &chosen,
                    options.batch_size.max(2),
                )?));
            }
            if options.data.is_none() && info.as_ref().is_some_and(|i| i.shards) {
                return Err(Error::invalid(
                    "this run trained on WebDataset shards, which are not split for validation: \
                     pass data= (a captioned folder or CSV), or train with val_data= to record \
                     a validation set",
                ));
            }
            let dataset = Dataset::open(&data, &csv)?;
            let fraction = options
                .val_fraction
                .or(info.as_ref().map(|i| i.val_fraction))
                .unwrap_or(0.2);
            let seed = options.seed.or(info.as_ref().map(|i| i.seed)).unwrap_or(0);
            let chosen = match options.split() {
                Split::All => dataset,
                Split::Val => dataset.split(fraction, seed)?.1,
                Split::Train => dataset.split(fraction, seed)?.0,
            };
            Ok(Report::Retrieval(retrieval(
                model,
                &chosen,
                options.batch_size.max(2),
            )?))
        }
        Task::ZeroShot => {
            let folder = ImageFolder::open(&data)?;
            let templates = resolve_templates(options.templates.clone());
            Ok(Report::ZeroShot(zero_shot(
                model,
                &folder,
                &templates,
                options.batch_size.max(1),
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 images, 4 captions: captions 0 and 1 are image 0's, caption 2 image 1's, caption 3
    /// image 2's. Every expected rank is worked out by hand from the matrix.
    #[test]
    fn ranks_recalls_and_medians_follow_their_definitions() {
        #[rustfmt::skip]
        let sims = Tensor::from_slice(&[
            // c0   c1   c2   c3
            0.9f32, 0.1, 0.5, 0.2, // image 0: own best c0 scores highest: rank 0
            0.3, 0.8, 0.4, 0.1,    // image 1: own c2 (0.4), beaten by c1: rank 1
            0.2, 0.6, 0.7, 0.5,    // image 2: own c3 (0.5), beaten by c1, c2: rank 2
        ])
        .view([3, 4]);
        let (i2t, t2i) = retrieval_ranks(&sims, &[0, 0, 1, 2]).unwrap();
        assert_eq!(Vec::<i64>::try_from(&i2t).unwrap(), [0, 1, 2]);
        // Columns: c0 [.9 .3 .2] own image 0: 0; c1 [.1 .8 .6] own 0: 2; c2 [.5 .4 .7] own 1:
        // 2; c3 [.2 .1 .5] own 2: 0.
        assert_eq!(Vec::<i64>::try_from(&t2i).unwrap(), [0, 2, 2, 0]);
        assert!((recall_at(&i2t, 1).unwrap() - 1.0 / 3.0).abs() < 1e-6);
        assert!((recall_at(&i2t, 2).unwrap() - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(recall_at(&i2t, 5).unwrap(), 1.0);
        assert_eq!(recall_at(&t2i, 1).unwrap(), 0.5);
        assert_eq!(recall_at(&t2i, 3).unwrap(), 1.0);
        assert_eq!(median_rank(&i2t).unwrap(), 2.0);
        // [0, 0, 2, 2]: the lower middle rank, 1-based.
        assert_eq!(median_rank(&t2i).unwrap(), 1.0);
    }

    #[test]
    fn per_class_accuracy_is_the_diagonal_over_the_row() {
        let confusion = vec![vec![3, 1, 0], vec![0, 0, 0], vec![1, 1, 2]];
        assert_eq!(per_class_accuracy(&confusion), [0.75, 0.0, 0.5]);
    }

    #[test]
    fn a_tie_counts_for_the_right_answer() {
        let sims = Tensor::from_slice(&[0.5f32, 0.5, 0.5, 0.5]).view([2, 2]);
        let (i2t, t2i) = retrieval_ranks(&sims, &[0, 1]).unwrap();
        assert_eq!(Vec::<i64>::try_from(&i2t).unwrap(), [0, 0]);
        assert_eq!(Vec::<i64>::try_from(&t2i).unwrap(), [0, 0]);
    }

    #[test]
    fn options_read_from_json_with_defaults() {
        let o = EvalOptions::from_json(r#"{"checkpoint": "c", "task": "zero-shot"}"#).unwrap();
        assert_eq!(o.task, Task::ZeroShot);
        assert_eq!((o.split, o.split()), (None, Split::Val));
        let given = EvalOptions::from_json(r#"{"checkpoint": "c", "data": "test/"}"#).unwrap();
        assert_eq!(given.split(), Split::All);
        assert!(matches!(
            EvalOptions::from_json(r#"{"checkpoint": "c", "split": "test"}"#),
            Err(Error::InvalidArgument(m)) if m.starts_with("split:")
        ));
    }
}
