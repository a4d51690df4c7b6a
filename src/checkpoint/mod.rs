//! Checkpoints: reading the original liteCLIP `.pt` and liteclip's own format, matching their
//! tensors strictly against a model, and writing the own format atomically.
//!
//! liteclip's own format is a folder:
//!
//! ```text
//! out/config.json          the LiteClipConfig
//! out/model.safetensors    every parameter, under the original liteCLIP names
//! ```
//!
//! Tensor names are the same in both formats (those of liteCLIP's PyTorch module), so one
//! matching routine serves both and exporting back to `.pt` is a renaming-free copy.

pub mod backbones;
pub mod torch_pickle;
pub mod torch_save;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{nn, Tensor};

use crate::config::{BertConfig, ConvNextConfig, LiteClipConfig};
use crate::error::{Error, Result, ShapeMismatch};
use crate::fsio;
use torch_pickle::{TorchFile, Value};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Buffers that some versions of Hugging Face transformers saved in state dicts; they hold no
/// learned values (`position_ids` is `arange`), so they are accepted and ignored.
const IGNORED_SUFFIXES: [&str; 2] = ["embeddings.position_ids", "embeddings.token_type_ids"];

/// Named tensors read from a checkpoint, on the CPU, plus the config stored beside them if any.
pub struct Weights {
    pub path: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
    pub config: Option<LiteClipConfig>,
}

/// Reads a checkpoint in any supported form: a liteclip folder, a `.safetensors` file, or a
/// `torch.save` state dict (the original liteCLIP release).
pub fn read(path: &Path) -> Result<Weights> {
    if !path.exists() {
        return Err(Error::FileNotFound {
            path: path.to_owned(),
            hint: Some(
                "expected a liteclip checkpoint folder, a .safetensors file, or an original \
                 liteCLIP .pt file"
                    .into(),
            ),
        });
    }
    if path.is_dir() {
        return read_folder(path);
    }
    let mut weights = read_tensors(path)?;
    // A config.json beside a bare weights file describes it (own format, file named directly).
    let sibling = path.with_file_name(CONFIG_FILE);
    if sibling.is_file() && looks_like_safetensors_path(path) {
        weights.config = Some(LiteClipConfig::from_json_file(&sibling)?);
    }
    Ok(weights)
}

/// Reads the tensors of one file (`torch.save` zip or safetensors), without any config.
pub fn read_tensors(path: &Path) -> Result<Weights> {
    if !path.is_file() {
        return Err(Error::FileNotFound {
            path: path.to_owned(),
            hint: Some("expected a .pt/.pth/.bin or .safetensors file".into()),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut weights = if bytes.starts_with(b"PK\x03\x04") {
        read_torch_zip(path, bytes)?
    } else if looks_like_safetensors(&bytes) {
        read_safetensors(path)?
    } else if bytes.first() == Some(&0x80) {
        return Err(Error::checkpoint(
            path,
            "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with \
             torch.save(torch.load(path), path) under a recent PyTorch",
        ));
    } else if bytes.is_empty() {
        return Err(Error::checkpoint(path, "file is empty, not a checkpoint"));
    } else {
        return Err(Error::checkpoint(
            path,
            "not a checkpoint: neither a torch.save (.pt) zip file nor a safetensors file",
        ));
    };
    strip_wrapper_prefixes(&mut weights.tensors);
    Ok(weights)
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    // 8-byte little-endian header length, then a JSON object.
    bytes.len() > 9 && bytes[8] == b'{' && {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        u64::from_le_bytes(n) <= (bytes.len() - 8) as u64
    }
}

fn looks_like_safetensors_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

fn read_folder(dir: &Path) -> Result<Weights> {
    let weights_path = dir.join(WEIGHTS_FILE);
    let config_path = dir.join(CONFIG_FILE);
    if !weights_path.is_file() {
        return Err(Error::FileNotFound {
            path: weights_path,
            hint: Some(
                "a liteclip checkpoint folder holds config.json and model.safetensors".into(),
            ),
        });
    }
    let mut weights = read_safetensors(&weights_path)?;
    weights.path = dir.to_owned();
    if config_path.is_file() {
        weights.config = Some(LiteClipConfig::from_json_file(&config_path)?);
    }
    Ok(weights)
}

fn read_safetensors(path: &Path) -> Result<Weights> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    Ok(Weights {
        path: path.to_owned(),
        tensors,
        config: None,
    })
}

fn read_torch_zip(path: &Path, bytes: Vec<u8>) -> Result<Weights> {
    let mut file = TorchFile::open(path, bytes)?;
    let root = std::mem::replace(&mut file.root, Value::None);
    let dict = find_state_dict(root).ok_or_else(|| {
        Error::checkpoint(
            path,
            "no state dict found: expected a dict of tensors (torch.save(model.state_dict())), \
             possibly under a \"state_dict\" or \"model\" key",
        )
    })?;
    let mut tensors = Vec::with_capacity(dict.len());
    for (key, value) in dict {
        if let (Value::Str(name), Value::Tensor(t)) = (key, value) {
            let tensor = file.tensor(path, &t)?;
            tensors.push((name, tensor));
        }
    }
    Ok(Weights {
        path: path.to_owned(),
        tensors,
        config: None,
    })
}

/// The dict of tensors in an unpickled object: the root itself, or a dict under a
/// `state_dict`/`model` key (Lightning and training-script checkpoints).
fn find_state_dict(root: Value) -> Option<Vec<(Value, Value)>> {
    let Value::Dict(items) = root else {
        return None;
    };
    if items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
        return Some(items);
    }
    items.into_iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), v @ Value::Dict(_)) if k == "state_dict" || k == "model" => {
            find_state_dict(v)
        }
        _ => None,
    })
}

