//! The `Trainer`: set-up (data, run folder, model, optimizer, resumed state), the epoch loop,
//! and the end of an epoch (validate, save, decide whether to go on). The step itself is in
//! [`super::step`].
//!
//! One process is the one-rank case of data-parallel training ([`SingleProcess`]): every run
//! takes the same path, and the collectives of a world of one cost nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::distributed::{shard_batches, Collectives, SingleProcess};
use super::identity::RunIdentity;
use super::learning_check::LearningCheck;
use super::optim::{AdamConfig, FlatAdam};
use super::options::{Monitor, TrainOptions};
use super::report::{EpochRecord, Flow, Observer, StepInfo, TrainResult};
use super::run_dir::{read_state, PartialEpoch, RunDir, TrainState};
use crate::checkpoint;
use crate::config::LiteClipConfig;
use crate::data::loader::{ImageBatch, ImageTransform, Loader, LoaderConfig};
use crate::data::shards::{count_keys, ShardCounts};
use crate::data::source::DataSource;
use crate::data::stream::{
    rank_samples, RankCursor, ShardCursor, ShardLoader, StreamConfig, StreamProgress, CURSOR_FORMAT,
};
use crate::data::{epoch_samples, make_batches, DataInfo, Dataset, ImageFolder};
use crate::error::{Error, Result};
use crate::eval::{retrieval, tokenize_captions, zero_shot, RetrievalMetrics, ZeroShotMetrics};
use crate::image::Normalizer;
use crate::liteclip::LiteClip;
use crate::model::{Precision, TowerLocks};
use crate::text::TokenizedCaptions;
use crate::zeroshot::resolve_templates;

/// Trains a model as `options` say, reporting to `observer`.
pub fn train(options: &TrainOptions, observer: &mut dyn Observer) -> Result<TrainResult> {
    train_distributed(options, observer, &SingleProcess)
}

/// Trains as one rank of a data-parallel group: `options.batch_size` pairs per rank, one
/// global contrastive batch of `world_size * batch_size` (see [`super::distributed`]). Every
/// rank must call this with the same options; rank 0 alone validates and writes the output
/// folder.
pub fn train_distributed(
    options: &TrainOptions,
    observer: &mut dyn Observer,
    comm: &dyn Collectives,
) -> Result<TrainResult> {
    Trainer::new(options, observer, comm)?.run()
}

/// The training and validation sets of a run, and where they came from.
struct TrainData {
    train: TrainSet,
    val: Dataset,
    /// Recorded with each checkpoint, so evaluation finds the same split.
    info: DataInfo,
    malformed_rows: usize,
    missing_images: usize,
    /// Classified zero-shot at each epoch's end, with its templates.
    zero_shot: Option<(ImageFolder, Vec<String>)>,
}

/// The pairs a run trains on.
enum TrainSet {
    /// A folder or CSV: image paths and captions held whole, every caption tokenized once.
    Captioned(Arc<Dataset>),
    /// WebDataset shards, streamed (see [`crate::data::stream`]).
    Shards {
        shards: Arc<Vec<PathBuf>>,
        /// Samples per shard from the member names; not counted with `samples_per_epoch`.
        counts: Option<Vec<usize>>,
    },
}

impl TrainSet {
    fn num_images(&self) -> usize {
        match self {
            TrainSet::Captioned(dataset) => dataset.num_images(),
            TrainSet::Shards { counts, .. } => counts.iter().flatten().sum(),
        }
    }

    /// Steps of one epoch (before `max_steps_per_epoch`). Shards: a pass over the rank with the
    /// most samples (ranks that end sooner pad), or `samples_per_epoch` over all ranks.
    fn steps_per_epoch(&self, options: &TrainOptions, world: usize) -> usize {
        let rank_batch = options.contrastive_batch();
        match self {
            TrainSet::Captioned(dataset) => {
                make_batches(epoch_samples(dataset, options.seed, 0), rank_batch * world).len()
            }
            TrainSet::Shards { counts, .. } => match (options.samples_per_epoch, counts) {
                (Some(n), _) => n.div_ceil(rank_batch * world),
                (None, Some(counts)) => (0..world)
                    .map(|r| rank_samples(counts, r, world, options.workers).div_ceil(rank_batch))
                    .max()
                    .unwrap_or(0),
                (None, None) => 0,
            },
        }
    }
}

/// A rank's batches for (the rest of) an epoch.
struct EpochBatches {
    batches: Box<dyn Iterator<Item = Result<ImageBatch>>>,
    /// Folder data: pairs of each global batch of the epoch (shards: not known ahead).
    global_sizes: Option<Vec<usize>>,
}

