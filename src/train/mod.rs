//! Contrastive training: the loop, checkpoints, resumption and early stopping.
//!
//! A run writes into its output folder:
//!
//! ```text
//! best/            the model with the lowest validation loss (liteclip format)
//! last/            the model after the last completed epoch, plus the training state
//!                  (optimizer moments, step, history) that `resume` continues from
//! metrics.jsonl    one line per epoch, for plotting
//! ```
//!
//! Every random choice (split, order, augmentation, dropout) derives from the seed and the
//! step, never from history, so a resumed run ends with the same weights as an unbroken one.
//! (Dropout draws from libtorch's generator, which is per process and reseeded every step: two
//! runs training at the same time in one process are not repeatable.)

pub mod distributed;
pub mod optim;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, write_atomically};
use crate::config::LiteClipConfig;
use crate::data::loader::{ImageTransform, Loader, LoaderConfig};
use crate::data::{
    epoch_samples, make_batches, CsvOptions, DataInfo, Dataset, ReadReport, DATA_INFO_FILE,
};
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::eval::{retrieval, tokenize_captions, RetrievalMetrics};
use crate::image::Normalizer;
use crate::liteclip::{to_device_async, token_tensors, LiteClip};
use crate::loss::{clamp_logit_scale, clip_loss};
use crate::model::{l2_normalize, Precision};
use crate::rng::Rng;
use distributed::{backward_global_batch, shard_batches, Collectives, LossForm};
use optim::{AdamConfig, FlatAdam, OptimizerKind, Schedule};

/// Where training resumes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Start afresh (an existing `last/` in the output folder is an error, to protect it).
    No,
    /// Continue from `<output>/last` if it exists, else start afresh.
    Latest,
    /// Continue from this `last/`-style checkpoint folder.
    From(PathBuf),
}

/// Everything `liteclip.train` takes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub csv: CsvOptions,
    pub output: PathBuf,
    /// Preset name or config JSON path.
    pub model: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    pub warmup_steps: i64,
    pub schedule: Schedule,
    pub val_fraction: f64,
    pub seed: u64,
    pub device: String,
    /// "auto" (fp32 on CPU, bf16 on CUDA), "fp32", "bf16" or "fp16".
    pub precision: String,
    pub init: Option<PathBuf>,
    pub image_weights: Option<PathBuf>,
    pub text_weights: Option<PathBuf>,
    /// Stop after this many epochs without a better validation loss (None: never).
    pub early_stopping_patience: Option<usize>,
    pub augment: bool,
    pub resume: Resume,
    /// Batches prepared ahead of the device.
    pub prefetch: usize,
    /// Cap on steps per epoch (quick runs, benchmarks); None: the whole epoch.
    pub max_steps_per_epoch: Option<usize>,
    /// Skip (and count) batches whose loss is NaN or infinite instead of stopping.
    pub skip_nonfinite: bool,
    /// Data-parallel runs: each rank computes only its own rows of the global loss (open_clip's
    /// `--local-loss`); the gradient is the same.
    pub local_loss: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            data: PathBuf::new(),
            csv: CsvOptions::default(),
            output: PathBuf::from("runs/liteclip"),
            model: "liteclip".into(),
            epochs: 5,
            batch_size: 64,
            lr: 2e-4,
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            val_fraction: 0.2,
            seed: 0,
            device: "auto".into(),
            precision: "auto".into(),
            init: None,
            image_weights: None,
            text_weights: None,
            early_stopping_patience: Some(2),
            augment: false,
            resume: Resume::No,
            prefetch: 4,
            max_steps_per_epoch: None,
            skip_nonfinite: false,
            local_loss: false,
        }
    }
}

/// One line of the history (and of `metrics.jsonl`). Fields missing from a state file written
/// by an older liteclip read as zero/none, so such runs still resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: i64,
    pub train_loss: f64,
    pub lr: f64,
    pub logit_scale: f64,
    pub seconds: f64,
    pub pairs_per_second: f64,
    /// Seconds the training loop waited for the data loader (the device idles meanwhile).
    pub data_wait_seconds: f64,
    /// Batches skipped because their loss was not finite (with `skip_nonfinite`).
    pub nonfinite_skipped: usize,
    pub val_loss: Option<f64>,
    pub val_i2t_r1: Option<f64>,
    pub val_i2t_r5: Option<f64>,
    pub val_i2t_r10: Option<f64>,
    pub val_t2i_r1: Option<f64>,
    pub val_t2i_r5: Option<f64>,
    pub val_t2i_r10: Option<f64>,
    pub skipped_images: usize,
}