/// Strips prefixes that wrappers add to every key (`module.` from DataParallel/DDP, `model.`
/// from Lightning modules) when all keys carry them.
fn strip_wrapper_prefixes(tensors: &mut [(String, Tensor)]) {
    for prefix in ["module.", "model."] {
        if !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with(prefix)) {
            for (k, _) in tensors.iter_mut() {
                k.drain(..prefix.len());
            }
        }
    }
}

fn is_ignored(key: &str) -> bool {
    IGNORED_SUFFIXES.iter().any(|s| key.ends_with(s))
}

/// Infers the model config from tensor shapes, for checkpoints that carry none (the original
/// `.pt`). Head counts cannot be read from shapes: BERT's convention of 64-wide heads is used.
pub fn infer_config(tensors: &[(String, Tensor)], path: &Path) -> Result<LiteClipConfig> {
    let table = ShapeTable {
        shapes: tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.size()))
            .collect(),
        path,
    };
    let (image, text) = (infer_image(&table)?, infer_text(&table)?);
    let proj = table.shape("img_projection.proj.weight", 2)?;
    let defaults = LiteClipConfig::default();
    let config = LiteClipConfig {
        max_length: defaults.max_length.min(text.max_position_embeddings),
        image,
        text,
        embed_dim: proj[0],
        ..defaults
    };
    config.validate()?;
    Ok(config)
}

/// Refuses a config whose sizes are not those of the weights, before a model of that config is
/// allocated: a `config.json` saying `hidden_size: 32768` beside weights of width 256 would
/// otherwise allocate gigabytes before the weights were compared. Weights whose shapes cannot
/// be read (tensors missing) are left to the key check of [`load_into`], which lists every
/// difference.
pub fn check_config_fits(
    config: &LiteClipConfig,
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<()> {
    let Ok(found) = infer_config(tensors, path) else {
        return Ok(());
    };
    // Each size as the config says it and as the weights have it, by its name in config.json.
    macro_rules! sizes {
        ($($($field:ident).+),* $(,)?) => {
            [$((
                stringify!($($field).+).replace(' ', ""),
                format!("{:?}", config.$($field).+),
                format!("{:?}", found.$($field).+),
            )),*]
        };
    }
    let sizes = sizes![
        image.dims,
        image.depths,
        image.in_channels,
        image.patch_size,
        image.kernel_size,
        image.mlp_ratio,
        text.vocab_size,
        text.hidden_size,
        text.num_layers,
        text.intermediate_size,
        text.max_position_embeddings,
        text.type_vocab_size,
        embed_dim,
    ];
    let differences: Vec<String> = sizes
        .iter()
        .filter(|(_, config, weights)| config != weights)
        .map(|(name, config, weights)| {
            format!("{name} {config} in the config, {weights} in the weights")
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::checkpoint(
        path,
        format!(
            "the model config does not fit the weights: {}",
            differences.join("; ")
        ),
    ))
}

/// The shapes of a checkpoint's tensors, by name.
struct ShapeTable<'a> {
    shapes: BTreeMap<&'a str, Vec<i64>>,
    path: &'a Path,
}

impl ShapeTable<'_> {
    fn missing(&self, key: &str) -> Error {
        Error::checkpoint(
            self.path,
            format!(
                "cannot infer the model config: tensor {key} is missing (is this a liteCLIP \
                 checkpoint?)"
            ),
        )
    }

    /// The shape of `key`, which must have `rank` dimensions.
    fn shape(&self, key: &str, rank: usize) -> Result<Vec<i64>> {
        match self.shapes.get(key) {
            Some(s) if s.len() == rank => Ok(s.clone()),
            Some(s) => Err(Error::checkpoint(
                self.path,
                format!("tensor {key} has shape {s:?}, expected {rank} dimensions"),
            )),
            None => Err(self.missing(key)),
        }
    }

    /// How many numbered children `prefix` has (`prefix0.`, `prefix1.`, ...).
    fn count(&self, prefix: &str) -> i64 {
        let mut seen = BTreeSet::new();
        for key in self.shapes.keys() {
            if let Some(rest) = key.strip_prefix(prefix) {
                if let Some(idx) = rest.split('.').next().and_then(|s| s.parse::<i64>().ok()) {
                    seen.insert(idx);
                }
            }
        }
        seen.len() as i64
    }
}

