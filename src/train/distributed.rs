//! Data-parallel training: one global contrastive batch spread over several processes.
//!
//! Every rank runs the same Rust step on its own slice of each global batch of
//! `world_size * batch_size` pairs. The ranks talk through [`Collectives`], which the Python
//! bindings implement with `torch.distributed` (NCCL on GPUs, gloo on CPUs) on tensors shared
//! with Python without copies; the core knows nothing of Python.
//!
//! A step makes three collective calls, whatever the model size:
//!
//! 1. `all_gather` of each rank's `[B, 2D + 1]` block (image embeddings, text embeddings, and a
//!    column saying which rows are real pairs rather than padding);
//! 2. `all_reduce` (sum) of the loss's gradient with respect to the gathered embeddings, with
//!    the rank's share of the loss appended;
//! 3. `all_reduce` (sum) of the flat gradient buffer of [`FlatAdam`](super::optim::FlatAdam),
//!    one tensor holding every parameter's gradient.
//!
//! Between 1 and 2 each rank computes its share `L_r` of the loss `L` of the whole global batch
//! (the shares sum to `L`) with the gathered embeddings as leaves, and backpropagates it to
//! them; after 2 each rank holds `dL/d(its own embeddings)` exactly, and feeds it back into its
//! own towers. This is open_clip's `--gather-with-grad`: the gradient is that of one process
//! holding the whole batch, so N ranks with batch B train like one process with batch N*B.

use std::ops::Range;

use tch::{Kind, Tensor};

use crate::data::Sample;
use crate::error::{Error, Result};
use crate::loss::{clip_loss, clip_loss_share};

/// What the trainer needs from a process group. Ranks call every method in the same order.
pub trait Collectives {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank's `local` (same shape on each) stacked along dimension 0, in rank order.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor>;
    /// Sums `tensor` over the ranks, in place.
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<()>;
    /// Rank 0's `text` on every rank (the others pass `None`). Rank 0 may take long to get here
    /// (validation, checkpoints); implementations wait without a deadline for a live rank 0.
    fn broadcast_from_main(&self, text: Option<String>) -> Result<String>;
}

/// How the contrastive loss is split over the ranks (open_clip's `--local-loss` switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossForm {
    /// Every rank computes the whole `NB x NB` similarity matrix and takes `L / N`.
    Global,
    /// Each rank computes only its own `B` rows against all `NB` columns, in both directions:
    /// `N` times less loss compute, the same gradient.
    Local,
}

impl LossForm {
    pub fn from_local_loss(local_loss: bool) -> Self {
        if local_loss {
            LossForm::Local
        } else {
            LossForm::Global
        }
    }
}

/// This rank's slices of the global batches, each with its position in the epoch (augmentation
/// draws are keyed by position, so a pair is transformed the same way whichever rank loads it).
///
/// A global batch is split into contiguous, equal slices in rank order, so the ranks' slices
/// are disjoint, cover it, and concatenate back to it; a short last batch is split as evenly as
/// possible (a slice may be empty). The global batches themselves are those of one process with
/// batch `world_size * batch_size`, reshuffled each epoch from the seed.
pub fn shard_batches(
    global: Vec<Vec<Sample>>,
    rank: usize,
    world_size: usize,
) -> Vec<(u64, Vec<Sample>)> {
    let mut position = 0u64;
    global
        .into_iter()
        .map(|batch| {
            let range = rank_slice(batch.len(), rank, world_size);
            let first = position + range.start as u64;
            position += batch.len() as u64;
            (first, batch[range].to_vec())
        })
        .collect()
}

/// Rows of a batch of `len` that belong to `rank`.
fn rank_slice(len: usize, rank: usize, world_size: usize) -> Range<usize> {
    let per_rank = len.div_ceil(world_size.max(1));
    let start = (rank * per_rank).min(len);
    start..((rank + 1) * per_rank).min(len)
}

/// The result of one data-parallel backward pass.
pub struct GlobalStep {
    /// The loss of the whole global batch (a device scalar, the same on every rank).
    pub loss: Tensor,
    /// Real (non-padding) pairs in the global batch (a device scalar).
    pub pairs: Tensor,
}