pub(super) struct Trainer<'a> {
    pub(super) options: &'a TrainOptions,
    pub(super) comm: &'a dyn Collectives,
    observer: &'a mut dyn Observer,
    pub(super) run_dir: RunDir,
    pub(super) device: Device,
    pub(super) precision: Precision,
    pub(super) model: LiteClip,
    pub(super) opt: FlatAdam,
    pub(super) state: TrainState,
    data: TrainData,
    /// Every training caption, tokenized once; `offsets[entry]` is the first of an entry's.
    pub(super) captions: TokenizedCaptions,
    pub(super) offsets: Vec<usize>,
    pub(super) normalizer: Normalizer,
    steps_per_epoch: usize,
    total_steps: i64,
    /// Steps of linear warm-up (`warmup_steps`, or a share of `total_steps`).
    warmup_steps: i64,
    learning: LearningCheck,
    skipped: SkippedImages,
    best_checkpoint: Option<PathBuf>,
    /// Shard data: where this rank's streams stand after the last batch, and what the shards
    /// read so far skipped.
    stream_cursor: Option<RankCursor>,
    shard_counts: BTreeMap<PathBuf, ShardCounts>,
}

/// What rank 0 tells the other ranks after an epoch (it alone validates and saves).
#[derive(Serialize, Deserialize)]
struct EpochOutcome {
    state: TrainState,
    best_saved: bool,
    stop: bool,
}

impl<'a> Trainer<'a> {
    /// Everything before the first step. The data comes first, so that a bad data set fails
    /// before a model is built; nothing is written until the output folder is known to take it.
    fn new(
        options: &'a TrainOptions,
        observer: &'a mut dyn Observer,
        comm: &'a dyn Collectives,
    ) -> Result<Self> {
        options.validate()?;
        let device = options.device.resolve()?;
        let precision = options.precision.on(device);
        let main = comm.rank() == 0;
        let data = open_data(options, observer, comm.world_size())?;
        let run_dir = RunDir::new(&options.output);
        if main {
            run_dir.check_writable()?;
        }
        let identity = RunIdentity::of(options, comm.world_size());
        let resume_from = run_dir.resume_from(&options.resume)?;
        let saved = match &resume_from {
            Some(dir) => {
                let (state, opt_state) = read_state(dir)?;
                check_resume(dir, &state, &identity, options, &data)?;
                Some((dir.clone(), state, opt_state))
            }
            None => None,
        };
        let mut model = build_model(options, resume_from.as_deref(), device)?;
        lock_towers(&mut model, options, resume_from.is_none(), observer)?;
        model.set_precision(precision)?;
        model.set_decode(options.decode);
        if main {
            run_dir.check_free_space(model.num_parameters())?;
        }
        let mut opt = FlatAdam::new(
            model.varstore(),
            AdamConfig {
                kind: options.optimizer,
                weight_decay: options.weight_decay,
                ..Default::default()
            },
        )?;
        let state = match saved {
            Some((dir, mut state, opt_state)) => {
                // What defines the run matched (checked above); what may change is recorded
                // as it is now, for the next resume's checks.
                state.identity = Some(identity);
                restore(&dir, state, &opt_state, options, &mut opt, observer)?
            }
            None => TrainState::new(options.contrastive_batch(), options.seed, identity),
        };
        let (captions, offsets) = match &data.train {
            TrainSet::Captioned(dataset) => tokenize_captions(&model, dataset)?,
            TrainSet::Shards { .. } => Default::default(), // tokenized batch by batch
        };
        let steps_per_epoch = {
            let n = data.train.steps_per_epoch(options, comm.world_size());
            options.max_steps_per_epoch.map_or(n, |m| n.min(m))
        };
        let total_steps = (steps_per_epoch * options.epochs) as i64;
        let warmup_steps = options.warmup(total_steps);
        let learning = LearningCheck::new(total_steps, warmup_steps, state.global_step);
        Ok(Trainer {
            options,
            comm,
            observer,
            best_checkpoint: run_dir.existing_best(),
            run_dir,
            device,
            precision,
            model,
            opt,
            state,
            data,
            captions,
            offsets,
            normalizer: Normalizer::new(device)?,
            steps_per_epoch,
            total_steps,
            warmup_steps,
            learning,
            skipped: SkippedImages::default(),
            stream_cursor: None,
            shard_counts: BTreeMap::new(),
        })
    }

    fn run(mut self) -> Result<TrainResult> {
        let (mut stopped_early, mut interrupted) = (false, false);
        for epoch in self.state.epochs_completed..self.options.epochs {
            if self.patience_exhausted() {
                stopped_early = true;
                break;
            }
            let Some(totals) = self.train_epoch(epoch)? else {
                interrupted = true;
                break;
            };
            if self.end_epoch(epoch, totals)? == Flow::Stop {
                interrupted = true;
                break;
            }
        }
        self.skipped.report(self.observer);
        Ok(self.result(stopped_early, interrupted))
    }

    fn patience_exhausted(&self) -> bool {
        self.options
            .early_stopping_patience
            .is_some_and(|p| self.state.bad_epochs >= p && self.monitored())
    }

    /// Whether the monitored figure is measured at all (no validation images: no loss).
    fn monitored(&self) -> bool {
        match self.options.monitor {
            Monitor::ValLoss => !self.data.val.entries.is_empty(),
            Monitor::ZeroShotTop1 => self.data.zero_shot.is_some(),
        }
    }

    pub(super) fn total_steps(&self) -> i64 {
        self.total_steps
    }

    pub(super) fn warmup_steps(&self) -> i64 {
        self.warmup_steps
    }

