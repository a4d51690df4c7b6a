//! Every training option and its default, defined once.
//!
//! `TrainOptions` is what the trainer runs on and what the Python binding receives (as JSON, so
//! the binding holds no copy of the defaults); the Python `train()` signature, its docstring,
//! the stub and the `liteclip train` flags are checked against [`TrainOptions::default`] by
//! tests (`tests/test_options.py`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::source::DataSpec;
use crate::data::CsvOptions;
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::image::DecodeMode;
use crate::json_options::from_json_named;
use crate::model::{Precision, TowerLocks};
use crate::train::optim::{OptimizerKind, Schedule};

/// The original liteCLIP's learning rate, for towers that start from trained weights.
pub const PRETRAINED_LR: f64 = 2e-4;
/// For towers that start from random weights: ten times the fine-tuning one. It trains only
/// with a warm-up (a constant 2e-3 from the first step collapses: the loss stays at
/// ln(batch)), which is why warm-up and cosine decay are the defaults.
pub const SCRATCH_LR: f64 = 2e-3;
/// Share of a run's steps spent warming up when `warmup_steps` is not given...
pub const WARMUP_SHARE: f64 = 0.1;
/// ... and at most this many (open_clip's default warm-up), for long runs.
pub const MAX_AUTO_WARMUP: i64 = 10_000;

/// Everything `liteclip.train` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// A Flickr8k-layout folder, a CSV of image paths and captions, or WebDataset shards (a
    /// `.tar`, a brace pattern or glob, a folder of `.tar` files, or a list of them).
    pub data: DataSpec,
    /// The run folder: `best/`, `last/`, `metrics.jsonl`.
    pub output: PathBuf,
    /// Preset name or config JSON path.
    pub model: String,
    pub epochs: usize,
    /// Pairs per step (per rank when data-parallel).
    pub batch_size: usize,
    /// Peak learning rate; None: [`PRETRAINED_LR`] when the towers start from trained weights
    /// (`init`, `image_weights`, `text_weights`), else [`SCRATCH_LR`].
    pub lr: Option<f64>,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0 to the peak rate; None: [`WARMUP_SHARE`] of the run's
    /// steps, at most [`MAX_AUTO_WARMUP`].
    pub warmup_steps: Option<i64>,
    /// After the warm-up: cosine decay to 0 at the last step, or constant.
    pub schedule: Schedule,
    /// Share of images (not caption rows) held out for validation.
    pub val_fraction: f64,
    /// A separate validation set (same layouts as `data`); then `data` is trained on whole and
    /// `val_fraction` is not used.
    pub val_data: Option<PathBuf>,
    pub seed: u64,
    pub device: DeviceSpec,
    pub precision: PrecisionChoice,
    /// Start from this checkpoint.
    pub init: Option<PathBuf>,
    /// timm ConvNeXt weights for the image tower.
    pub image_weights: Option<PathBuf>,
    /// Hugging Face BERT weights for the text tower.
    pub text_weights: Option<PathBuf>,
    /// Stop after this many epochs without a better validation loss (None: never).
    pub early_stopping_patience: Option<usize>,
    /// Random resized crops instead of the center crop.
    pub augment: bool,
    pub resume: Resume,
    /// CSV column of image paths.
    pub image_column: String,
    /// CSV column of captions.
    pub caption_column: String,
    /// Folder the image paths are relative to.
    pub images_dir: Option<PathBuf>,
    /// Batches prepared ahead of the device.
    pub prefetch: usize,
    /// Cap on steps per epoch (quick runs, benchmarks); None: the whole epoch.
    pub max_steps_per_epoch: Option<usize>,
    /// Skip (and count) batches whose loss is NaN or infinite instead of stopping.
    pub skip_nonfinite: bool,
    /// Data-parallel runs: each rank computes only its own rows of the global loss (open_clip's
    /// `--local-loss`); the gradient is the same.
    pub local_loss: bool,
    /// Gradient caching (GradCache, open_clip's `--accum-freq`): each step trains on one
    /// contrastive batch of `accum_steps * batch_size` pairs while only `batch_size` of them
    /// are in the towers' activations at once.
    pub accum_steps: usize,
    /// Also save `last/` every this many steps inside an epoch, so that `resume` continues
    /// from there (None: at epoch ends only).
    pub checkpoint_every: Option<usize>,
    /// An ImageFolder (one sub-folder per class) classified zero-shot at each epoch's end.
    pub zero_shot_data: Option<PathBuf>,
    /// Its prompt templates (None: "a photo of a {}."; `["ensemble"]`: the 18 built in).
    pub zero_shot_templates: Option<Vec<String>>,
    /// What picks `best/` and drives early stopping.
    pub monitor: Monitor,
    /// Shards: streams per process, each reading its own shards (shards are dealt over ranks x
    /// workers); a resume inside an epoch is exact with the same number.
    pub workers: usize,
    /// Shards: samples each stream shuffles together (a block, shuffled by seed, epoch and
    /// block).
    pub shuffle_buffer: usize,
    /// Shards: pairs per epoch over all ranks (streams start their shards again when they end);
    /// None: one pass over the shards.
    pub samples_per_epoch: Option<usize>,
    /// How training and validation images are decoded (scaled JPEG decoding, or every pixel).
    pub decode: DecodeMode,
    /// Lock the image backbone (LiT): no gradient, no optimizer state, eval mode.
    pub lock_image: bool,
    /// With `lock_image`: its last this many stages still train.
    pub lock_image_unlocked_stages: usize,
    /// Lock the text backbone.
    pub lock_text: bool,
    /// With `lock_text`: its last this many layers still train.
    pub lock_text_unlocked_layers: usize,
}