/// Gathers the embeddings of every rank, computes this rank's share of the global loss, and
/// backpropagates the global batch's gradient into this rank's towers and the temperature
/// (gradients accumulate into the parameters' `.grad`; they still need summing over ranks).
///
/// `image` and `text` are this rank's `[B, D]` L2-normalised float embeddings with their
/// autograd graphs; `real` is `[B]`, 1 for real pairs and 0 for padding rows (only ranks of a
/// group of two or more pad; in a world of one every row must be real). `loss_scale`
/// multiplies the gradients (fp16 loss scaling), not the returned loss.
pub fn backward_global_batch(
    image: &Tensor,
    text: &Tensor,
    real: &Tensor,
    logit_scale: &Tensor,
    form: LossForm,
    loss_scale: f64,
    comm: &dyn Collectives,
) -> Result<GlobalStep> {
    if comm.world_size() == 1 {
        return backward_alone(image, text, real, logit_scale, loss_scale);
    }
    let grads = embedding_gradients(image, text, real, logit_scale, form, loss_scale, comm)?;
    backward_from(image, text, &grads.image, &grads.text)?;
    Ok(grads.step)
}

/// The gradient of the global batch's loss with respect to this rank's embeddings.
pub struct EmbeddingGradients {
    pub step: GlobalStep,
    pub image: Tensor,
    pub text: Tensor,
}

/// The global loss and `dL/d(this rank's embeddings)` (scaled by `loss_scale`), from the
/// embeddings' values alone: no graph of the towers is needed (GradCache's first pass has
/// none). The temperature's gradient is accumulated into its `.grad` on the way.
pub fn embedding_gradients(
    image: &Tensor,
    text: &Tensor,
    real: &Tensor,
    logit_scale: &Tensor,
    form: LossForm,
    loss_scale: f64,
    comm: &dyn Collectives,
) -> Result<EmbeddingGradients> {
    let (world, rank) = (comm.world_size() as i64, comm.rank() as i64);
    let [b, d] = image.size()[..] else {
        return Err(Error::invalid("embeddings must be [batch, dim]"));
    };
    let leaf = |t: &Tensor| t.detach().to_kind(Kind::Float).set_requires_grad(true);
    if world == 1 {
        let (image, text) = (leaf(image), leaf(text));
        let loss = clip_loss(&image, &text, logit_scale);
        loss.f_mul_scalar(loss_scale)?.f_backward()?;
        return Ok(EmbeddingGradients {
            step: GlobalStep {
                loss: loss.detach(),
                pairs: real.f_sum(Kind::Float)?,
            },
            image: image.grad(),
            text: text.grad(),
        });
    }
    let local = Tensor::f_cat(
        &[
            image.detach().to_kind(Kind::Float),
            text.detach().to_kind(Kind::Float),
            real.to_kind(Kind::Float).unsqueeze(1),
        ],
        1,
    )?;
    let gathered = comm.all_gather(&local)?;
    let g_image = leaf(&gathered.narrow(1, 0, d));
    let g_text = leaf(&gathered.narrow(1, d, d));
    let g_real = gathered.select(1, 2 * d);

    let share = match form {
        LossForm::Global => {
            clip_loss_share(&g_image, &g_text, &g_real, logit_scale, 0, world * b)? / world as f64
        }
        LossForm::Local => clip_loss_share(&g_image, &g_text, &g_real, logit_scale, rank * b, b)?,
    };
    // Gradients reach the gathered leaves and the temperature (summed over ranks later).
    share.f_mul_scalar(loss_scale)?.f_backward()?;
    let reduced = Tensor::f_cat(
        &[
            g_image.grad().f_reshape([-1])?,
            g_text.grad().f_reshape([-1])?,
            share.detach().f_reshape([1])?,
        ],
        0,
    )?;
    comm.all_reduce_sum(&reduced)?;
    let n = world * b * d;
    let own = |offset: i64| -> Result<Tensor> {
        Ok(reduced
            .f_narrow(0, offset + rank * b * d, b * d)?
            .f_view([b, d])?)
    };
    Ok(EmbeddingGradients {
        image: own(0)?,
        text: own(n)?,
        step: GlobalStep {
            loss: reduced.f_select(0, 2 * n)?,
            // The gathered mask is the same on every rank: no collective needed.
            pairs: g_real.f_sum(Kind::Float)?,
        },
    })
}

