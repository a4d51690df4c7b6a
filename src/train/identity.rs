//! What defines a run: the options a resume must repeat.
//!
//! A run records them when it starts (in `last/train_state.json`). Resuming with another value
//! of one of them is refused, naming the option and both values, because the saved weights,
//! optimizer state or position in the data would then mean something else: another model or
//! tower weights, another data set or split (validation images would be trained on), other
//! locked parameters (the optimizer state covers the trainable ones only), or, inside an epoch,
//! another order or batch size (the saved step count would point elsewhere in the epoch).
//! Everything else (epochs, learning rate and schedule, patience, checkpointing, devices,
//! precision, decoding, ...) may change on resume.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::options::TrainOptions;
use crate::error::{Error, Result};

/// The options that define a run, as it was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunIdentity {
    pub model: String,
    pub init: Option<PathBuf>,
    pub image_weights: Option<PathBuf>,
    pub text_weights: Option<PathBuf>,
    /// The data as absolute paths or patterns.
    pub data: Vec<String>,
    pub val_data: Option<PathBuf>,
    pub val_fraction: f64,
    pub image_column: String,
    pub caption_column: String,
    pub images_dir: Option<PathBuf>,
    pub seed: u64,
    pub lock_image: bool,
    pub lock_image_unlocked_stages: usize,
    pub lock_text: bool,
    pub lock_text_unlocked_layers: usize,
    /// Pairs of one contrastive batch over all ranks.
    pub global_batch: usize,
}

/// A path as an absolute one (relative to the working folder; not resolving links, so that a
/// path that is gone still compares).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

impl RunIdentity {
    pub fn of(options: &TrainOptions, world: usize) -> Self {
        let path = |p: &Option<PathBuf>| p.as_deref().map(absolute);
        RunIdentity {
            model: options.model.clone(),
            init: path(&options.init),
            image_weights: path(&options.image_weights),
            text_weights: path(&options.text_weights),
            data: options
                .data
                .0
                .iter()
                .map(|d| absolute(Path::new(d)).to_string_lossy().into_owned())
                .collect(),
            val_data: path(&options.val_data),
            val_fraction: options.val_fraction,
            image_column: options.image_column.clone(),
            caption_column: options.caption_column.clone(),
            images_dir: path(&options.images_dir),
            seed: options.seed,
            lock_image: options.lock_image,
            lock_image_unlocked_stages: options.lock_image_unlocked_stages,
            lock_text: options.lock_text,
            lock_text_unlocked_layers: options.lock_text_unlocked_layers,
            global_batch: options.contrastive_batch() * world,
        }
    }

    /// Refuses to continue the run saved in `dir` (started as `self`) with `given`.
    /// `split`: the data is split into training and validation images (by `val_fraction` and,
    /// when it is above 0, by seed); `inside_epoch`: the checkpoint was saved inside an epoch.
    pub fn check_resume(
        &self,
        given: &RunIdentity,
        dir: &Path,
        split: bool,
        inside_epoch: bool,
    ) -> Result<()> {
        let binds = |field: &str| match field {
            "val_fraction" => split,
            "seed" => (split && self.val_fraction > 0.0) || inside_epoch,
            "global_batch" => inside_epoch,
            _ => true,
        };
        let (saved, now) = (as_fields(self), as_fields(given));
        let conflicts: Vec<(&str, String, String)> = saved
            .iter()
            .filter(|(field, value)| binds(field) && now.get(*field) != Some(value))
            .map(|(field, value)| {
                let shown =
                    |v: Option<&serde_json::Value>| v.map_or("nothing".into(), |v| v.to_string());
                (
                    option_name(field),
                    shown(Some(value)),
                    shown(now.get(field)),
                )
            })
            .collect();
        let Some((name, saved, now)) = conflicts.first() else {
            return Ok(());
        };
        let others = match conflicts.len() {
            1 => String::new(),
            n => format!(
                " (and {}: {})",
                n - 1,
                conflicts[1..]
                    .iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(Error::invalid(format!(
            "cannot resume the run in {}: {name} was {saved} when it started, {now} now{others}. \
             Pass the run's own value to continue it, or another output folder to start a new run",
            dir.display()
        )))
    }
}

/// An identity's fields by name.
fn as_fields(identity: &RunIdentity) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(identity) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(), // a struct of plain fields always serialises to an object
    }
}

/// The option a field of [`RunIdentity`] records, as the user names it.
fn option_name(field: &str) -> &str {
    match field {
        "global_batch" => "batch_size x accum_steps x processes",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(edit: impl FnOnce(&mut TrainOptions)) -> RunIdentity {
        let mut options = TrainOptions {
            data: "data/train".into(),
            model: "liteclip-nano".into(),
            ..Default::default()
        };
        edit(&mut options);
        RunIdentity::of(&options, 1)
    }

    #[test]
    fn a_conflict_names_the_option_and_both_values() {
        let saved = identity(|_| {});
        let dir = Path::new("runs/x/last");
        let err = saved
            .check_resume(&identity(|o| o.model = "liteclip".into()), dir, true, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model")
                && err.contains("\"liteclip-nano\"")
                && err.contains("\"liteclip\""),
            "{err}"
        );
        // Paths compare as absolute ones.
        let here = std::env::current_dir().unwrap().join("data/train");
        let same = identity(|o| o.data = here.as_path().into());
        saved.check_resume(&same, dir, true, true).unwrap();
    }

    #[test]
    fn seed_and_batch_bind_only_where_they_give_the_saved_state_its_meaning() {
        let saved = identity(|_| {});
        let dir = Path::new("runs/x/last");
        let seed = identity(|o| o.seed = 7);
        let batch = identity(|o| o.batch_size = 8);
        // The split depends on the seed; an unsplit run at an epoch's end does not.
        assert!(saved.check_resume(&seed, dir, true, false).is_err());
        saved.check_resume(&seed, dir, false, false).unwrap();
        assert!(saved.check_resume(&seed, dir, false, true).is_err());
        // The batch size matters inside an epoch only.
        saved.check_resume(&batch, dir, true, false).unwrap();
        assert!(saved.check_resume(&batch, dir, true, true).is_err());
        for conflict in [
            identity(|o| o.lock_image = true),
            identity(|o| o.init = Some("a".into())),
            identity(|o| o.data = "other".into()),
        ] {
            assert!(saved.check_resume(&conflict, dir, false, false).is_err());
        }
    }
}
