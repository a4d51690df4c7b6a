//! Starting a tower from published backbone weights: a timm ConvNeXt state dict for the image
//! tower, a Hugging Face BERT checkpoint for the text tower. Heads those files carry (timm's
//! classifier, BERT's pre-training heads) are ignored; every parameter of the tower must be
//! present with the right shape.

use std::path::Path;

use tch::nn;

use super::{load_scoped, read_tensors, Weights};
use crate::error::{Error, Result};

const IMAGE_SCOPE: &str = "image_encoder.backbone.";
const TEXT_SCOPE: &str = "text_encoder.backbone.";

/// Loads timm `convnext_*` weights (`.pth`, `.pt`, `.bin` or `.safetensors`) into the image tower.
pub fn load_image_tower(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let weights = read_tensors(path)?;
    let weights = rescope(weights, &[], &["head.fc.", "fc."], IMAGE_SCOPE);
    load_scoped(vs, weights, IMAGE_SCOPE, &[])
}

/// Loads Hugging Face BERT weights into the text tower: a model folder (`model.safetensors` or
/// `pytorch_model.bin`) or one such file, from `BertModel` or from a model with a `bert.` trunk.
pub fn load_text_tower(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let file = if path.is_dir() {
        ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|name| path.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::FileNotFound {
                path: path.join("model.safetensors"),
                hint: Some(
                    "a Hugging Face model folder holds model.safetensors or pytorch_model.bin"
                        .into(),
                ),
            })?
    } else {
        path.to_owned()
    };
    let weights = read_tensors(&file)?;
    // Masked-LM checkpoints have no pooler; it is unused by liteclip's mean pooling anyway.
    let weights = rescope(weights, &["bert."], &["cls."], TEXT_SCOPE);
    load_scoped(vs, weights, TEXT_SCOPE, &["text_encoder.backbone.pooler."])
}

/// Strips `strip` prefixes, drops keys starting with `ignore`, and moves the rest under `scope`.
fn rescope(weights: Weights, strip: &[&str], ignore: &[&str], scope: &str) -> Weights {
    let tensors = weights
        .tensors
        .into_iter()
        .map(|(k, t)| {
            let k = strip
                .iter()
                .fold(k, |k, p| k.strip_prefix(p).map(str::to_owned).unwrap_or(k));
            (k, t)
        })
        .filter(|(k, _)| !ignore.iter().any(|p| k.starts_with(p)))
        .map(|(k, t)| (format!("{scope}{k}"), t))
        .collect();
    Weights {
        path: weights.path,
        tensors,
        config: None,
    }
}
