//! Contrastive training.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `options.rs` | every option and its default ([`TrainOptions`]) |
//! | `trainer.rs` | the [`Trainer`](trainer): set-up, the epoch loop, the end of an epoch |
//! | `step.rs` | one optimisation step |
//! | `grad_cache.rs` | big contrastive batches in micro-batches (`accum_steps`) |
//! | `identity.rs` | the options a resume must repeat, and the refusal when it does not |
//! | `learning_check.rs` | the warning for a run whose loss stays at ln(batch) |
//! | `run_dir.rs` | the run folder: `best/`, `last/`, `metrics.jsonl`, resuming |
//! | `report.rs` | progress and results: [`Observer`], [`EpochRecord`], [`TrainResult`] |
//! | `distributed.rs` | data parallelism: the global batch's backward, shards, [`Collectives`] |
//! | `optim.rs` | flat Adam/AdamW and the learning-rate schedules |
//!
//! Every random choice (split, order, augmentation, dropout) derives from the seed and the
//! step, never from history, so a resumed run ends with the same weights as an unbroken one.
//! (Dropout draws from libtorch's generator, which is per process and reseeded every step: two
//! runs training at the same time in one process are not repeatable.)

pub mod distributed;
mod grad_cache;
mod identity;
mod learning_check;
pub mod optim;
mod options;
mod report;
mod run_dir;
mod step;
mod trainer;

pub use options::{Monitor, TrainOptions};
pub use report::{EpochRecord, Flow, Observer, StepInfo};
pub use trainer::{train, train_distributed};

#[cfg(test)]
mod tests {
    use super::distributed::Collectives;
    use super::options::{PrecisionChoice, Resume};
    use super::report::{Silent, TrainResult};
    use super::*;
    use crate::checkpoint;
    use crate::config::LiteClipConfig;
    use crate::data::synthetic::{generate, Layout};
    use crate::device::DeviceSpec;
    use crate::liteclip::LiteClip;
    use std::path::Path;
    use tch::{Device, Kind, Tensor};

    fn options(data: &Path, output: &Path) -> TrainOptions {
        TrainOptions {
            data: data.into(),
            output: output.to_owned(),
            model: "liteclip-nano".into(),
            epochs: 2,
            batch_size: 16,
            lr: Some(1e-3),
            device: DeviceSpec::Cpu,
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
                precision: PrecisionChoice::parse(precision).unwrap(),
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
            // Losses to 1e-4 relative: the ranks run as threads sharing libtorch's thread pool,
            // so their reductions split differently from run to run, and the noise that Adam
            // turns into lr-sized steps on a few weights (below) moves the second epoch's losses
            // by up to ~3e-5. A gradient off by 30% moves them by ~2e-3.
            for (a, b) in results[0].history.iter().zip(&single_history) {
                let (ta, tb) = (a.train_loss, b.train_loss);
                assert!((ta - tb).abs() < 1e-4 * tb, "train loss {ta} vs {tb}");
                let (va, vb) = (a.val_loss.unwrap(), b.val_loss.unwrap());
                assert!((va - vb).abs() < 1e-4 * vb, "validation loss {va} vs {vb}");
            }
            // fp32 tolerance after 8 Adam steps of 1e-3: Adam divides each gradient entry by
            // its own magnitude, so an entry whose gradient is near zero (attention key biases
            // are exactly zero in exact arithmetic) turns rounding noise, which depends on
            // the reduction order of the two layouts and on thread scheduling, into a step of
            // up to lr. So: no entry moves by more than an lr-sized step, hardly any by more
            // than 1e-4 (typically none; the largest are ~3e-5), and on average they agree to
            // 1e-7 (measured ~1e-9), where a wrongly scaled gradient moves almost every entry
            // (weight decay, L2 added to the gradient, makes its scale visible to Adam).
            let got = weights(&out.join("last"));
            assert_eq!(got.len(), expected.len());
            let (mut far, mut total, mut n) = (0i64, 0.0, 0i64);
            for ((k, a), (_, b)) in got.iter().zip(&expected) {
                let diff = (a - b).abs();
                let max = diff.max().double_value(&[]);
                assert!(max < 2e-3, "{k} moved by {max} (local_loss {local_loss})");
                far += diff.gt(1e-4).sum(Kind::Int64).int64_value(&[]);
                total += diff.sum(Kind::Double).double_value(&[]);
                n += a.numel() as i64;
            }
            let mean = total / n as f64;
            assert!(mean < 1e-7, "weights differ by {mean} on average");
            assert!(
                far * 100_000 < n,
                "{far} of {n} weights differ by more than 1e-4"
            );
        }
    }

    /// Ranks that run on rank 0's epoch outcome must not go on with garbage.
    #[test]
    fn an_unreadable_epoch_outcome_is_a_distributed_error() {
        struct Garbled;
        impl Collectives for Garbled {
            fn rank(&self) -> usize {
                1
            }
            fn world_size(&self) -> usize {
                2
            }
            fn all_gather(&self, local: &Tensor) -> crate::Result<Tensor> {
                Ok(Tensor::cat(&[local, local], 0))
            }
            fn all_reduce_sum(&self, tensor: &Tensor) -> crate::Result<()> {
                let _ = tensor.shallow_clone().g_mul_scalar_(2.0);
                Ok(())
            }
            fn broadcast_from_main(&self, _text: Option<String>) -> crate::Result<String> {
                Ok("{\"state\": 3".into())
            }
        }
        let _rng = crate::torch_rng_lock();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shapes");
        generate(&data, 16, 0, 32, Layout::Captions).unwrap();
        let opts = TrainOptions {
            epochs: 1,
            batch_size: 4,
            max_steps_per_epoch: Some(1),
            val_fraction: 0.0,
            ..options(&data, &tmp.path().join("run"))
        };
        match train_distributed(&opts, &mut Silent, &Garbled) {
            Err(crate::Error::Distributed(m)) => assert!(m.contains("unreadable"), "{m}"),
            other => panic!("{other:?}"),
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

        // Stopped (as by Ctrl-C) once the first epoch is saved.
        struct StopAfterAnEpoch;
        impl Observer for StopAfterAnEpoch {
            fn epoch_end(&mut self, _record: &EpochRecord) -> Flow {
                Flow::Stop
            }
        }
        let broken = tmp.path().join("broken");
        let first = train(&options(&data, &broken), &mut StopAfterAnEpoch).unwrap();
        assert!(first.interrupted && first.history.len() == 1);
        // Starting afresh over an existing run is refused.
        assert!(train(&options(&data, &broken), &mut Silent).is_err());
        let resumed = TrainOptions {
            resume: Resume::Latest,
            ..options(&data, &broken)
        };
        let result = train(&resumed, &mut Silent).unwrap();
        assert_eq!(result.history.len(), 2);
        // Another model is refused, naming the option.
        let other_model = TrainOptions {
            model: "liteclip".into(),
            ..resumed.clone()
        };
        match train(&other_model, &mut Silent) {
            Err(crate::Error::InvalidArgument(m)) => assert!(m.contains("model"), "{m}"),
            other => panic!("{other:?}"),
        }

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