/// Feeds given gradients of embeddings back through the graphs that made them:
/// d(sum(x * g))/dx = g.
pub fn backward_from(
    image: &Tensor,
    text: &Tensor,
    d_image: &Tensor,
    d_text: &Tensor,
) -> Result<()> {
    let surrogate =
        image.f_mul(d_image)?.f_sum(Kind::Float)? + text.f_mul(d_text)?.f_sum(Kind::Float)?;
    Ok(surrogate.f_backward()?)
}

/// A world of one: the global batch is this batch, which a single process never pads, and the
/// loss's own backward is the exact gradient. Gathering, the leaves and the surrogate would give
/// the same gradient for measurably more work per step (BENCHMARKS.md, 2026-11-30).
fn backward_alone(
    image: &Tensor,
    text: &Tensor,
    real: &Tensor,
    logit_scale: &Tensor,
    loss_scale: f64,
) -> Result<GlobalStep> {
    let loss = clip_loss(image, text, logit_scale);
    if loss_scale == 1.0 {
        loss.f_backward()?;
    } else {
        loss.f_mul_scalar(loss_scale)?.f_backward()?;
    }
    Ok(GlobalStep {
        loss: loss.detach(),
        pairs: real.f_sum(Kind::Float)?,
    })
}

/// A single process: the collectives of a world of one.
pub struct SingleProcess;

