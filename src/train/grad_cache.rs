//! Gradient caching (GradCache; open_clip's `--accum-freq`): the exact gradient of a big
//! contrastive batch while the towers hold the activations of one micro-batch at a time.
//!
//! A contrastive loss couples every pair of the batch, so the batch cannot simply be split into
//! micro-batches whose gradients are summed. Its gradient can still be taken in three passes:
//!
//! 1. embed every micro-batch without autograd graphs (cheap in memory);
//! 2. compute the loss of the whole batch (over all ranks, see [`super::distributed`]) from
//!    those embeddings, and its gradient with respect to each embedding;
//! 3. embed each micro-batch again, with graphs, and back-propagate its rows of that gradient.
//!
//! The towers have no batch statistics (LayerNorm only), and each micro-batch draws its dropout
//! from the same seed in passes 1 and 3, so pass 3 rebuilds exactly the embeddings of pass 1 and
//! the sum of its backward passes is the gradient of one pass over the whole batch.

use tch::Tensor;

use super::distributed::{backward_from, embedding_gradients, Collectives, GlobalStep, LossForm};
use super::step::StepInputs;
use crate::error::Result;
use crate::model::{l2_normalize, ClipModel};

/// Back-propagates the contrastive loss of `inputs` (this rank's rows of the global batch)
/// into `model`, `micro` rows at a time. `seed(c)` reseeds libtorch's generator before each
/// forward of micro-batch `c` (None: training-mode randomness is off or not reseeded).
pub fn grad_cache_backward(
    model: &ClipModel,
    inputs: &StepInputs,
    micro: i64,
    seed: &dyn Fn(usize) -> Option<i64>,
    form: LossForm,
    loss_scale: f64,
    comm: &dyn Collectives,
) -> Result<GlobalStep> {
    let rows = inputs.pixels.size()[0];
    let micro = micro.max(1);
    let chunks: Vec<(i64, i64)> = (0..rows)
        .step_by(micro as usize)
        .map(|start| (start, micro.min(rows - start)))
        .collect();
    let embed = |c: usize, (start, len): (i64, i64)| -> Result<(Tensor, Tensor)> {
        if let Some(s) = seed(c) {
            tch::manual_seed(s);
        }
        let pixels = inputs.pixels.f_narrow(0, start, len)?;
        let ids = inputs.ids.f_narrow(0, start, len)?;
        let mask = inputs.mask.f_narrow(0, start, len)?;
        Ok((
            l2_normalize(&model.image_features(&pixels, true)),
            l2_normalize(&model.text_features(&ids, &mask, true)),
        ))
    };
    let embedded = tch::no_grad(|| {
        chunks
            .iter()
            .enumerate()
            .map(|(c, &range)| embed(c, range))
            .collect::<Result<Vec<_>>>()
    })?;
    let (images, texts): (Vec<Tensor>, Vec<Tensor>) = embedded.into_iter().unzip();
    let grads = embedding_gradients(
        &Tensor::f_cat(&images, 0)?,
        &Tensor::f_cat(&texts, 0)?,
        &inputs.real,
        model.logit_scale(),
        form,
        loss_scale,
        comm,
    )?;
    for (c, &(start, len)) in chunks.iter().enumerate() {
        let (image, text) = embed(c, (start, len))?;
        backward_from(
            &image,
            &text,
            &grads.image.f_narrow(0, start, len)?,
            &grads.text.f_narrow(0, start, len)?,
        )?;
    }
    Ok(grads.step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LiteClipConfig;
    use crate::liteclip::LiteClip;
    use crate::train::distributed::tests::ThreadGroup;
    use crate::train::distributed::{backward_global_batch, SingleProcess};
    use tch::{Device, Kind};

    const ROWS: i64 = 32;

    /// A nano model with its dropout turned off, so that a batch's gradient does not depend on
    /// how its rows are drawn; each call gives the same weights.
    fn model() -> LiteClip {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(11);
        let mut config = LiteClipConfig::nano();
        config.text.hidden_dropout = 0.0;
        config.text.attention_dropout = 0.0;
        config.head_dropout = 0.0;
        LiteClip::new(config, Device::Cpu).unwrap()
    }

    fn batch(model: &LiteClip) -> StepInputs {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(5);
        let size = model.config().image_size;
        let cpu = (Kind::Float, Device::Cpu);
        let ids = Tensor::randint_low(1000, 2000, [ROWS, 12], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([ROWS, 12], (Kind::Int64, Device::Cpu));
        // Captions of different lengths: padding inside micro-batches.
        let _ = mask.narrow(0, 0, ROWS / 2).narrow(1, 7, 5).fill_(0);
        StepInputs {
            pixels: Tensor::randn([ROWS, 3, size, size], cpu),
            ids,
            mask: mask.shallow_clone(),
            real: Tensor::ones([ROWS], cpu),
        }
    }

    fn gradients(model: &LiteClip) -> Vec<Tensor> {
        let mut vars: Vec<_> = model.varstore().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        // Parameters the loss does not reach (e.g. BERT's pooler) have no gradient: zeros.
        vars.into_iter()
            .map(|(_, v)| {
                let g = v.grad();
                if g.defined() {
                    g.copy()
                } else {
                    v.zeros_like()
                }
            })
            .collect()
    }

    fn full_batch_gradients() -> (f64, Vec<Tensor>) {
        let model = model();
        let inputs = batch(&model);
        let m = model.model();
        let img = l2_normalize(&m.image_features(&inputs.pixels, true));
        let txt = l2_normalize(&m.text_features(&inputs.ids, &inputs.mask, true));
        let step = backward_global_batch(
            &img,
            &txt,
            &inputs.real,
            m.logit_scale(),
            LossForm::Global,
            1.0,
            &SingleProcess,
        )
        .unwrap();
        (step.loss.double_value(&[]), gradients(&model))
    }

    fn assert_close(got: &[Tensor], expected: &[Tensor]) {
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            let scale = e.abs().max().double_value(&[]).max(1e-6);
            let diff = (g - e).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-4 * scale + 1e-7,
                "max diff {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn four_micro_batches_of_8_give_the_gradient_of_one_batch_of_32() {
        let (loss, expected) = full_batch_gradients();
        let model = model();
        let inputs = batch(&model);
        let step = grad_cache_backward(
            model.model(),
            &inputs,
            8,
            &|_| None,
            LossForm::Global,
            1.0,
            &SingleProcess,
        )
        .unwrap();
        assert!((step.loss.double_value(&[]) - loss).abs() < 1e-5);
        assert_close(&gradients(&model), &expected);
    }

    /// Two ranks of 16 rows, each in micro-batches of 8: the gradients summed over the ranks
    /// are those of one process holding all 32 rows.
    #[test]
    fn it_composes_with_data_parallel_ranks() {
        let (loss, expected) = full_batch_gradients();
        let models = vec![model(), model()];
        let inputs = batch(&models[0]);
        let half = ROWS / 2;
        let per_rank: Vec<Vec<Tensor>> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadGroup::new(2)
                .into_iter()
                .zip(models)
                .map(|(group, model)| {
                    let r = group.rank() as i64;
                    let mine = StepInputs {
                        pixels: inputs.pixels.narrow(0, r * half, half).copy(),
                        ids: inputs.ids.narrow(0, r * half, half).copy(),
                        mask: inputs.mask.narrow(0, r * half, half).copy(),
                        real: inputs.real.narrow(0, r * half, half).copy(),
                    };
                    s.spawn(move || {
                        let step = grad_cache_backward(
                            model.model(),
                            &mine,
                            8,
                            &|_| None,
                            LossForm::Local,
                            1.0,
                            &group,
                        )
                        .unwrap();
                        assert!((step.loss.double_value(&[]) - loss).abs() < 1e-5);
                        gradients(&model)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let summed: Vec<Tensor> = per_rank[0]
            .iter()
            .zip(&per_rank[1])
            .map(|(a, b)| a + b)
            .collect();
        assert_close(&summed, &expected);
    }
}
