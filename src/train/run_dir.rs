//! The run folder: where a training run keeps what it has done, and how it finds it again.
//!
//! ```text
//! best/            the model with the lowest validation loss (liteclip format)
//! last/            the model after the last completed epoch (or, with `checkpoint_every`, the
//!                  last checkpointed step), plus the training state (optimizer moments, step,
//!                  history, position in the epoch) that `resume` continues from
//! metrics.jsonl    one line per epoch, for plotting
//! ```
//!
//! Each checkpoint folder is replaced as a unit ([`fsio::replace_folder`]); every file through
//! the one atomic writer of [`crate::fsio`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::identity::RunIdentity;
use super::optim::FlatAdam;
use super::options::Resume;
use super::report::EpochRecord;
use crate::checkpoint::WEIGHTS_FILE;
use crate::data::{DataInfo, DATA_INFO_FILE};
use crate::error::{Error, Result};
use crate::fsio;
use crate::liteclip::LiteClip;

const STATE_FILE: &str = "train_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const METRICS_FILE: &str = "metrics.jsonl";

/// The training state saved in `last/` (and what rank 0 sends the other ranks each epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainState {
    pub epochs_completed: usize,
    pub global_step: i64,
    /// The best value so far of the monitored figure (`TrainOptions::monitor`).
    #[serde(alias = "best_val_loss")]
    pub best_score: Option<f64>,
    pub bad_epochs: usize,
    pub history: Vec<EpochRecord>,
    pub batch_size: usize,
    pub seed: u64,
    /// fp16 training's dynamic loss scale.
    pub loss_scale: f64,
    /// Set in a checkpoint saved inside an epoch (`checkpoint_every`): how far epoch
    /// `epochs_completed` had got.
    #[serde(default)]
    pub partial_epoch: Option<PartialEpoch>,
    /// The options that define the run (absent in runs saved by older versions).
    #[serde(default)]
    pub identity: Option<RunIdentity>,
}

/// The part of an epoch done when a checkpoint was saved inside it: resuming skips its steps
/// and carries its sums on, so the epoch's record is the one an unbroken run writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PartialEpoch {
    /// Steps of the epoch done (its batches, applied or skipped).
    pub steps_done: usize,
    pub loss_sum: f64,
    pub pairs_sum: f64,
    /// Steps applied (a skipped non-finite step is not).
    pub applied_steps: usize,
    pub nonfinite_skipped: usize,
    pub seconds: f64,
    pub data_wait: f64,
    /// Warnings raised in the part of the epoch done.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Shard data: where every rank's streams stood.
    #[serde(default)]
    pub shard_cursor: Option<crate::data::stream::ShardCursor>,
}

impl TrainState {
    pub fn new(batch_size: usize, seed: u64, identity: RunIdentity) -> Self {
        TrainState {
            epochs_completed: 0,
            global_step: 0,
            best_score: None,
            bad_epochs: 0,
            history: Vec::new(),
            batch_size,
            seed,
            loss_scale: 65536.0,
            partial_epoch: None,
            identity: Some(identity),
        }
    }
}

/// A run's output folder.
pub(crate) struct RunDir {
    output: PathBuf,
}

impl RunDir {
    pub fn new(output: &Path) -> Self {
        RunDir {
            output: output.to_owned(),
        }
    }

    pub fn last(&self) -> PathBuf {
        self.output.join("last")
    }

    pub fn best(&self) -> PathBuf {
        self.output.join("best")
    }

    /// Fails early, before any training, when the folder cannot be written.
    pub fn check_writable(&self) -> Result<()> {
        let output = &self.output;
        std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
        let probe = output.join(".liteclip-write-test");
        std::fs::write(&probe, b"ok").map_err(|e| Error::io(&probe, e))?;
        std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
    }