    /// Warns (once) when the loss is still at ln(batch) a share into the run.
    fn check_learning(&mut self, step: &super::step::StepOutcome, pairs: usize) -> Option<String> {
        let seen = self
            .learning
            .record(self.state.global_step, step.loss_value, pairs)?;
        let warning = seen.message(
            self.total_steps,
            self.options.learning_rate(),
            self.global_batch(),
        );
        if self.comm.rank() == 0 {
            self.observer.message(&warning);
        }
        Some(warning)
    }

    /// Pairs of one contrastive batch over all ranks.
    pub(super) fn global_batch(&self) -> usize {
        self.options.contrastive_batch() * self.comm.world_size()
    }

    /// Trains one epoch, or the rest of one a checkpoint was saved inside; `None` when the
    /// observer stopped it (Ctrl-C).
    fn train_epoch(&mut self, epoch: usize) -> Result<Option<EpochTotals>> {
        let steps = self.steps_per_epoch;
        if self.observer.epoch_start(epoch, self.options.epochs, steps) == Flow::Stop {
            return Ok(None);
        }
        let partial = self.state.partial_epoch.take();
        let done = partial.as_ref().map_or(0, |p| p.steps_done.min(steps));
        let plan = self.epoch_batches(epoch, steps, done, partial.as_ref())?;
        // The loss is read back every step on the CPU (free) and every few steps on a GPU (a
        // read waits for the GPU), or every step when non-finite losses are to be skipped.
        let read_every = if self.device.is_cuda() { 10 } else { 1 };
        let mut totals =
            EpochTotals::new(self.device, self.options.learning_rate(), partial.as_ref())?;
        let (mut pairs_seen, since) = (0, Instant::now());
        self.stream_cursor = None;
        let mut batches = plan.batches.enumerate().map(|(i, b)| (i + done, b));
        loop {
            let waited = Instant::now();
            let Some((i, batch)) = batches.next() else {
                break;
            };
            totals.data_wait += waited.elapsed().as_secs_f64();
            let mut batch = batch?;
            self.take_batch_news(&mut batch);
            if !self.enough_pairs(&batch)? {
                continue;
            }
            let read_loss = (i + 1) % read_every == 0 || i + 1 == steps;
            let step = self.step(epoch, &batch, read_loss || self.options.skip_nonfinite)?;
            totals.add(&step)?;
            self.state.global_step += 1;
            let pairs = match &plan.global_sizes {
                Some(sizes) => sizes[i],
                None => batch.captions.len() * self.comm.world_size(),
            };
            pairs_seen += pairs;
            if let Some(warning) = self.check_learning(&step, pairs) {
                totals.warnings.push(warning);
            }
            let info = StepInfo {
                epoch,
                step: i + 1,
                steps,
                global_step: self.state.global_step,
                loss: step.loss_value,
                lr: step.lr,
                pairs,
                pairs_per_second: pairs_seen as f64 / since.elapsed().as_secs_f64().max(1e-9),
            };
            if self.observer.step(&info) == Flow::Stop {
                return Ok(None);
            }
            if self.checkpoint_due(i + 1, steps) {
                self.save_inside_epoch(i + 1, &totals)?;
            }
        }
        Ok(Some(totals))
    }