/// What a run leaves behind.
#[derive(Debug, Clone)]
pub struct TrainResult {
    pub best_checkpoint: Option<PathBuf>,
    pub last_checkpoint: PathBuf,
    pub history: Vec<EpochRecord>,
    pub stopped_early: bool,
    pub interrupted: bool,
    /// Images that could not be decoded, with the reason (each listed once).
    pub skipped_images: Vec<(PathBuf, String)>,
    pub data_report: ReadReport,
    pub train_images: usize,
    pub val_images: usize,
    pub device: String,
    pub precision: String,
}

/// Progress of one step, for the observer.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub steps_in_epoch: usize,
    pub global_step: i64,
    /// Loss of this step when it was read back from the device (every step on the CPU).
    pub loss: Option<f64>,
    pub lr: f64,
    pub pairs: usize,
    pub pairs_per_second: f64,
}

/// Whether training should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Receives progress; the Python layer draws progress bars with it and checks for Ctrl-C.
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize) -> Flow {
        Flow::Continue
    }
    fn step(&mut self, _info: &StepInfo) -> Flow {
        Flow::Continue
    }
    fn epoch_end(&mut self, _record: &EpochRecord) -> Flow {
        Flow::Continue
    }
    fn message(&mut self, _text: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

const STATE_FILE: &str = "train_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const METRICS_FILE: &str = "metrics.jsonl";

/// The training state saved in `last/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    epochs_completed: usize,
    global_step: i64,
    best_val_loss: Option<f64>,
    bad_epochs: usize,
    history: Vec<EpochRecord>,
    batch_size: usize,
    seed: u64,
    loss_scale: f64,
}

fn precision_for(name: &str, device: Device) -> Result<Precision> {
    match name {
        "auto" => Ok(if device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::Fp32
        }),
        other => Precision::parse(other),
    }
}

/// The seed of the dropout masks of a step: a function of the run's seed, the step and the
/// data-parallel rank only (rank 0 draws as a single process does).
fn step_seed(seed: u64, step: i64, rank: usize) -> i64 {
    let seed = seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (Rng::derive(seed, 0x4452_4f50, step as u64).next_u64() >> 1) as i64
}

/// What rank 0 tells the other ranks after an epoch (it alone validates and saves).
#[derive(Serialize, Deserialize)]
struct EpochOutcome {
    state: TrainState,
    best_saved: bool,
    stop: bool,
}

fn validate(options: &TrainOptions) -> Result<()> {
    let bad = |m: String| Err(Error::invalid(m));
    if options.epochs == 0 {
        return bad("epochs must be at least 1".into());
    }
    if options.batch_size < 2 {
        return bad(format!(
            "batch_size must be at least 2 (a contrastive loss needs negatives), got {}",
            options.batch_size
        ));
    }
    if !(options.lr.is_finite() && options.lr > 0.0) {
        return bad(format!("lr must be a positive number, got {}", options.lr));
    }
    if !(options.weight_decay.is_finite() && options.weight_decay >= 0.0) {
        return bad(format!(
            "weight_decay must be >= 0, got {}",
            options.weight_decay
        ));
    }
    if options.warmup_steps < 0 {
        return bad("warmup_steps must be >= 0".into());
    }
    if options.early_stopping_patience == Some(0) {
        return bad("early_stopping_patience must be at least 1 (or None to disable it)".into());
    }
    Ok(())
}

/// Saves a checkpoint folder as a unit: everything is written into `<dir>.tmp`, synced, and
/// renamed into place (the previous folder moved aside first and removed last), so `dir` is
/// always either the old or the new checkpoint, never a mixture.
fn save_folder(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.with_file_name(format!("{name}.tmp"));
    let old = dir.with_file_name(format!("{name}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        // A failed write (disk full, ...) leaves the previous checkpoint as it was.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Fails early, before any training, when the output folder cannot be written.
fn check_output_folder(output: &Path) -> Result<()> {
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    let probe = output.join(".liteclip-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| Error::io(&probe, e))?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer for one statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so the struct is filled in.
    let stats = unsafe { stats.assume_init() };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Checkpoints of a run (best/, last/ with the optimizer's two moments, and the copies that
/// coexist while a save swaps folders) take about eight times the fp32 weights: refuse to
/// start when the disk cannot hold them, rather than fail at the first save.
fn check_free_space(output: &Path, parameters: i64) -> Result<()> {
    let needed = 8 * 4 * parameters.max(0) as u64;
    match free_bytes(output) {
        Some(free) if free < needed => Err(Error::Io {
            path: output.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "checkpoints need about {} MB free, {} MB available",
                    needed >> 20,
                    free >> 20
                ),
            ),
        }),
        _ => Ok(()),
    }
}

/// The checkpoint folder to resume from: `dir`, or `dir.old` if a save was cut between its
/// two renames.
fn existing_checkpoint(dir: &Path) -> Option<PathBuf> {
    if dir.join(checkpoint::WEIGHTS_FILE).is_file() {
        return Some(dir.to_owned());
    }
    let old = dir.with_file_name(format!("{}.old", dir.file_name()?.to_string_lossy()));
    old.join(checkpoint::WEIGHTS_FILE).is_file().then_some(old)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid(format!("cannot serialise {}: {e}", path.display())))?;
    write_atomically(path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e))
    })
}

