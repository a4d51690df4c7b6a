//! One optimisation step: this rank's slice of a global batch forward, the global batch's
//! backward (see [`super::distributed`]), the gradient summed over ranks, and the Adam update.
//! In a world of one the gather and the sums are identities, and this is the ordinary step.

use tch::{Kind, Tensor};

use super::distributed::{backward_global_batch, GlobalStep, LossForm};
use super::grad_cache::grad_cache_backward;
use super::trainer::Trainer;
use crate::data::loader::{BatchCaptions, ImageBatch};
use crate::device::to_device_async;
use crate::error::{Error, Result};
use crate::loss::clamp_logit_scale;
use crate::model::{l2_normalize, Precision};
use crate::rng::Rng;
use crate::text::token_tensors;
use crate::text::TokenBatch;

/// What a step did.
pub(super) struct StepOutcome {
    /// The global batch's loss (a device scalar, the same on every rank).
    pub loss: Tensor,
    /// Real pairs in the global batch (a device scalar).
    pub pairs: Tensor,
    /// The loss read back, when it was read.
    pub loss_value: Option<f64>,
    pub lr: f64,
    /// False when a non-finite loss was skipped (`skip_nonfinite`): nothing was updated.
    pub applied: bool,
}

/// A step's inputs on the device.
pub(super) struct StepInputs {
    pub pixels: Tensor,
    pub ids: Tensor,
    pub mask: Tensor,
    /// 1 for real pairs, 0 for padding rows.
    pub real: Tensor,
}