impl Collectives for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        Ok(local.shallow_clone())
    }
    fn all_reduce_sum(&self, _tensor: &Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast_from_main(&self, text: Option<String>) -> Result<String> {
        Ok(text.unwrap_or_default())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    /// Ranks as threads of one process, exchanging through shared slots.
    pub(crate) struct ThreadGroup {
        rank: usize,
        shared: Arc<Shared>,
    }

    pub(crate) struct Shared {
        world: usize,
        barrier: Barrier,
        slots: Mutex<Vec<Option<Tensor>>>,
        text: Mutex<String>,
    }

    impl ThreadGroup {
        pub(crate) fn new(world: usize) -> Vec<ThreadGroup> {
            let shared = Arc::new(Shared {
                world,
                barrier: Barrier::new(world),
                slots: Mutex::new((0..world).map(|_| None).collect()),
                text: Mutex::new(String::new()),
            });
            (0..world)
                .map(|rank| ThreadGroup {
                    rank,
                    shared: shared.clone(),
                })
                .collect()
        }

        fn exchange(&self, t: &Tensor) -> Vec<Tensor> {
            self.shared.slots.lock().unwrap()[self.rank] = Some(t.copy());
            self.shared.barrier.wait();
            let all: Vec<Tensor> = self
                .shared
                .slots
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.as_ref().unwrap().copy())
                .collect();
            self.shared.barrier.wait();
            all
        }
    }

    impl Collectives for ThreadGroup {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.shared.world
        }
        fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
            Ok(Tensor::cat(&self.exchange(local), 0))
        }
        fn all_reduce_sum(&self, tensor: &Tensor) -> Result<()> {
            let sum = Tensor::stack(&self.exchange(tensor), 0).sum_dim_intlist(
                [0i64].as_slice(),
                false,
                tensor.kind(),
            );
            tensor.shallow_clone().copy_(&sum);
            Ok(())
        }
        fn broadcast_from_main(&self, text: Option<String>) -> Result<String> {
            if let Some(t) = text {
                *self.shared.text.lock().unwrap() = t;
            }
            self.shared.barrier.wait();
            let t = self.shared.text.lock().unwrap().clone();
            self.shared.barrier.wait();
            Ok(t)
        }
    }

    fn samples(n: u32) -> Vec<Sample> {
        (0..n).map(|entry| Sample { entry, caption: 0 }).collect()
    }

    #[test]
    fn shards_are_disjoint_cover_each_batch_and_concatenate_back() {
        let global = vec![samples(8), samples(5), samples(1)];
        for world in 1..=4 {
            let shards: Vec<_> = (0..world)
                .map(|r| shard_batches(global.clone(), r, world))
                .collect();
            for (k, batch) in global.iter().enumerate() {
                let joined: Vec<Sample> = shards.iter().flat_map(|s| s[k].1.clone()).collect();
                assert_eq!(&joined, batch, "world {world}, batch {k}");
                // Positions are the slice's place in the epoch.
                let start: u64 = global[..k].iter().map(|b| b.len() as u64).sum();
                let mut expected = start;
                for s in &shards {
                    assert_eq!(s[k].0, expected);
                    expected += s[k].1.len() as u64;
                }
            }
        }
    }

    /// Per-rank gradients of the embeddings under the data-parallel backward, summed over ranks,
    /// equal those of one process computing `clip_loss` on the whole batch.
    fn check_form(form: LossForm, with_padding: bool) {
        let _rng = crate::torch_rng_lock();
        let (world, b, d) = (3usize, 4i64, 5i64);
        tch::manual_seed(7);
        let norm = |t: Tensor| &t / t.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
        let image = norm(Tensor::randn(
            [world as i64 * b, d],
            (Kind::Float, tch::Device::Cpu),
        ));
        let text = norm(Tensor::randn(
            [world as i64 * b, d],
            (Kind::Float, tch::Device::Cpu),
        ));
        // Padding: the last rank's last row is not a real pair.
        let real = Tensor::ones([world as i64 * b], (Kind::Float, tch::Device::Cpu));
        let keep: Vec<i64> = if with_padding {
            let _ = real.get(world as i64 * b - 1).fill_(0.0);
            (0..world as i64 * b - 1).collect()
        } else {
            (0..world as i64 * b).collect()
        };
        let keep = Tensor::from_slice(&keep);

        // The reference: one process, plain clip_loss on the real pairs.
        let ri = image.index_select(0, &keep).set_requires_grad(true);
        let rt = text.index_select(0, &keep).set_requires_grad(true);
        let rs = Tensor::from_slice(&[2.5f32])
            .squeeze()
            .set_requires_grad(true);
        let ref_loss = crate::loss::clip_loss(&ri, &rt, &rs);
        ref_loss.backward();

        let groups = ThreadGroup::new(world);
        let results: Vec<(f64, Tensor, Tensor, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| {
                    let (image, text, real) = (image.copy(), text.copy(), real.copy());
                    s.spawn(move || {
                        let r = g.rank() as i64;
                        let li = image.narrow(0, r * b, b).copy().set_requires_grad(true);
                        let lt = text.narrow(0, r * b, b).copy().set_requires_grad(true);
                        let scale = Tensor::from_slice(&[2.5f32])
                            .squeeze()
                            .set_requires_grad(true);
                        let step = backward_global_batch(
                            &li,
                            &lt,
                            &real.narrow(0, r * b, b),
                            &scale,
                            form,
                            1.0,
                            &g,
                        )
                        .unwrap();
                        (
                            step.loss.double_value(&[]),
                            li.grad(),
                            lt.grad(),
                            scale.grad().double_value(&[]),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let grad_image = Tensor::cat(&results.iter().map(|r| r.1.copy()).collect::<Vec<_>>(), 0);
        let grad_text = Tensor::cat(&results.iter().map(|r| r.2.copy()).collect::<Vec<_>>(), 0);
        let scale_grad: f64 = results.iter().map(|r| r.3).sum();
        for r in &results {
            assert!(
                (r.0 - ref_loss.double_value(&[])).abs() < 1e-5,
                "loss {}",
                r.0
            );
        }
        let gi = grad_image.index_select(0, &keep);
        let gt = grad_text.index_select(0, &keep);
        let max_diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(max_diff(&gi, &ri.grad()) < 1e-6, "{form:?} image grads");
        assert!(max_diff(&gt, &rt.grad()) < 1e-6, "{form:?} text grads");
        assert!((scale_grad - rs.grad().double_value(&[])).abs() < 1e-5);
        if with_padding {
            let pad = world as i64 * b - 1;
            assert_eq!(
                grad_image.get(pad).abs().sum(Kind::Float).double_value(&[]),
                0.0
            );
        }
    }

    #[test]
    fn global_form_matches_one_process() {
        check_form(LossForm::Global, false);
        check_form(LossForm::Global, true);
    }

    #[test]
    fn local_form_matches_one_process() {
        check_form(LossForm::Local, false);
        check_form(LossForm::Local, true);
    }
}