/// The figure that decides which epoch is best (and whether training stops early).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Monitor {
    /// The validation loss, lower is better.
    ValLoss,
    /// Zero-shot top-1 accuracy on `zero_shot_data`, higher is better.
    ZeroShotTop1,
}

crate::serde_by_name!(Monitor);

impl Monitor {
    pub const NAMES: [&'static str; 2] = ["val_loss", "zero_shot_top1"];

    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ZeroShotTop1 => "zero_shot_top1",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "val_loss" => Ok(Monitor::ValLoss),
            "zero_shot_top1" => Ok(Monitor::ZeroShotTop1),
            other => Err(Error::invalid(format!(
                "unknown monitor {other:?}: expected \"val_loss\" or \"zero_shot_top1\""
            ))),
        }
    }

    /// The monitored figure of an epoch, if it was measured.
    pub fn of(self, record: &super::report::EpochRecord) -> Option<f64> {
        match self {
            Monitor::ValLoss => record.val_loss,
            Monitor::ZeroShotTop1 => record.zero_shot_top1,
        }
    }

    /// Whether `new` is better than `best`.
    pub fn improves(self, new: f64, best: f64) -> bool {
        match self {
            Monitor::ValLoss => new < best,
            Monitor::ZeroShotTop1 => new > best,
        }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        let csv = CsvOptions::default();
        TrainOptions {
            data: DataSpec::default(),
            output: PathBuf::from("runs/liteclip"),
            model: "liteclip".into(),
            epochs: 5,
            batch_size: 64,
            lr: None,
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
            warmup_steps: None,
            schedule: Schedule::Cosine,
            val_fraction: 0.2,
            seed: 0,
            device: DeviceSpec::Auto,
            precision: PrecisionChoice::Auto,
            init: None,
            image_weights: None,
            text_weights: None,
            early_stopping_patience: Some(2),
            augment: false,
            resume: Resume::No,
            image_column: csv.image_column,
            caption_column: csv.caption_column,
            images_dir: csv.images_dir,
            prefetch: 4,
            max_steps_per_epoch: None,
            skip_nonfinite: false,
            local_loss: false,
            accum_steps: 1,
            checkpoint_every: None,
            zero_shot_data: None,
            val_data: None,
            zero_shot_templates: None,
            monitor: Monitor::ValLoss,
            workers: 2,
            shuffle_buffer: 1000,
            samples_per_epoch: None,
            decode: DecodeMode::default(),
            lock_image: false,
            lock_image_unlocked_stages: 0,
            lock_text: false,
            lock_text_unlocked_layers: 0,
        }
    }
}