impl Trainer<'_> {
    /// One step. A non-finite loss seen before the update never reaches the weights: it stops
    /// training with [`Error::NonFiniteLoss`], or with `skip_nonfinite` the step is skipped
    /// (ranks all see the same global loss, so they all stop or skip together).
    pub(super) fn step(
        &mut self,
        epoch: usize,
        batch: &ImageBatch,
        read_loss: bool,
    ) -> Result<StepOutcome> {
        let lr = self.options.schedule.lr(
            self.options.learning_rate(),
            self.state.global_step,
            self.warmup_steps(),
            self.total_steps(),
        );
        tch::manual_seed(step_seed(
            self.options.seed,
            self.state.global_step,
            self.comm.rank(),
        ));
        let inputs = self.step_inputs(batch)?;
        let scaled = self.precision == Precision::Fp16;
        let loss_scale = if scaled { self.state.loss_scale } else { 1.0 };
        self.opt.zero_grad();
        let global = {
            let _precision = self.precision.enter(self.device.is_cuda());
            if self.options.accum_steps > 1 {
                self.grad_cache_backward(&inputs, loss_scale)?
            } else {
                let m = self.model.model();
                let img = l2_normalize(&m.image_features(&inputs.pixels, true));
                let txt = l2_normalize(&m.text_features(&inputs.ids, &inputs.mask, true));
                backward_global_batch(
                    &img,
                    &txt,
                    &inputs.real,
                    m.logit_scale(),
                    self.loss_form(),
                    loss_scale,
                    self.comm,
                )?
            }
        };
        let loss_value = if read_loss {
            Some(global.loss.f_double_value(&[])?)
        } else {
            None
        };
        let finite_loss = loss_value.is_none_or(f64::is_finite);
        if !finite_loss && !self.options.skip_nonfinite {
            return Err(self.nonfinite_error(loss_value.unwrap_or(f64::NAN), epoch));
        }
        if finite_loss {
            // One collective call for every parameter's gradient.
            self.comm.all_reduce_sum(&self.opt.gradients()?)?;
            self.update(lr, scaled)?;
        }
        Ok(StepOutcome {
            loss: global.loss.detach(),
            pairs: global.pairs,
            loss_value,
            lr,
            applied: finite_loss,
        })
    }

    fn loss_form(&self) -> LossForm {
        LossForm::from_local_loss(self.options.local_loss)
    }

    /// GradCache (see [`super::grad_cache`]): micro-batches of `batch_size` rows, each with
    /// its own dropout seed, drawn the same in both passes.
    fn grad_cache_backward(&self, inputs: &StepInputs, loss_scale: f64) -> Result<GlobalStep> {
        let (seed, step, rank) = (self.options.seed, self.state.global_step, self.comm.rank());
        grad_cache_backward(
            self.model.model(),
            inputs,
            self.options.batch_size as i64,
            &|chunk| Some(micro_seed(seed, step, rank, chunk)),
            self.loss_form(),
            loss_scale,
            self.comm,
        )
    }

    /// The batch's pixels and captions on the device. Ranks of a group pad their slice to
    /// `batch_size * accum_steps` rows, as the collectives need one shape on every rank; padding rows are
    /// masked out of the loss. A single process needs no padding.
    fn step_inputs(&self, batch: &ImageBatch) -> Result<StepInputs> {
        let kept = batch.captions.len();
        let rows = if self.comm.world_size() > 1 {
            self.options.contrastive_batch()
        } else {
            kept
        };
        let (ids, mask) = token_tensors(&self.batch_tokens(&batch.captions, rows), self.device)?;
        let mut pixels =
            self.normalizer
                .apply(&to_device_async(&batch.pixels, self.device, batch.pinned)?)?;
        if rows > kept {
            let mut shape = pixels.size();
            shape[0] = (rows - kept) as i64;
            let padding = Tensor::f_zeros(&shape, (pixels.kind(), pixels.device()))?;
            pixels = Tensor::f_cat(&[pixels.shallow_clone(), padding], 0)?;
        }
        let real = Tensor::f_cat(
            &[
                Tensor::f_ones([kept as i64], (Kind::Float, self.device))?,
                Tensor::f_zeros([(rows - kept) as i64], (Kind::Float, self.device))?,
            ],
            0,
        )?;
        Ok(StepInputs {
            pixels,
            ids,
            mask,
            real,
        })
    }

    /// The tokens of a batch's captions, padded with filler rows to `rows`.
    fn batch_tokens(&self, captions: &BatchCaptions, rows: usize) -> TokenBatch {
        let kept = captions.len();
        match captions {
            BatchCaptions::Samples(samples) => {
                let mut indices: Vec<usize> = samples
                    .iter()
                    .map(|s| self.offsets[s.entry as usize] + s.caption as usize)
                    .collect();
                indices.resize(rows, 0);
                self.captions.batch(&indices)
            }
            BatchCaptions::Tokens(tokens) => {
                // The loader's tokens end with the padding rows' caption.
                let mut indices: Vec<usize> = (0..kept).collect();
                indices.resize(rows, kept);
                tokens.batch(&indices)
            }
        }
    }

    /// The Adam step, unless fp16 gradients overflowed (then the loss scale halves instead).
    fn update(&mut self, lr: f64, scaled: bool) -> Result<()> {
        let finite = if scaled {
            self.opt.unscale_grads(self.state.loss_scale)?
        } else {
            true
        };
        if finite {
            self.opt.step(lr)?;
            let mut scale = self.model.model().logit_scale().shallow_clone();
            clamp_logit_scale(&mut scale);
        } else {
            self.state.loss_scale /= 2.0;
        }
        Ok(())
    }

    fn nonfinite_error(&self, loss: f64, epoch: usize) -> Error {
        Error::NonFiniteLoss(format!(
            "the loss became {loss} at step {} (epoch {}): training is unstable; lower the \
             learning rate or use precision=\"fp32\"/\"bf16\" (or pass skip_nonfinite=True to \
             skip such batches). The last completed epoch's checkpoint is in {}",
            self.state.global_step + 1,
            epoch + 1,
            self.run_dir.last().display()
        ))
    }
}

/// The seed of the dropout masks of a step: a function of the run's seed, the step and the
/// data-parallel rank only (rank 0 draws as a single process does).
fn step_seed(seed: u64, step: i64, rank: usize) -> i64 {
    let seed = seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (Rng::derive(seed, 0x4452_4f50, step as u64).next_u64() >> 1) as i64
}

/// The dropout seed of micro-batch `chunk` of a GradCache step (the same in both passes).
fn micro_seed(seed: u64, step: i64, rank: usize, chunk: usize) -> i64 {
    let seed = step_seed(seed, step, rank) as u64;
    (Rng::derive(seed, 0x4d49_4352, chunk as u64).next_u64() >> 1) as i64
}