fn infer_image(table: &ShapeTable<'_>) -> Result<ConvNextConfig> {
    let img = "image_encoder.backbone.";
    let stem = table.shape(&format!("{img}stem.0.weight"), 4)?;
    let n_stages = table.count(&format!("{img}stages."));
    if n_stages == 0 {
        return Err(table.missing(&format!("{img}stages.0.blocks.0.conv_dw.weight")));
    }
    let mut dims = Vec::new();
    let mut depths = Vec::new();
    let mut kernel_size = 7;
    let mut mlp_ratio = 4;
    for i in 0..n_stages {
        let dw = table.shape(&format!("{img}stages.{i}.blocks.0.conv_dw.weight"), 4)?;
        let fc1 = table.shape(&format!("{img}stages.{i}.blocks.0.mlp.fc1.weight"), 2)?;
        dims.push(dw[0]);
        depths.push(table.count(&format!("{img}stages.{i}.blocks.")));
        kernel_size = dw[2];
        mlp_ratio = fc1[0] / dw[0].max(1);
    }
    Ok(ConvNextConfig {
        in_channels: stem[1],
        dims,
        depths,
        patch_size: stem[2],
        kernel_size,
        mlp_ratio,
        ..ConvNextConfig::default()
    })
}

fn infer_text(table: &ShapeTable<'_>) -> Result<BertConfig> {
    let txt = "text_encoder.backbone.";
    let words = table.shape(&format!("{txt}embeddings.word_embeddings.weight"), 2)?;
    let positions = table.shape(&format!("{txt}embeddings.position_embeddings.weight"), 2)?;
    let types = table.shape(&format!("{txt}embeddings.token_type_embeddings.weight"), 2)?;
    let inter = table.shape(
        &format!("{txt}encoder.layer.0.intermediate.dense.weight"),
        2,
    )?;
    let hidden = words[1];
    Ok(BertConfig {
        vocab_size: words[0],
        hidden_size: hidden,
        num_layers: table.count(&format!("{txt}encoder.layer.")),
        num_heads: if hidden % 64 == 0 { hidden / 64 } else { 1 },
        intermediate_size: inter[0],
        max_position_embeddings: positions[0],
        type_vocab_size: types[0],
        ..BertConfig::default()
    })
}

/// Copies `weights` into the variables of `vs`, requiring an exact match of names and shapes
/// (ignorable buffers aside). On a mismatch nothing is copied and every problem is listed.
pub fn load_into(vs: &nn::VarStore, weights: Weights) -> Result<()> {
    load_scoped(vs, weights, "", &[])
}

/// [`load_into`] for the variables whose names start with `scope` (all when empty): those must
/// all be present (but for the `optional` prefixes, which keep their values when absent), and
/// every tensor must be one of them.
pub fn load_scoped(
    vs: &nn::VarStore,
    weights: Weights,
    scope: &str,
    optional: &[&str],
) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with(scope))
        .collect();
    let found: BTreeMap<&str, &Tensor> = weights
        .tensors
        .iter()
        .filter(|(k, _)| !is_ignored(k))
        .map(|(k, t)| (k.as_str(), t))
        .collect();
    let missing: Vec<String> = vars
        .keys()
        .filter(|k| !found.contains_key(k.as_str()))
        .filter(|k| !optional.iter().any(|o| k.starts_with(o)))
        .cloned()
        .collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|k| !vars.contains_key(**k))
        .map(|k| k.to_string())
        .collect();
    let mismatched: Vec<ShapeMismatch> = found
        .iter()
        .filter_map(|(k, t)| {
            let var = vars.get(*k)?;
            (var.size() != t.size()).then(|| ShapeMismatch {
                key: k.to_string(),
                expected: var.size(),
                found: t.size(),
            })
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(Error::KeyMismatch {
            path: weights.path,
            missing,
            unexpected,
            mismatched,
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            if let Some(value) = found.get(name.as_str()) {
                var.shallow_clone().f_copy_(value)?;
            }
        }
        Ok(())
    })?;
    check_finite(&vars, &weights.path)
}

/// NaN or infinite weights make every output NaN; refuse them at load time, naming the tensors.
fn check_finite(vars: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut bad: Vec<String> = Vec::new();
    for (name, var) in vars {
        let finite = var.f_isfinite()?.f_all()?;
        if !bool::try_from(&finite).unwrap_or(false) {
            bad.push(name.clone());
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::checkpoint(
        path,
        format!(
            "checkpoint holds NaN or infinite values in {} tensor(s): {}",
            bad.len(),
            bad.join(", ")
        ),
    ))
}

/// Writes `vs` and `config` as a liteclip checkpoint folder, each file atomically (see
/// [`crate::fsio`]), so a crash never leaves a half-written file under the final name.
pub fn save(dir: &Path, config: &LiteClipConfig, vs: &nn::VarStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| Ok((k, v.f_to_device(tch::Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    fsio::write_atomically(&dir.join(WEIGHTS_FILE), |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(Error::from)
    })?;
    fsio::write_bytes(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}