impl TrainOptions {
    /// Reads options from a JSON object; options it does not name keep their defaults. A wrong
    /// type is [`Error::InvalidType`], a bad value [`Error::InvalidArgument`], both naming the
    /// option.
    pub fn from_json(text: &str) -> Result<Self> {
        let options: TrainOptions = from_json_named(text)?;
        options.validate()?;
        Ok(options)
    }

    /// The columns and folder of a CSV data set.
    pub fn csv(&self) -> CsvOptions {
        CsvOptions {
            image_column: self.image_column.clone(),
            caption_column: self.caption_column.clone(),
            images_dir: self.images_dir.clone(),
        }
    }

    /// The peak learning rate: `lr`, or the default for how the towers start.
    pub fn learning_rate(&self) -> f64 {
        let pretrained =
            self.init.is_some() || self.image_weights.is_some() || self.text_weights.is_some();
        self.lr.unwrap_or(if pretrained {
            PRETRAINED_LR
        } else {
            SCRATCH_LR
        })
    }

    /// Warm-up steps of a run of `total_steps`: `warmup_steps`, or a share of the run.
    pub fn warmup(&self, total_steps: i64) -> i64 {
        self.warmup_steps.unwrap_or_else(|| {
            ((total_steps as f64 * WARMUP_SHARE).round() as i64).min(MAX_AUTO_WARMUP)
        })
    }

    /// The towers' locks as the model takes them.
    pub fn locks(&self) -> TowerLocks {
        TowerLocks {
            image: self.lock_image.then_some(self.lock_image_unlocked_stages),
            text: self.lock_text.then_some(self.lock_text_unlocked_layers),
        }
    }

    /// Pairs of one step's contrastive batch on one rank: `batch_size * accum_steps`.
    pub fn contrastive_batch(&self) -> usize {
        self.batch_size * self.accum_steps.max(1)
    }