/// Trains a model as `options` say, reporting to `observer`.
pub fn train(options: &TrainOptions, observer: &mut dyn Observer) -> Result<TrainResult> {
    run(options, observer, None)
}

/// Trains as one rank of a data-parallel group: `options.batch_size` pairs per rank, one
/// global contrastive batch of `world_size * batch_size` (see [`distributed`]). Every rank
/// must call this with the same options; rank 0 alone validates and writes the output folder.
pub fn train_distributed(
    options: &TrainOptions,
    observer: &mut dyn Observer,
    comm: &dyn Collectives,
) -> Result<TrainResult> {
    run(options, observer, Some(comm))
}

fn run(
    options: &TrainOptions,
    observer: &mut dyn Observer,
    comm: Option<&dyn Collectives>,
) -> Result<TrainResult> {
    validate(options)?;
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world_size()));
    let main = rank == 0;
    // The batches of one process with the global batch size, sliced by rank below.
    let global_batch = options.batch_size * world;
    let device = parse_device(&options.device)?;
    let precision = precision_for(&options.precision, device)?;
    let channels_last = device.is_cuda();

    // Data first: a bad data set should fail before any model is built.
    let dataset = Dataset::open(&options.data, &options.csv)?;
    let (train_set, val_set) = dataset.split(options.val_fraction, options.seed)?;
    if train_set.num_images() < 2 {
        return Err(Error::invalid(format!(
            "{}: need at least 2 training images, found {}",
            options.data.display(),
            train_set.num_images()
        )));
    }
    let report = dataset.report.clone();
    if report.malformed_rows + report.missing_images > 0 {
        observer.message(&format!(
            "data: skipped {} malformed rows and {} rows whose image is missing{}",
            report.malformed_rows,
            report.missing_images,
            report
                .examples
                .first()
                .map(|e| format!(" (e.g. {e})"))
                .unwrap_or_default()
        ));
    }

    if main {
        check_output_folder(&options.output)?;
    }
    let last_dir = options.output.join("last");
    let best_dir = options.output.join("best");
    let resume_from = match &options.resume {
        Resume::No => {
            if let Some(existing) = existing_checkpoint(&last_dir) {
                return Err(Error::invalid(format!(
                    "{} already holds a training run ({}); pass resume=True to continue it, or \
                     choose another output folder",
                    options.output.display(),
                    existing.display()
                )));
            }
            None
        }
        Resume::Latest => existing_checkpoint(&last_dir),
        Resume::From(path) => {
            Some(
                existing_checkpoint(path).ok_or_else(|| Error::FileNotFound {
                    path: path.clone(),
                    hint: Some("resume= needs a run's last/ checkpoint folder".into()),
                })?,
            )
        }
    };

    // The model: fresh, from a checkpoint, from backbones, or from the run being resumed.
    let config = LiteClipConfig::from_name_or_file(&options.model)?;
    tch::manual_seed(options.seed as i64);
    let mut model = match (&resume_from, &options.init) {
        (Some(dir), _) => LiteClip::load(dir, device, None)?,
        (None, Some(init)) => {
            let weights = checkpoint::read(init)?;
            let config = weights.config.clone().unwrap_or(config);
            let m = LiteClip::new(config, device)?;
            checkpoint::load_into(m.varstore(), weights)?;
            m
        }
        (None, None) => LiteClip::new(config, device)?,
    };
    if resume_from.is_none() {
        if let Some(path) = &options.image_weights {
            checkpoint::backbones::load_image_tower(model.varstore(), path)?;
        }
        if let Some(path) = &options.text_weights {
            checkpoint::backbones::load_text_tower(model.varstore(), path)?;
        }
    }
    model.set_precision(precision);
    if main {
        check_free_space(&options.output, model.num_parameters())?;
    }

    let mut opt = FlatAdam::new(
        model.varstore(),
        AdamConfig {
            kind: options.optimizer,
            weight_decay: options.weight_decay,
            ..Default::default()
        },
    )?;
    let mut state = TrainState {
        epochs_completed: 0,
        global_step: 0,
        best_val_loss: None,
        bad_epochs: 0,
        history: Vec::new(),
        batch_size: options.batch_size,
        seed: options.seed,
        loss_scale: 65536.0,
    };
    if let Some(dir) = &resume_from {
        let text = std::fs::read_to_string(dir.join(STATE_FILE))
            .map_err(|e| Error::io(dir.join(STATE_FILE), e))?;
        state = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(dir, format!("unreadable training state: {e}")))?;
        if state.batch_size != options.batch_size || state.seed != options.seed {
            observer.message(&format!(
                "resuming with batch_size {} and seed {} (the run used {} and {}): the result \
                 will differ from an unbroken run",
                options.batch_size, options.seed, state.batch_size, state.seed
            ));
        }
        let opt_state = Tensor::read_safetensors(dir.join(OPTIMIZER_FILE))
            .map_err(|e| Error::checkpoint(dir, format!("unreadable optimizer state: {e}")))?;
        opt.load_state(&opt_state)?;
        observer.message(&format!(
            "resuming from {} after epoch {} (step {})",
            dir.display(),
            state.epochs_completed,
            state.global_step
        ));
    }

    let data_info = DataInfo {
        data: options.data.clone(),
        image_column: options.csv.image_column.clone(),
        caption_column: options.csv.caption_column.clone(),
        images_dir: options.csv.images_dir.clone(),
        val_fraction: options.val_fraction,
        seed: options.seed,
    };
    let (captions, offsets) = tokenize_captions(&model, &train_set)?;
    let train_set = Arc::new(train_set);
    let transform = if options.augment {
        ImageTransform::RandomResizedCrop {
            scale: (0.5, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    } else {
        ImageTransform::Center
    };
    let steps_per_epoch = {
        let n = make_batches(epoch_samples(&train_set, options.seed, 0), global_batch).len();
        options.max_steps_per_epoch.map_or(n, |m| n.min(m))
    };
    let total_steps = (steps_per_epoch * options.epochs) as i64;

    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    let mut skipped_seen = std::collections::HashSet::new();
    let mut stopped_early = false;
    let mut interrupted = false;
    let mut best_checkpoint = existing_checkpoint(&best_dir);
    let read_every = if device.is_cuda() { 10 } else { 1 };
    let normalizer = Normalizer::new(device)?;
    let loss_form = LossForm::from_local_loss(options.local_loss);

    for epoch in state.epochs_completed..options.epochs {
        if options
            .early_stopping_patience
            .is_some_and(|p| state.bad_epochs >= p && !val_set.entries.is_empty())
        {
            stopped_early = true;
            break;
        }
        let mut batches = make_batches(
            epoch_samples(&train_set, options.seed, epoch as u64),
            global_batch,
        );
        batches.truncate(steps_per_epoch);
        let steps = batches.len();
        let global_sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        let batches = shard_batches(batches, rank, world);
        if observer.epoch_start(epoch, options.epochs, steps) == Flow::Stop {
            interrupted = true;
            break;
        }
        let loader = Loader::start_at(
            train_set.clone(),
            batches,
            LoaderConfig {
                image_size: model.config().image_size as u32,
                transform,
                prefetch: options.prefetch,
                seed: options.seed,
                epoch: epoch as u64,
                pin_memory: device.is_cuda().then_some(device),
            },
        );
        let started = Instant::now();
        let mut pairs_seen = 0usize;
        let mut global_pairs_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut loss_count = 0usize;
        let mut lr = options.lr;
        let mut data_wait = 0.0;
        let mut nonfinite_skipped = 0usize;
        let mut batches = loader.enumerate();
        loop {
            let waited = Instant::now();
            let Some((i, batch)) = batches.next() else {
                break;
            };
            data_wait += waited.elapsed().as_secs_f64();
            let batch = batch?;
            for (path, why) in batch.failed {
                if skipped_seen.insert(path.clone()) {
                    skipped.push((path, why));
                }
            }
            let kept = batch.kept.len();
            if comm.is_none() && kept < 2 {
                continue; // nothing to contrast
            }
            lr = options.schedule.lr(
                options.lr,
                state.global_step,
                options.warmup_steps,
                total_steps,
            );
            tch::manual_seed(step_seed(options.seed, state.global_step, rank));
            // Data-parallel ranks pad their slice to `batch_size` rows, as the collectives need
            // the same shape on every rank; padding rows are masked out of the loss.
            let rows = if comm.is_some() {
                options.batch_size
            } else {
                kept
            };
            let mut indices: Vec<usize> = batch
                .kept
                .iter()
                .map(|s| offsets[s.entry as usize] + s.caption as usize)
                .collect();
            indices.resize(rows, 0);
            let (ids, mask) = token_tensors(&captions.batch(&indices), device)?;
            let mut pixels =
                normalizer.apply(&to_device_async(&batch.pixels, device, batch.pinned)?)?;
            if rows > kept {
                let mut shape = pixels.size();
                shape[0] = (rows - kept) as i64;
                let padding = Tensor::f_zeros(&shape, (pixels.kind(), pixels.device()))?;
                pixels = Tensor::f_cat(&[pixels.shallow_clone(), padding], 0)?;
            }
            let scaled = precision == Precision::Fp16;
            let loss_scale = if scaled { state.loss_scale } else { 1.0 };

            opt.zero_grad();
            let (loss, global_pairs) = {
                let _precision = precision.enter(channels_last);
                let m = model.model();
                let img = l2_normalize(&m.image_features(&pixels, true));
                let txt = l2_normalize(&m.text_features(&ids, &mask, true));
                match comm {
                    None => (clip_loss(&img, &txt, m.logit_scale()), None),
                    // Forward and backward of the global batch in one go: the loss is only
                    // known after the ranks have exchanged embeddings.
                    Some(comm) => {
                        let real = Tensor::f_cat(
                            &[
                                Tensor::f_ones([kept as i64], (Kind::Float, device))?,
                                Tensor::f_zeros([(rows - kept) as i64], (Kind::Float, device))?,
                            ],
                            0,
                        )?;
                        let step = backward_global_batch(
                            &img,
                            &txt,
                            &real,
                            m.logit_scale(),
                            loss_form,
                            loss_scale,
                            comm,
                        )?;
                        (step.loss, Some(step.pairs))
                    }
                }
            };
            // The loss is read back every step on the CPU (free) and every `read_every` steps
            // on a GPU (a read waits for the GPU), or every step when non-finite losses are to
            // be skipped. A non-finite loss seen before the update never reaches the weights
            // (data-parallel ranks all see the same global loss, so they all stop or skip).
            let read_now = (i + 1) % read_every == 0 || i + 1 == steps || options.skip_nonfinite;
            let loss_value = if read_now {
                Some(loss.f_double_value(&[])?)
            } else {
                None
            };
            if let Some(v) = loss_value.filter(|v| !v.is_finite()) {
                if !options.skip_nonfinite {
                    return Err(Error::invalid(format!(
                        "the loss became {v} at step {} (epoch {}): training is unstable; \
                         lower the learning rate or use precision=\"fp32\"/\"bf16\" (or pass \
                         skip_nonfinite=True to skip such batches). The last completed \
                         epoch's checkpoint is in {}",
                        state.global_step + 1,
                        epoch + 1,
                        last_dir.display()
                    )));
                }
                nonfinite_skipped += 1;
            } else {
                match comm {
                    None if scaled => loss.f_mul_scalar(loss_scale)?.f_backward()?,
                    None => loss.f_backward()?,
                    // One collective call for every parameter's gradient.
                    Some(comm) => comm.all_reduce_sum(&opt.gradients()?)?,
                }
                let finite = if scaled {
                    opt.unscale_grads(state.loss_scale)?
                } else {
                    true
                };
                if finite {
                    opt.step(lr)?;
                    let mut scale = model.model().logit_scale().shallow_clone();
                    clamp_logit_scale(&mut scale);
                } else {
                    state.loss_scale /= 2.0;
                }
                match &global_pairs {
                    Some(p) => global_pairs_sum = global_pairs_sum.f_add(p)?,
                    None => pairs_seen += kept,
                }
                loss_sum = loss_sum.f_add(&loss.detach())?;
                loss_count += 1;
            }
            state.global_step += 1;
            let info = StepInfo {
                epoch,
                step_in_epoch: i + 1,
                steps_in_epoch: steps,
                global_step: state.global_step,
                loss: loss_value,
                lr,
                // Per-step figures count the global batch (padding aside, read only per epoch).
                pairs: if comm.is_some() {
                    global_sizes[i]
                } else {
                    kept
                },
                pairs_per_second: (pairs_seen + comm.map_or(0, |_| global_sizes[..=i].iter().sum()))
                    as f64
                    / started.elapsed().as_secs_f64().max(1e-9),
            };
            if observer.step(&info) == Flow::Stop {
                interrupted = true;
                break;
            }
        }
        if interrupted {
            break;
        }
        let seconds = started.elapsed().as_secs_f64();
        let train_loss = if loss_count > 0 {
            loss_sum.f_double_value(&[])? / loss_count as f64
        } else {
            f64::NAN
        };
        if comm.is_some() {
            pairs_seen = global_pairs_sum.f_double_value(&[])?.round() as usize;
        }
        if !train_loss.is_finite() && loss_count > 0 {
            // Steps between two reads on a GPU: caught here, before anything is saved.
            return Err(Error::invalid(format!(
                "the loss became non-finite during epoch {}; nothing of this epoch was saved, the \
                 last completed epoch's checkpoint is in {}",
                epoch + 1,
                last_dir.display()
            )));
        }
        // Rank 0 validates (over the whole validation set, once), saves and decides; the other
        // ranks wait for its outcome, so that every rank goes on with the same state.
        let outcome = if main {
            let val = if val_set.entries.is_empty() {
                None
            } else {
                // In batches of the global batch size: the validation loss's negatives are
                // those of a training batch, so runs with the same global batch compare.
                Some(retrieval(&model, &val_set, global_batch)?)
            };
            let record = EpochRecord {
                data_wait_seconds: data_wait,
                nonfinite_skipped,
                ..epoch_record(
                    epoch,
                    &state,
                    train_loss,
                    lr,
                    &model,
                    seconds,
                    pairs_seen,
                    val.as_ref(),
                    skipped.len(),
                )?
            };
            state.history.push(record.clone());
            state.epochs_completed = epoch + 1;
            let improved = match (&val, state.best_val_loss) {
                (Some(v), Some(best)) => v.loss < best,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if let Some(v) = &val {
                if improved {
                    state.best_val_loss = Some(v.loss);
                    state.bad_epochs = 0;
                    save_folder(&best_dir, |dir| {
                        model.save(dir)?;
                        write_json(&dir.join(DATA_INFO_FILE), &data_info)
                    })?;
                } else {
                    state.bad_epochs += 1;
                }
            }
            save_last(&last_dir, &model, &opt, &state, &data_info)?;
            write_metrics(&options.output, &state.history)?;
            let stop = observer.epoch_end(&record) == Flow::Stop;
            Some(EpochOutcome {
                state: state.clone(),
                best_saved: improved,
                stop,
            })
        } else {
            None
        };
        let outcome = match comm {
            Some(comm) => {
                let text = match &outcome {
                    Some(o) => Some(serde_json::to_string(o).map_err(|e| {
                        Error::invalid(format!("cannot serialise the epoch's outcome: {e}"))
                    })?),
                    None => None,
                };
                let text = comm.broadcast_from_main(text)?;
                let received: EpochOutcome = serde_json::from_str(&text).map_err(|e| {
                    Error::invalid(format!("rank 0 sent an unreadable epoch outcome: {e}"))
                })?;
                if !main {
                    state = received.state.clone();
                    if let Some(record) = state.history.last() {
                        let _ = observer.epoch_end(record);
                    }
                }
                received
            }
            None => outcome.ok_or_else(|| Error::invalid("no epoch outcome"))?,
        };
        if outcome.best_saved {
            best_checkpoint = Some(best_dir.clone());
        }
        if outcome.stop {
            interrupted = true;
            break;
        }
    }
    if !skipped.is_empty() {
        observer.message(&format!(
            "skipped {} images that could not be decoded, e.g. {}: {}",
            skipped.len(),
            skipped[0].0.display(),
            skipped[0].1
        ));
    }
    let last_checkpoint = existing_checkpoint(&last_dir).unwrap_or(last_dir);
    Ok(TrainResult {
        best_checkpoint: best_checkpoint
            .or_else(|| val_set.entries.is_empty().then(|| last_checkpoint.clone())),
        last_checkpoint,
        history: state.history,
        stopped_early,
        interrupted,
        skipped_images: skipped,
        data_report: report,
        train_images: train_set.num_images(),
        val_images: val_set.num_images(),
        device: crate::device::device_name(device),
        precision: precision.name().into(),
    })
}

/// Saves `last/`: the model, the optimizer's state and the training state, as one unit.
fn save_last(
    last_dir: &Path,
    model: &LiteClip,
    opt: &FlatAdam,
    state: &TrainState,
    data_info: &DataInfo,
) -> Result<()> {
    save_folder(last_dir, |dir| {
        model.save(dir)?;
        write_json(&dir.join(DATA_INFO_FILE), data_info)?;
        let opt_state = opt.state();
        write_atomically(&dir.join(OPTIMIZER_FILE), |tmp| {
            let cpu: Vec<(String, Tensor)> = opt_state
                .iter()
                .map(|(k, t)| Ok((k.clone(), t.f_to_device(Device::Cpu)?)))
                .collect::<Result<_>>()?;
            Tensor::write_safetensors(&cpu, tmp).map_err(Error::from)
        })?;
        write_json(&dir.join(STATE_FILE), state)
    })
}

/// Rewrites `metrics.jsonl` (one line per epoch) atomically.
fn write_metrics(output: &Path, history: &[EpochRecord]) -> Result<()> {
    let lines: Vec<String> = history
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .collect();
    let path = output.join(METRICS_FILE);
    write_atomically(&path, |tmp| {
        std::fs::write(tmp, lines.join("\n") + "\n").map_err(|e| Error::io(tmp, e))
    })
}

#[allow(clippy::too_many_arguments)]
fn epoch_record(
    epoch: usize,
    state: &TrainState,
    train_loss: f64,
    lr: f64,
    model: &LiteClip,
    seconds: f64,
    pairs: usize,
    val: Option<&RetrievalMetrics>,
    skipped: usize,
) -> Result<EpochRecord> {
    Ok(EpochRecord {
        epoch: epoch + 1,
        step: state.global_step,
        train_loss,
        lr,
        logit_scale: model.logit_scale()?,
        seconds,
        pairs_per_second: pairs as f64 / seconds.max(1e-9),
        data_wait_seconds: 0.0,
        nonfinite_skipped: 0,
        val_loss: val.map(|v| v.loss),
        val_i2t_r1: val.map(|v| v.i2t_r1),
        val_i2t_r5: val.map(|v| v.i2t_r5),
        val_i2t_r10: val.map(|v| v.i2t_r10),
        val_t2i_r1: val.map(|v| v.t2i_r1),
        val_t2i_r5: val.map(|v| v.t2i_r5),
        val_t2i_r10: val.map(|v| v.t2i_r10),
        skipped_images: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{generate, Layout};

    fn options(data: &Path, output: &Path) -> TrainOptions {
        TrainOptions {
            data: data.to_owned(),
            output: output.to_owned(),
            model: "liteclip-nano".into(),
            epochs: 2,
            batch_size: 16,
            lr: 1e-3,
            device: "cpu".into(),
            val_fraction: 0.25,
            early_stopping_patience: None,
            max_steps_per_epoch: Some(4),
            ..Default::default()
        }
    }

    fn weights(dir: &Path) -> Vec<(String, Tensor)> {
        let mut w = Tensor::read_safetensors(dir.join(checkpoint::WEIGHTS_FILE)).unwrap();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    }

    #[test]
    fn a_step_moves_both_towers_and_the_temperature() {
        let _rng = crate::torch_rng_lock();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shapes");
        generate(&data, 24, 0, 40, Layout::Captions).unwrap();
        let out = tmp.path().join("run");
        let start = tmp.path().join("start");
        LiteClip::new(LiteClipConfig::nano(), Device::Cpu)
            .unwrap()
            .save(&start)
            .unwrap();
        let opts = TrainOptions {
            epochs: 1,
            max_steps_per_epoch: Some(1),
            val_fraction: 0.0,
            init: Some(start.clone()),
            ..options(&data, &out)
        };
        let before: std::collections::HashMap<String, Tensor> =
            weights(&start).into_iter().collect();
        train(&opts, &mut Silent).unwrap();
        let after = weights(&out.join("last"));
        let moved = |prefix: &str| {
            after
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .any(|(k, t)| !t.equal(&before[k]))
        };
        for part in [
            "image_encoder.",
            "text_encoder.",
            "img_projection.",
            "txt_projection.",
            "logit_scale",
        ] {
            assert!(moved(part), "{part} did not change after a step");
        }
        // The unused BERT pooler gets no gradient and is left alone.
        assert!(!moved("text_encoder.backbone.pooler."));
    }

    #[test]
    fn reduced_precision_trains_with_finite_losses() {
        let _rng = crate::torch_rng_lock();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shapes");
        generate(&data, 24, 0, 40, Layout::Captions).unwrap();
        for precision in ["bf16", "fp16"] {
            let out = tmp.path().join(precision);
            let opts = TrainOptions {
                epochs: 1,
                max_steps_per_epoch: Some(2),
                val_fraction: 0.0,
                precision: precision.into(),
                ..options(&data, &out)
            };
            let result = train(&opts, &mut Silent).unwrap();
            assert_eq!(result.precision, precision);
            assert!(result.history[0].train_loss.is_finite(), "{precision}");
        }
    }

    /// The global-batch property: ranks with batch B end with the weights of one process with
    /// batch 2B on the same data order (dropout off: its masks cannot match across layouts).
    #[test]
    fn two_ranks_with_batch_b_train_like_one_process_with_batch_2b() {
        let _rng = crate::torch_rng_lock();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shapes");
        generate(&data, 48, 0, 40, Layout::Captions).unwrap();
        let start = tmp.path().join("start");
        let mut config = LiteClipConfig::nano();
        config.head_dropout = 0.0;
        config.text.hidden_dropout = 0.0;
        config.text.attention_dropout = 0.0;
        LiteClip::new(config, Device::Cpu)
            .unwrap()
            .save(&start)
            .unwrap();
        let base = |out: &Path, batch_size: usize| TrainOptions {
            batch_size,
            init: Some(start.clone()),
            augment: true,
            weight_decay: 0.05,
            ..options(&data, out)
        };
        let single = tmp.path().join("single");
        let single_history = train(&base(&single, 16), &mut Silent).unwrap().history;
        let expected = weights(&single.join("last"));
        for local_loss in [false, true] {
            let out = tmp.path().join(format!("ranks-local-{local_loss}"));
            let opts = TrainOptions {
                local_loss,
                ..base(&out, 8)
            };
            let results: Vec<TrainResult> = std::thread::scope(|s| {
                let handles: Vec<_> = distributed::tests::ThreadGroup::new(2)
                    .into_iter()
                    .map(|group| {
                        let opts = &opts;
                        s.spawn(move || train_distributed(opts, &mut Silent, &group).unwrap())
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            // Every rank ends with the same history (rank 0's validation included).
            assert_eq!(results[0].history.len(), 2);
            assert_eq!(results[0].history, results[1].history);
            for (a, b) in results[0].history.iter().zip(&single_history) {
                let (ta, tb) = (a.train_loss, b.train_loss);
                assert!((ta - tb).abs() < 1e-5 * tb, "train loss {ta} vs {tb}");
                let (va, vb) = (a.val_loss.unwrap(), b.val_loss.unwrap());
                assert!((va - vb).abs() < 1e-5 * vb, "validation loss {va} vs {vb}");
            }
            // fp32 tolerance after 8 Adam steps of 1e-3: Adam turns the rounding noise of
            // gradients that are zero in exact arithmetic (attention key biases) into steps of
            // up to lr, so weights agree to 1e-4 while a wrong gradient moves them by ~1e-3.
            // Weight decay (L2, added to the gradient) makes a wrongly scaled gradient show.
            let got = weights(&out.join("last"));
            assert_eq!(got.len(), expected.len());
            for ((k, a), (_, b)) in got.iter().zip(&expected) {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-4,
                    "{k} differs by {diff} (local_loss {local_loss})"
                );
            }
        }
    }

    #[test]
    fn history_written_by_an_older_version_still_reads() {
        // A line of a train_state.json from before data_wait_seconds and nonfinite_skipped.
        let old = r#"{"epoch": 1, "step": 125, "train_loss": 3.67, "lr": 0.00198,
            "logit_scale": 13.6, "seconds": 13.2, "pairs_per_second": 606.0, "val_loss": 2.83,
            "val_i2t_r1": 0.17, "val_i2t_r5": 0.18, "val_i2t_r10": 0.26, "val_t2i_r1": 0.02,
            "val_t2i_r5": 0.10, "val_t2i_r10": 0.18, "skipped_images": 0}"#;
        let record: EpochRecord = serde_json::from_str(old).unwrap();
        assert_eq!((record.epoch, record.step), (1, 125));
        assert_eq!(record.val_loss, Some(2.83));
        assert_eq!(
            (record.data_wait_seconds, record.nonfinite_skipped),
            (0.0, 0)
        );
    }

    #[test]
    fn resumed_run_ends_with_the_weights_of_an_unbroken_run() {
        let _rng = crate::torch_rng_lock();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shapes");
        generate(&data, 48, 0, 40, Layout::Captions).unwrap();

        let unbroken = tmp.path().join("unbroken");
        let result = train(&options(&data, &unbroken), &mut Silent).unwrap();
        assert_eq!(result.history.len(), 2);
        assert!(result.best_checkpoint.is_some());

        let broken = tmp.path().join("broken");
        let first = TrainOptions {
            epochs: 1,
            ..options(&data, &broken)
        };
        train(&first, &mut Silent).unwrap();
        // Starting afresh over an existing run is refused.
        assert!(train(&options(&data, &broken), &mut Silent).is_err());
        let resumed = TrainOptions {
            resume: Resume::Latest,
            ..options(&data, &broken)
        };
        let result = train(&resumed, &mut Silent).unwrap();
        assert_eq!(result.history.len(), 2);

        let (a, b) = (
            weights(&unbroken.join("last")),
            weights(&broken.join("last")),
        );
        assert_eq!(a.len(), b.len());
        for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
            assert_eq!(ka, kb);
            assert!(ta.equal(tb), "{ka} differs after resume");
        }
    }
}
