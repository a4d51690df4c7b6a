//! What a run tells its caller: progress while it trains (through an [`Observer`]), one
//! [`EpochRecord`] per epoch, and the [`TrainResult`] at the end. These are the types that cross
//! into Python (as plain dicts, through serde), so each is defined here only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// Zero-shot accuracy on `zero_shot_data`, when given.
    pub zero_shot_top1: Option<f64>,
    pub zero_shot_top5: Option<f64>,
    pub skipped_images: usize,
    /// Warnings raised during the epoch (a run that is not learning).
    pub warnings: Vec<String>,
}

/// What a run leaves behind.
#[derive(Debug, Clone, Serialize)]
pub struct TrainResult {
    /// The model with the lowest validation loss (the last one when nothing was held out).
    pub best_checkpoint: Option<PathBuf>,
    /// The model after the last completed epoch, with the state `resume` continues from.
    pub last_checkpoint: PathBuf,
    pub history: Vec<EpochRecord>,
    pub stopped_early: bool,
    pub interrupted: bool,
    /// Images that could not be decoded, with the reason (each listed once).
    pub skipped_images: Vec<(PathBuf, String)>,
    /// Rows of the captions file that could not be parsed.
    pub malformed_rows: usize,
    /// Rows whose image file does not exist.
    pub missing_images: usize,
    /// Images trained on (shards: samples counted from the shards' member names).
    pub train_images: usize,
    pub val_images: usize,
    /// Shards: samples skipped for having no caption, or no image (over the shards this
    /// process read).
    pub samples_without_caption: usize,
    pub samples_without_image: usize,
    /// Shards that ended inside a member (the samples before the damage were used).
    pub truncated_shards: Vec<PathBuf>,
    pub device: String,
    pub precision: String,
}

/// Progress of one step, for the observer.
#[derive(Debug, Clone, Serialize)]
pub struct StepInfo {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    pub global_step: i64,
    /// Loss of this step when it was read back from the device (every step on the CPU).
    pub loss: Option<f64>,
    pub lr: f64,
    /// Pairs of the global batch.
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
#[cfg(test)]
pub struct Silent;
#[cfg(test)]
impl Observer for Silent {}