    /// Refuses values no run could use, before anything is read or built.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(format!(
                "batch_size must be at least 2 (a contrastive loss needs negatives), got {}",
                self.batch_size
            ));
        }
        if self.monitor == Monitor::ZeroShotTop1 && self.zero_shot_data.is_none() {
            return bad("monitor=\"zero_shot_top1\" needs zero_shot_data (an ImageFolder)".into());
        }
        if self.precision == PrecisionChoice::Fixed(Precision::Int8) {
            return bad(
                "precision=\"int8\" is for inference (predict, embed, index, evaluate); train \
                 in \"fp32\", \"bf16\" or \"fp16\""
                    .into(),
            );
        }
        if self.checkpoint_every == Some(0) {
            return bad("checkpoint_every must be at least 1 step (or None)".into());
        }
        if self.accum_steps == 0 {
            return bad("accum_steps must be at least 1".into());
        }
        let lr = self.learning_rate();
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("lr must be a positive number, got {lr}"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(w) = self.warmup_steps.filter(|w| *w < 0) {
            return bad(format!("warmup_steps must be >= 0 (or None), got {w}"));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "val_fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        if self.early_stopping_patience == Some(0) {
            return bad(
                "early_stopping_patience must be at least 1 (or None to disable early stopping)"
                    .into(),
            );
        }
        if self.max_steps_per_epoch == Some(0) {
            return bad("max_steps_per_epoch must be at least 1 (or None)".into());
        }
        if self.workers == 0 || self.shuffle_buffer == 0 || self.samples_per_epoch == Some(0) {
            return bad("workers, shuffle_buffer and samples_per_epoch must be at least 1".into());
        }
        if self.lock_image_unlocked_stages > 0 && !self.lock_image {
            return bad("lock_image_unlocked_stages needs lock_image=True".into());
        }
        if self.lock_text_unlocked_layers > 0 && !self.lock_text {
            return bad("lock_text_unlocked_layers needs lock_text=True".into());
        }
        if self.data.is_empty() {
            return bad(
                "data is required: a data set folder, a CSV of image,caption, or WebDataset \
                 shards"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The arithmetic of training: "auto" is fp32 on the CPU and bf16 on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PrecisionChoice {
    #[default]
    Auto,
    Fixed(Precision),
}

crate::serde_by_name!(PrecisionChoice);

impl PrecisionChoice {
    pub fn parse(name: &str) -> Result<Self> {
        if name.eq_ignore_ascii_case("auto") {
            Ok(PrecisionChoice::Auto)
        } else {
            Precision::parse(name).map(PrecisionChoice::Fixed)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PrecisionChoice::Auto => "auto",
            PrecisionChoice::Fixed(p) => p.name(),
        }
    }

    /// The precision on `device`.
    pub fn on(self, device: tch::Device) -> Precision {
        match self {
            PrecisionChoice::Auto if device.is_cuda() => Precision::Bf16,
            PrecisionChoice::Auto => Precision::Fp32,
            PrecisionChoice::Fixed(p) => p,
        }
    }
}

/// Where training resumes from. In JSON: `false`, `true` or a checkpoint path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "ResumeRepr", into = "ResumeRepr")]
pub enum Resume {
    /// Start afresh (an existing `last/` in the output folder is an error, to protect it).
    #[default]
    No,
    /// Continue from `<output>/last` if it exists, else start afresh.
    Latest,
    /// Continue from this `last/`-style checkpoint folder.
    From(PathBuf),
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ResumeRepr {
    Flag(bool),
    Path(PathBuf),
}

impl From<ResumeRepr> for Resume {
    fn from(r: ResumeRepr) -> Self {
        match r {
            ResumeRepr::Flag(false) => Resume::No,
            ResumeRepr::Flag(true) => Resume::Latest,
            ResumeRepr::Path(p) => Resume::From(p),
        }
    }
}

impl From<Resume> for ResumeRepr {
    fn from(r: Resume) -> Self {
        match r {
            Resume::No => ResumeRepr::Flag(false),
            Resume::Latest => ResumeRepr::Flag(true),
            Resume::From(p) => ResumeRepr::Path(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fills_in_defaults_and_reads_typed_values() {
        let o = TrainOptions::from_json(
            r#"{"data": "d", "optimizer": "adamw", "device": "cpu", "precision": "bf16",
                "resume": true, "early_stopping_patience": null}"#,
        )
        .unwrap();
        let expected = TrainOptions {
            data: "d".into(),
            optimizer: OptimizerKind::AdamW,
            device: DeviceSpec::Cpu,
            precision: PrecisionChoice::Fixed(Precision::Bf16),
            resume: Resume::Latest,
            early_stopping_patience: None,
            ..TrainOptions::default()
        };
        assert_eq!(o, expected);
        let from = TrainOptions::from_json(r#"{"data": "d", "resume": "runs/a/last"}"#).unwrap();
        assert_eq!(from.resume, Resume::From("runs/a/last".into()));
    }

    #[test]
    fn defaults_survive_a_round_trip() {
        let d = TrainOptions {
            data: "x".into(),
            ..Default::default()
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(TrainOptions::from_json(&text).unwrap(), d);
    }

    #[test]
    fn errors_name_the_option() {
        let err = |text: &str| TrainOptions::from_json(text).unwrap_err();
        match err(r#"{"data": "d", "epochs": "five"}"#) {
            Error::InvalidType(m) => assert!(m.starts_with("epochs:"), "{m}"),
            other => panic!("{other:?}"),
        }
        match err(r#"{"data": "d", "optimizer": "sgd"}"#) {
            Error::InvalidArgument(m) => assert!(m.contains("optimizer") && m.contains("sgd")),
            other => panic!("{other:?}"),
        }
        match err(r#"{"data": "d", "epoch": 3}"#) {
            Error::InvalidArgument(m) => assert!(m.contains("epoch"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            err(r#"{"data": "d", "early_stopping_patience": 0}"#),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            err(r#"{"data": "d", "batch_size": -3}"#),
            Error::InvalidArgument(_)
        ));
    }
}