    /// This rank's batches of epoch `epoch` from step `done` on.
    fn epoch_batches(
        &mut self,
        epoch: usize,
        steps: usize,
        done: usize,
        partial: Option<&PartialEpoch>,
    ) -> Result<EpochBatches> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let config = self.loader_config(epoch);
        match &self.data.train {
            TrainSet::Captioned(dataset) => {
                let mut batches = make_batches(
                    epoch_samples(dataset, self.options.seed, epoch as u64),
                    self.global_batch(),
                );
                batches.truncate(steps);
                let global_sizes = batches.iter().map(Vec::len).collect();
                // The epoch's order and each pair's augmentation (keyed by its position in the
                // epoch) are those of the whole epoch; a resumed one starts at its next batch.
                let shards = shard_batches(batches, rank, world).into_iter().skip(done);
                let loader = Loader::start_at(dataset.clone(), shards.collect(), config);
                Ok(EpochBatches {
                    batches: Box::new(loader),
                    global_sizes: Some(global_sizes),
                })
            }
            TrainSet::Shards { shards, .. } => {
                let stream = StreamConfig {
                    shards: shards.clone(),
                    rank,
                    world,
                    workers: self.options.workers,
                    shuffle_buffer: self.options.shuffle_buffer,
                    repeat: self.options.samples_per_epoch.is_some(),
                    batch_size: self.options.contrastive_batch(),
                    batches: steps - done,
                    pad: world > 1,
                    loader: config,
                };
                let cursor = self.resume_cursor(partial);
                let tokenizer = self.model.tokenizer().clone();
                Ok(EpochBatches {
                    batches: Box::new(ShardLoader::start(stream, cursor, tokenizer)),
                    global_sizes: None,
                })
            }
        }
    }

    /// Where this rank's shard streams start: the epoch's beginning, or where a checkpoint
    /// inside it left them (when saved with the same ranks and workers; otherwise the rest of
    /// the epoch is read from the beginning of the shards, which the message says).
    fn resume_cursor(&mut self, partial: Option<&PartialEpoch>) -> RankCursor {
        let (rank, world, workers) = (
            self.comm.rank(),
            self.comm.world_size(),
            self.options.workers,
        );
        let saved = partial.and_then(|p| p.shard_cursor.as_ref());
        match saved {
            Some(c) if c.format != CURSOR_FORMAT => {
                if rank == 0 {
                    self.observer.message(
                        "the checkpoint's position in the shards was saved by an older liteclip, \
                         which shuffled them otherwise: the rest of the epoch reads the shards \
                         from their start",
                    );
                }
                RankCursor::start(workers)
            }
            Some(c) if c.workers == workers && c.ranks.len() == world => c.ranks[rank].clone(),
            Some(c) => {
                if rank == 0 {
                    self.observer.message(&format!(
                        "the checkpoint was saved by {} ranks x {} workers, this run has {world} \
                         x {workers}: the rest of the epoch reads the shards from their start \
                         (its samples differ from an unbroken run's)",
                        c.ranks.len(),
                        c.workers
                    ));
                }
                RankCursor::start(workers)
            }
            None => RankCursor::start(workers),
        }
    }

    /// Takes what a batch reports besides its rows: undecodable images, and (shards) the
    /// streams' position and the samples finished shards skipped.
    fn take_batch_news(&mut self, batch: &mut ImageBatch) {
        self.skipped.add(std::mem::take(&mut batch.failed));
        if let Some(StreamProgress {
            cursor,
            shards_done,
        }) = batch.stream.take()
        {
            self.stream_cursor = Some(cursor);
            for (shard, counts) in shards_done {
                // A shard read again (another epoch, a resume) is counted once.
                let seen = self.shard_counts.entry(shard).or_default();
                if counts.samples + counts.no_caption + counts.no_image
                    >= seen.samples + seen.no_caption + seen.no_image
                {
                    *seen = counts;
                }
            }
        }
    }

    /// Whether the global batch has the two pairs a contrastive loss needs. Alone, that is
    /// known here. In a group, folder batches always have them; shard ranks whose streams
    /// have ended send padding, so the ranks count their pairs together.
    fn enough_pairs(&self, batch: &ImageBatch) -> Result<bool> {
        let kept = batch.captions.len();
        if self.comm.world_size() == 1 {
            return Ok(kept >= 2);
        }
        if matches!(self.data.train, TrainSet::Captioned(_)) {
            return Ok(true);
        }
        let count = Tensor::f_from_slice(&[kept as f32])?.f_to_device(self.device)?;
        self.comm.all_reduce_sum(&count)?;
        Ok(count.f_double_value(&[0])? >= 2.0)
    }

    /// A checkpoint every `checkpoint_every` steps of an epoch (its end saves anyway).
    fn checkpoint_due(&self, steps_done: usize, steps: usize) -> bool {
        self.options
            .checkpoint_every
            .is_some_and(|n| steps_done % n == 0 && steps_done < steps)
    }

    /// Rank 0 saves `last/` with the position inside the epoch. The other ranks go on: their
    /// state is rank 0's (every rank steps the same), and a resume reads rank 0's folder. With
    /// shards, every rank first sends rank 0 where its streams stand.
    fn save_inside_epoch(&mut self, steps_done: usize, totals: &EpochTotals) -> Result<()> {
        let shard_cursor = self.gather_shard_cursor()?;
        if self.comm.rank() != 0 {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.partial_epoch = Some(PartialEpoch {
            shard_cursor,
            ..totals.partial(steps_done)?
        });
        self.run_dir
            .save_last(&self.model, &self.opt, &state, &self.data.info)
    }

    /// Every rank's stream positions (a collective: all ranks call it), for shard data.
    fn gather_shard_cursor(&self) -> Result<Option<ShardCursor>> {
        if !matches!(self.data.train, TrainSet::Shards { .. }) {
            return Ok(None);
        }
        let workers = self.options.workers;
        let local = self
            .stream_cursor
            .clone()
            .unwrap_or_else(|| RankCursor::start(workers))
            .encode();
        let local = Tensor::f_from_slice(&local)?.f_to_device(self.device)?;
        let all = self.comm.all_gather(&local)?.f_to_device(Device::Cpu)?;
        let values = Vec::<i64>::try_from(&all)?;
        Ok(Some(ShardCursor {
            format: CURSOR_FORMAT,
            workers,
            ranks: RankCursor::decode_all(&values, workers),
        }))
    }

    fn loader_config(&self, epoch: usize) -> LoaderConfig {
        LoaderConfig {
            image_size: self.model.config().image_size as u32,
            transform: if self.options.augment {
                ImageTransform::RandomResizedCrop {
                    scale: (0.5, 1.0),
                    ratio: (3.0 / 4.0, 4.0 / 3.0),
                }
            } else {
                ImageTransform::Center
            },
            prefetch: self.options.prefetch,
            seed: self.options.seed,
            epoch: epoch as u64,
            pin_memory: self.device.is_cuda().then_some(self.device),
            decode: self.options.decode,
        }
    }

    /// Rank 0 validates, saves and decides; every rank then goes on with its outcome.
    fn end_epoch(&mut self, epoch: usize, totals: EpochTotals) -> Result<Flow> {
        let summary = totals.finish(epoch, &self.run_dir.last())?;
        let outcome = if self.comm.rank() == 0 {
            Some(self.validate_and_save(epoch, &summary)?)
        } else {
            None
        };
        let outcome = self.share_outcome(outcome)?;
        if outcome.best_saved {
            // Rank 0 wrote it; other ranks (on other machines, perhaps) name the same path.
            self.best_checkpoint = Some(self.run_dir.best());
        }
        Ok(if outcome.stop {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    /// Validates over the whole validation set (once, in batches of the global batch size: the
    /// validation loss's negatives are those of a training batch, so runs with the same global
    /// batch compare), classifies `zero_shot_data` if given, records the epoch, and saves
    /// `best/` (when the monitored figure improved) and `last/`.
    fn validate_and_save(&mut self, epoch: usize, summary: &EpochSummary) -> Result<EpochOutcome> {
        let val = if self.data.val.entries.is_empty() {
            None
        } else {
            Some(retrieval(&self.model, &self.data.val, self.global_batch())?)
        };
        let zero_shot = match &self.data.zero_shot {
            Some((folder, templates)) => Some(zero_shot(
                &self.model,
                folder,
                templates,
                self.global_batch(),
            )?),
            None => None,
        };
        let record = self.epoch_record(epoch, summary, val.as_ref(), zero_shot.as_ref())?;
        self.state.history.push(record.clone());
        self.state.epochs_completed = epoch + 1;
        let monitor = self.options.monitor;
        let score = monitor.of(&record);
        let improved = match (score, self.state.best_score) {
            (Some(new), Some(best)) => monitor.improves(new, best),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if score.is_some() {
            if improved {
                self.state.best_score = score;
                self.state.bad_epochs = 0;
                self.run_dir.save_best(&self.model, &self.data.info)?;
            } else {
                self.state.bad_epochs += 1;
            }
        }
        self.run_dir
            .save_last(&self.model, &self.opt, &self.state, &self.data.info)?;
        self.run_dir.write_metrics(&self.state.history)?;
        let stop = self.observer.epoch_end(&record) == Flow::Stop;
        Ok(EpochOutcome {
            state: self.state.clone(),
            best_saved: improved,
            stop,
        })
    }

    /// Rank 0's outcome on every rank (in a world of one, a round trip through JSON). The
    /// others wait on the rendezvous store, not on a collective, so a long validation needs no
    /// timeout.
    fn share_outcome(&mut self, outcome: Option<EpochOutcome>) -> Result<EpochOutcome> {
        let text = outcome
            .map(|o| serde_json::to_string(&o))
            .transpose()
            .map_err(|e| Error::invalid(format!("cannot serialise the epoch's outcome: {e}")))?;
        let text = self.comm.broadcast_from_main(text)?;
        let received: EpochOutcome = serde_json::from_str(&text).map_err(|e| {
            Error::Distributed(format!("rank 0 sent an unreadable epoch outcome: {e}"))
        })?;
        if self.comm.rank() != 0 {
            self.state = received.state.clone();
            if let Some(record) = self.state.history.last() {
                let _ = self.observer.epoch_end(record);
            }
        }
        Ok(received)
    }

    fn epoch_record(
        &self,
        epoch: usize,
        s: &EpochSummary,
        val: Option<&RetrievalMetrics>,
        zero_shot: Option<&ZeroShotMetrics>,
    ) -> Result<EpochRecord> {
        Ok(EpochRecord {
            epoch: epoch + 1,
            step: self.state.global_step,
            train_loss: s.train_loss,
            lr: s.lr,
            logit_scale: self.model.logit_scale()?,
            seconds: s.seconds,
            pairs_per_second: s.pairs as f64 / s.seconds.max(1e-9),
            data_wait_seconds: s.data_wait,
            nonfinite_skipped: s.nonfinite_skipped,
            val_loss: val.map(|v| v.loss),
            val_i2t_r1: val.map(|v| v.i2t_r1),
            val_i2t_r5: val.map(|v| v.i2t_r5),
            val_i2t_r10: val.map(|v| v.i2t_r10),
            val_t2i_r1: val.map(|v| v.t2i_r1),
            val_t2i_r5: val.map(|v| v.t2i_r5),
            val_t2i_r10: val.map(|v| v.t2i_r10),
            zero_shot_top1: zero_shot.map(|z| z.top1),
            zero_shot_top5: zero_shot.map(|z| z.top5),
            skipped_images: self.skipped.list.len(),
            warnings: s.warnings.clone(),
        })
    }

    fn result(self, stopped_early: bool, interrupted: bool) -> TrainResult {
        let last = self.run_dir.existing_last();
        let no_validation = !self.monitored();
        TrainResult {
            best_checkpoint: self
                .best_checkpoint
                .or_else(|| no_validation.then(|| last.clone())),
            last_checkpoint: last,
            history: self.state.history,
            stopped_early,
            interrupted,
            skipped_images: self.skipped.list,
            malformed_rows: self.data.malformed_rows,
            missing_images: self.data.missing_images,
            samples_without_caption: self.shard_counts.values().map(|c| c.no_caption).sum(),
            samples_without_image: self.shard_counts.values().map(|c| c.no_image).sum(),
            truncated_shards: self
                .shard_counts
                .iter()
                .filter(|(_, c)| c.truncated)
                .map(|(p, _)| p.clone())
                .collect(),
            train_images: self.data.train.num_images(),
            val_images: self.data.val.num_images(),
            device: crate::device::device_name(self.device),
            precision: self.precision.name().into(),
        }
    }
}

/// Opens the training data (a captioned set split by image, or shards) and the validation and
/// zero-shot sets; says what was dropped while reading them.
fn open_data(
    options: &TrainOptions,
    observer: &mut dyn Observer,
    world: usize,
) -> Result<TrainData> {
    let csv = options.csv();
    let source = options.data.resolve()?;
    let (train, val, report) = match &source {
        DataSource::Captioned(path) => open_captioned(options, path)?,
        DataSource::Shards(shards) => open_shards(options, shards, world, observer)?,
    };
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
    // Opened now, so that a bad folder fails before anything is trained.
    let zero_shot = match &options.zero_shot_data {
        Some(root) => Some((
            ImageFolder::open(root)?,
            resolve_templates(options.zero_shot_templates.clone()),
        )),
        None => None,
    };
    Ok(TrainData {
        zero_shot,
        train,
        val,
        // Absolute, so that `evaluate(checkpoint, split="val")` finds the data from any folder.
        info: DataInfo {
            data: absolute(&options.data.first()),
            image_column: csv.image_column,
            caption_column: csv.caption_column,
            images_dir: csv.images_dir.as_deref().map(absolute),
            val_fraction: options.val_fraction,
            seed: options.seed,
            val_data: options.val_data.as_deref().map(absolute),
            shards: matches!(source, DataSource::Shards(_)),
        },
        malformed_rows: report.malformed_rows,
        missing_images: report.missing_images,
    })
}

/// `path` made absolute against the working folder (as given when that fails).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A folder or CSV, split by image (or whole, with `val_data`).
fn open_captioned(
    options: &TrainOptions,
    path: &Path,
) -> Result<(TrainSet, Dataset, crate::data::ReadReport)> {
    let csv = options.csv();
    let dataset = Dataset::open(path, &csv)?;
    let (train, val) = match &options.val_data {
        Some(val_data) => (
            dataset.split(0.0, options.seed)?.0,
            Dataset::open(val_data, &csv)?,
        ),
        None => dataset.split(options.val_fraction, options.seed)?,
    };
    if train.num_images() < 2 {
        return Err(Error::invalid(format!(
            "{}: need at least 2 training images, found {}",
            path.display(),
            train.num_images()
        )));
    }
    check_validation_size(options, &dataset, &val)?;
    let report = dataset.report.clone();
    Ok((TrainSet::Captioned(Arc::new(train)), val, report))
}

/// Validation ranks images against captions: one image cannot be ranked, and would fail the
/// run at the end of its first epoch. Checked before the first step instead.
fn check_validation_size(options: &TrainOptions, dataset: &Dataset, val: &Dataset) -> Result<()> {
    let n = val.num_images();
    if n == 0 || n >= 2 {
        return Ok(());
    }
    Err(Error::invalid(match &options.val_data {
        Some(val_data) => format!(
            "val_data {} holds {n} image; validation needs at least 2",
            val_data.display()
        ),
        None => format!(
            "val_fraction={} of {} images leaves {n} image for validation, which needs at \
             least 2: give val_fraction={:.2} or more, a separate val_data=, or val_fraction=0 \
             to train without validation",
            options.val_fraction,
            dataset.num_images(),
            (2.0 / dataset.num_images() as f64).min(0.99)
        ),
    }))
}

/// Shards, counted from their member names unless `samples_per_epoch` sizes the epoch. No
/// validation split is cut from a stream: validation comes from `val_data`.
fn open_shards(
    options: &TrainOptions,
    shards: &[PathBuf],
    world: usize,
    observer: &mut dyn Observer,
) -> Result<(TrainSet, Dataset, crate::data::ReadReport)> {
    if shards.len() < world {
        return Err(Error::invalid(format!(
            "{} shards for {world} processes: every process needs at least one shard (write \
             smaller shards, e.g. liteclip shard --samples-per-shard)",
            shards.len()
        )));
    }
    let counts = match options.samples_per_epoch {
        Some(_) => None,
        None => {
            let counts = shards
                .iter()
                .map(|s| count_keys(s))
                .collect::<Result<Vec<_>>>()?;
            if counts.iter().sum::<usize>() < 2 {
                return Err(Error::invalid(format!(
                    "{}: the shards hold {} samples (an image member and a .txt or .json \
                     caption under one key); need at least 2",
                    options.data.display(),
                    counts.iter().sum::<usize>()
                )));
            }
            Some(counts)
        }
    };
    let (val, report) = match &options.val_data {
        Some(val_data) => {
            let val = Dataset::open(val_data, &options.csv())?;
            check_validation_size(options, &val, &val)?;
            let report = val.report.clone();
            (val, report)
        }
        None => {
            observer.message(
                "data: WebDataset shards are not split for validation; pass val_data= (a folder \
                 or CSV) to validate each epoch",
            );
            (Dataset::from_entries(Vec::new()), Default::default())
        }
    };
    let train = TrainSet::Shards {
        shards: Arc::new(shards.to_vec()),
        counts,
    };
    Ok((train, val, report))
}

/// The model to train: the run being resumed, or a fresh one (from `init`, or random), with
/// backbone weights loaded into its towers when asked.
fn build_model(
    options: &TrainOptions,
    resume_from: Option<&Path>,
    device: Device,
) -> Result<LiteClip> {
    let config = LiteClipConfig::from_name_or_file(&options.model)?;
    tch::manual_seed(options.seed as i64);
    if let Some(dir) = resume_from {
        return LiteClip::load(dir, device, None);
    }
    let model = match &options.init {
        Some(init) => {
            let weights = checkpoint::read(init)?;
            let config = weights.config.clone().unwrap_or(config);
            checkpoint::check_config_fits(&config, &weights.tensors, init)?;
            let model = LiteClip::new(config, device)?;
            checkpoint::load_into(model.varstore(), weights)?;
            model
        }
        None => LiteClip::new(config, device)?,
    };
    if let Some(path) = &options.image_weights {
        checkpoint::backbones::load_image_tower(model.varstore(), path)?;
    }
    if let Some(path) = &options.text_weights {
        checkpoint::backbones::load_text_tower(model.varstore(), path)?;
    }
    Ok(model)
}

/// Refuses to resume the run saved in `dir` with options that would change what its saved
/// state means (see [`super::identity`]).
fn check_resume(
    dir: &Path,
    state: &TrainState,
    given: &RunIdentity,
    options: &TrainOptions,
    data: &TrainData,
) -> Result<()> {
    let split = matches!(data.train, TrainSet::Captioned(_)) && options.val_data.is_none();
    let inside_epoch = state.partial_epoch.is_some();
    match &state.identity {
        Some(saved) => saved.check_resume(given, dir, split, inside_epoch),
        // A run saved before identities were recorded: its model config is all there is.
        None => {
            let config = dir.join(checkpoint::CONFIG_FILE);
            let saved = LiteClipConfig::from_json_file(&config)?;
            let wanted = LiteClipConfig::from_name_or_file(&options.model)?;
            if options.init.is_none() && saved != wanted {
                return Err(Error::invalid(format!(
                    "cannot resume the run in {}: its model is not model={:?}; pass the run's \
                     own model to continue it, or another output folder to start a new run",
                    dir.display(),
                    options.model
                )));
            }
            Ok(())
        }
    }
}

/// Locks the towers `options` asks for (LiT), after checking the counts against the model.
/// `fresh`: the run starts now (not resumed), so a locked random tower is worth a warning.
fn lock_towers(
    model: &mut LiteClip,
    options: &TrainOptions,
    fresh: bool,
    observer: &mut dyn Observer,
) -> Result<()> {
    let locks = options.locks();
    if locks == TowerLocks::default() {
        return Ok(());
    }
    let (stages, layers) = (
        model.config().image.depths.len(),
        model.config().text.num_layers as usize,
    );
    if locks.image.is_some_and(|n| n > stages) {
        return Err(Error::invalid(format!(
            "lock_image_unlocked_stages={}: the image tower has {stages} stages",
            options.lock_image_unlocked_stages
        )));
    }
    if locks.text.is_some_and(|n| n > layers) {
        return Err(Error::invalid(format!(
            "lock_text_unlocked_layers={}: the text tower has {layers} layers",
            options.lock_text_unlocked_layers
        )));
    }
    let total = model.num_parameters();
    let locked = model.lock(locks);
    observer.message(&format!(
        "locked {locked} of {total} weights ({:.0}%): they keep their starting values",
        100.0 * locked as f64 / total.max(1) as f64
    ));
    let pretrained = |tower: &Option<PathBuf>| options.init.is_some() || tower.is_some();
    for (locked, weights, name, option) in [
        (
            options.lock_image,
            &options.image_weights,
            "image",
            "image_weights",
        ),
        (
            options.lock_text,
            &options.text_weights,
            "text",
            "text_weights",
        ),
    ] {
        if fresh && locked && !pretrained(weights) {
            observer.message(&format!(
                "warning: the {name} tower is locked but starts from random weights, so it \
                 stays random; pass {option}= (or init=) to lock a trained tower"
            ));
        }
    }
    Ok(())
}

/// Continues from the training state and optimizer moments of the run in `dir`.
fn restore(
    dir: &Path,
    state: TrainState,
    opt_state: &[(String, Tensor)],
    options: &TrainOptions,
    opt: &mut FlatAdam,
    observer: &mut dyn Observer,
) -> Result<TrainState> {
    if state.batch_size != options.contrastive_batch() || state.seed != options.seed {
        observer.message(&format!(
            "resuming with batch_size x accum_steps {} and seed {} (the run used {} and {}): \
             the result will differ from an unbroken run",
            options.contrastive_batch(),
            options.seed,
            state.batch_size,
            state.seed
        ));
    }
    opt.load_state(opt_state)?;
    let inside = match &state.partial_epoch {
        Some(p) => format!(
            " and {} steps of epoch {}",
            p.steps_done,
            state.epochs_completed + 1
        ),
        None => String::new(),
    };
    observer.message(&format!(
        "resuming from {} after epoch {}{inside} (step {})",
        dir.display(),
        state.epochs_completed,
        state.global_step
    ));
    Ok(state)
}

/// Images the loader could not use, each listed once however many epochs meet it.
#[derive(Default)]
struct SkippedImages {
    list: Vec<(PathBuf, String)>,
    seen: HashSet<PathBuf>,
}

impl SkippedImages {
    fn add(&mut self, failed: Vec<(PathBuf, String)>) {
        for (path, why) in failed {
            if self.seen.insert(path.clone()) {
                self.list.push((path, why));
            }
        }
    }

    fn report(&self, observer: &mut dyn Observer) {
        if let Some((path, why)) = self.list.first() {
            observer.message(&format!(
                "skipped {} images that could not be decoded, e.g. {}: {why}",
                self.list.len(),
                path.display()
            ));
        }
    }
}

/// Sums over the steps of an epoch, kept on the device until the epoch ends.
struct EpochTotals {
    started: Instant,
    loss_sum: Tensor,
    pairs_sum: Tensor,
    steps: usize,
    nonfinite_skipped: usize,
    data_wait: f64,
    lr: f64,
    warnings: Vec<String>,
}

/// An epoch's figures once read back.
struct EpochSummary {
    train_loss: f64,
    pairs: usize,
    seconds: f64,
    data_wait: f64,
    nonfinite_skipped: usize,
    lr: f64,
    warnings: Vec<String>,
}

impl EpochTotals {
    /// Sums from zero, or carried on from the part of the epoch a checkpoint saved.
    fn new(device: Device, lr: f64, partial: Option<&PartialEpoch>) -> Result<Self> {
        let scalar = |v: f64| Tensor::f_full([], v, (Kind::Float, device));
        let p = partial.cloned().unwrap_or_default();
        Ok(EpochTotals {
            started: Instant::now()
                .checked_sub(Duration::from_secs_f64(p.seconds.max(0.0)))
                .unwrap_or_else(Instant::now),
            loss_sum: scalar(p.loss_sum)?,
            pairs_sum: scalar(p.pairs_sum)?,
            steps: p.applied_steps,
            nonfinite_skipped: p.nonfinite_skipped,
            data_wait: p.data_wait,
            lr,
            warnings: p.warnings,
        })
    }

    /// The sums so far, for a checkpoint inside the epoch (read back exactly: f32 in f64).
    fn partial(&self, steps_done: usize) -> Result<PartialEpoch> {
        Ok(PartialEpoch {
            steps_done,
            loss_sum: self.loss_sum.f_double_value(&[])?,
            pairs_sum: self.pairs_sum.f_double_value(&[])?,
            applied_steps: self.steps,
            nonfinite_skipped: self.nonfinite_skipped,
            seconds: self.started.elapsed().as_secs_f64(),
            data_wait: self.data_wait,
            warnings: self.warnings.clone(),
            shard_cursor: None, // filled in by the trainer
        })
    }

    fn add(&mut self, step: &super::step::StepOutcome) -> Result<()> {
        self.lr = step.lr;
        if step.applied {
            self.loss_sum = self.loss_sum.f_add(&step.loss)?;
            self.pairs_sum = self.pairs_sum.f_add(&step.pairs)?;
            self.steps += 1;
        } else {
            self.nonfinite_skipped += 1;
        }
        Ok(())
    }

    /// Reads the sums back. A non-finite mean loss (steps between two reads on a GPU) is caught
    /// here, before anything of the epoch is saved.
    fn finish(self, epoch: usize, last_dir: &Path) -> Result<EpochSummary> {
        let seconds = self.started.elapsed().as_secs_f64();
        let train_loss = if self.steps > 0 {
            self.loss_sum.f_double_value(&[])? / self.steps as f64
        } else {
            f64::NAN
        };
        if !train_loss.is_finite() && self.steps > 0 {
            return Err(Error::NonFiniteLoss(format!(
                "the loss became non-finite during epoch {}; nothing of this epoch was saved, the \
                 last completed epoch's checkpoint is in {}",
                epoch + 1,
                last_dir.display()
            )));
        }
        Ok(EpochSummary {
            train_loss,
            pairs: self.pairs_sum.f_double_value(&[])?.round() as usize,
            seconds,
            data_wait: self.data_wait,
            nonfinite_skipped: self.nonfinite_skipped,
            lr: self.lr,
            warnings: self.warnings,
        })
    }
}
