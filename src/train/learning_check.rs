//! Says when a run is not learning.
//!
//! A model that has learned nothing gives every caption of a batch the same score for every
//! image, and its contrastive loss is ln(pairs in the batch). A run whose loss is still about
//! that after a share of its steps has collapsed or never started (a learning rate too high for
//! training from scratch, a batch with too few negatives to learn from, captions that do not
//! tell the images apart, or captions paired with the wrong images), and a user watching a
//! progress bar cannot tell. So once, at [`JUDGE_SHARE`] of the run (and not before the warm-up
//! and the plateau that even a good run from scratch spends at ln(batch): measured at 50 to 80
//! steps on the shapes set), the mean of the recent losses is compared with ln(batch), and a
//! warning names the likely causes. Runs too short to get past the plateau are not judged.

use std::collections::VecDeque;

/// Share of the run's steps after which it is judged.
pub const JUDGE_SHARE: f64 = 0.25;
/// A loss above this share of ln(batch) has not moved clearly below it.
pub const NOT_LEARNING_RATIO: f64 = 0.95;
/// Steps after the warm-up before a run is judged at the earliest...
const AFTER_WARMUP: i64 = 50;
/// ... and steps from the start.
const FIRST_JUDGEMENT: i64 = 100;

pub(super) struct LearningCheck {
    /// The global step at which the run is judged (`None`: not judged, e.g. a resumed run
    /// already past it).
    judge_at: Option<i64>,
    /// Recent losses as shares of ln(pairs).
    recent: VecDeque<f64>,
    window: usize,
}

/// What the check saw when it warned.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NotLearning {
    pub step: i64,
    pub loss: f64,
    pub chance: f64,
}

impl LearningCheck {
    /// For a run of `total` steps with `warmup` warm-up steps, starting at `start` (a resumed
    /// run's step).
    pub fn new(total: i64, warmup: i64, start: i64) -> Self {
        let judge_at = ((total as f64 * JUDGE_SHARE).ceil() as i64)
            .max(warmup + AFTER_WARMUP)
            .max(FIRST_JUDGEMENT);
        // Too short to judge, or judged before the resume.
        let judged = judge_at >= total || start >= judge_at;
        LearningCheck {
            judge_at: (!judged).then_some(judge_at),
            recent: VecDeque::new(),
            window: (judge_at / 5).clamp(5, 50) as usize,
        }
    }

    /// Takes step `step`'s loss (when it was read) over a batch of `pairs`; returns what it
    /// saw the one time it finds the run not learning.
    pub fn record(&mut self, step: i64, loss: Option<f64>, pairs: usize) -> Option<NotLearning> {
        let judge_at = self.judge_at?;
        if let Some(loss) = loss.filter(|l| l.is_finite()) {
            if pairs >= 2 {
                self.recent.push_back(loss / (pairs as f64).ln());
                if self.recent.len() > self.window {
                    self.recent.pop_front();
                }
            }
        }
        if step < judge_at || self.recent.is_empty() {
            return None;
        }
        self.judge_at = None;
        let ratio = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        (ratio > NOT_LEARNING_RATIO).then(|| NotLearning {
            step,
            loss: ratio * (pairs.max(2) as f64).ln(),
            chance: (pairs.max(2) as f64).ln(),
        })
    }
}

impl NotLearning {
    /// The warning, with what to try: `lr` and `batch` are the run's peak rate and contrastive
    /// batch per step.
    pub fn message(&self, total: i64, lr: f64, batch: usize) -> String {
        format!(
            "warning: the model is not learning: after {} of {total} steps the training loss is \
             {:.3}, close to ln(batch) = {:.3}, the loss of a model that tells no caption from \
             another. Likely causes: the learning rate (lr={lr:e}; try lr={:e} or a longer \
             warmup_steps), a batch too small to learn from ({batch} pairs per step; try 32 or \
             more, or accum_steps), or captions that do not describe their images (check that \
             they differ between images and are paired with the right files)",
            self.step,
            self.loss,
            self.chance,
            lr / 4.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_stuck_at_ln_batch_warns_once_and_a_falling_one_never() {
        let ln32 = 32f64.ln();
        let mut stuck = LearningCheck::new(400, 40, 0);
        let warnings: Vec<_> = (1..=400)
            .filter_map(|s| stuck.record(s, Some(ln32 * 0.99), 32))
            .collect();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].step, 100); // a quarter of the run
        let mut falling = LearningCheck::new(400, 40, 0);
        let warned = (1..=400).any(|s| {
            let loss = ln32 * (1.0 - 0.5 * s as f64 / 400.0);
            falling.record(s, Some(loss), 32).is_some()
        });
        assert!(!warned);
    }

    #[test]
    fn the_judgement_waits_for_the_warm_up_and_skips_runs_past_it() {
        let ln = 16f64.ln();
        let mut check = LearningCheck::new(400, 120, 0);
        assert!((1..170).all(|s| check.record(s, Some(ln), 16).is_none()));
        assert!(check.record(170, Some(ln), 16).is_some());
        let mut resumed = LearningCheck::new(400, 10, 150);
        assert!((151..=400).all(|s| resumed.record(s, Some(ln), 16).is_none()));
        // A run too short to get past the plateau is not judged.
        let mut short = LearningCheck::new(90, 0, 0);
        assert!((1..=90).all(|s| short.record(s, Some(ln), 16).is_none()));
    }
}