    /// Checkpoints of a run (best/, last/ with the optimizer's two moments, and the copies that
    /// coexist while a save swaps folders) take about eight times the fp32 weights: refuse to
    /// start when the disk cannot hold them, rather than fail at the first save.
    pub fn check_free_space(&self, parameters: i64) -> Result<()> {
        let needed = 8 * 4 * parameters.max(0) as u64;
        match free_bytes(&self.output) {
            Some(free) if free < needed => Err(Error::Io {
                path: self.output.clone(),
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

    /// The checkpoint folder `resume` asks for, if any; starting afresh over an existing run is
    /// refused, to protect it.
    pub fn resume_from(&self, resume: &Resume) -> Result<Option<PathBuf>> {
        match resume {
            Resume::No => match fsio::existing_folder(&self.last(), WEIGHTS_FILE) {
                Some(existing) => Err(Error::invalid(format!(
                    "{} already holds a training run ({}); pass resume=True to continue it, or \
                     choose another output folder",
                    self.output.display(),
                    existing.display()
                ))),
                None => Ok(None),
            },
            Resume::Latest => Ok(fsio::existing_folder(&self.last(), WEIGHTS_FILE)),
            Resume::From(path) => fsio::existing_folder(path, WEIGHTS_FILE)
                .map(Some)
                .ok_or_else(|| Error::FileNotFound {
                    path: path.clone(),
                    hint: Some("resume= needs a run's last/ checkpoint folder".into()),
                }),
        }
    }

    /// `best/` if a run saved one.
    pub fn existing_best(&self) -> Option<PathBuf> {
        fsio::existing_folder(&self.best(), WEIGHTS_FILE)
    }

    /// `last/` as it is on disk (its `.old` copy after a save cut between renames).
    pub fn existing_last(&self) -> PathBuf {
        fsio::existing_folder(&self.last(), WEIGHTS_FILE).unwrap_or_else(|| self.last())
    }

    /// Saves `best/`: the model and the data it was trained on.
    pub fn save_best(&self, model: &LiteClip, data: &DataInfo) -> Result<PathBuf> {
        let best = self.best();
        fsio::replace_folder(&best, |dir| {
            model.save(dir)?;
            fsio::write_json(&dir.join(DATA_INFO_FILE), data)
        })?;
        Ok(best)
    }

    /// Saves `last/`: the model, the optimizer's state and the training state, as one unit.
    pub fn save_last(
        &self,
        model: &LiteClip,
        opt: &FlatAdam,
        state: &TrainState,
        data: &DataInfo,
    ) -> Result<()> {
        let opt_state: Vec<(String, Tensor)> = opt
            .state()
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.f_to_device(Device::Cpu)?)))
            .collect::<Result<_>>()?;
        fsio::replace_folder(&self.last(), |dir| {
            model.save(dir)?;
            fsio::write_json(&dir.join(DATA_INFO_FILE), data)?;
            fsio::write_atomically(&dir.join(OPTIMIZER_FILE), |tmp| {
                Tensor::write_safetensors(&opt_state, tmp).map_err(Error::from)
            })?;
            fsio::write_json(&dir.join(STATE_FILE), state)
        })
    }

    /// Rewrites `metrics.jsonl` (one line per epoch).
    pub fn write_metrics(&self, history: &[EpochRecord]) -> Result<()> {
        let mut text = String::new();
        for record in history {
            let line = serde_json::to_string(record)
                .map_err(|e| Error::invalid(format!("cannot serialise an epoch record: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        fsio::write_bytes(&self.output.join(METRICS_FILE), text.as_bytes())
    }
}

/// The training and optimizer state saved in a `last/` folder.
pub(crate) fn read_state(dir: &Path) -> Result<(TrainState, Vec<(String, Tensor)>)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(dir, format!("unreadable training state: {e}")))?;
    let optimizer = Tensor::read_safetensors(dir.join(OPTIMIZER_FILE))
        .map_err(|e| Error::checkpoint(dir, format!("unreadable optimizer state: {e}")))?;
    Ok((state, optimizer))
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
