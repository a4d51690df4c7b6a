//! Model configs: widths, depths and sizes as data, so that a smaller model is a preset or a JSON
//! file, never new code. `liteclip` is the original liteCLIP (timm convnext_tiny + bert-mini +
//! 256-d heads); `liteclip-nano` is the same code path at CPU-trainable size.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{Error, Result};

/// The ConvNeXt image tower (timm `convnext_*` layout: stem, 4 stages, head norm).
/// The widest layer a config may ask for (hidden sizes, stage widths, embeddings).
pub const MAX_WIDTH: i64 = 16_384;
/// The most blocks per stage, or text layers, a config may ask for.
pub const MAX_DEPTH: i64 = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvNextConfig {
    pub in_channels: i64,
    /// Width of each stage.
    pub dims: Vec<i64>,
    /// Number of blocks in each stage.
    pub depths: Vec<i64>,
    /// Side of the non-overlapping stem patches.
    pub patch_size: i64,
    /// Depthwise kernel of each block.
    pub kernel_size: i64,
    /// Hidden width of each block's MLP, as a multiple of the stage width.
    pub mlp_ratio: i64,
    pub layer_norm_eps: f64,
    /// Initial value of the per-channel layer scale (`gamma`).
    pub layer_scale_init: f64,
}

impl Default for ConvNextConfig {
    /// timm `convnext_tiny`.
    fn default() -> Self {
        ConvNextConfig {
            in_channels: 3,
            dims: vec![96, 192, 384, 768],
            depths: vec![3, 3, 9, 3],
            patch_size: 4,
            kernel_size: 7,
            mlp_ratio: 4,
            layer_norm_eps: 1e-6,
            layer_scale_init: 1e-6,
        }
    }
}

impl ConvNextConfig {
    /// Width of the pooled features, the input of the image projection head.
    pub fn out_dim(&self) -> i64 {
        self.dims.last().copied().unwrap_or(0)
    }
}

/// The BERT text tower (Hugging Face `BertModel` layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
}

impl Default for BertConfig {
    /// `google/bert_uncased_L-4_H-256_A-4` ("bert-mini").
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 256,
            num_layers: 4,
            num_heads: 4,
            intermediate_size: 1024,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout: 0.1,
            attention_dropout: 0.1,
        }
    }
}

/// A whole liteclip model: both towers, the projection heads, and the input sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiteClipConfig {
    pub image: ConvNextConfig,
    pub text: BertConfig,
    /// Width of the shared embedding space.
    pub embed_dim: i64,
    /// Dropout inside the projection heads (training only).
    pub head_dropout: f64,
    pub head_layer_norm_eps: f64,
    /// Side of the square image the image tower sees.
    pub image_size: i64,
    /// Captions are truncated to this many tokens ([CLS] and [SEP] included).
    pub max_length: i64,
    /// Initial logit scale, before `exp` (CLIP: ln(1/0.07)).
    pub logit_scale_init: f64,
}

impl Default for LiteClipConfig {
    fn default() -> Self {
        LiteClipConfig {
            image: ConvNextConfig::default(),
            text: BertConfig::default(),
            embed_dim: 256,
            head_dropout: 0.1,
            head_layer_norm_eps: 1e-5,
            image_size: 224,
            max_length: 128,
            logit_scale_init: (1.0f64 / 0.07).ln(),
        }
    }
}

/// Names accepted by [`LiteClipConfig::preset`].
pub const PRESETS: [&str; 2] = ["liteclip", "liteclip-nano"];

impl LiteClipConfig {
    /// The original liteCLIP: convnext_tiny + bert-mini + 256-d embeddings at 224 px.
    pub fn liteclip() -> Self {
        Self::default()
    }

    /// A model that trains on a CPU in minutes: the same code path with small widths.
    pub fn nano() -> Self {
        LiteClipConfig {
            image: ConvNextConfig {
                dims: vec![32, 64, 128, 256],
                depths: vec![1, 1, 2, 1],
                ..ConvNextConfig::default()
            },
            text: BertConfig {
                hidden_size: 128,
                num_layers: 2,
                num_heads: 2,
                intermediate_size: 512,
                max_position_embeddings: 128,
                ..BertConfig::default()
            },
            embed_dim: 128,
            image_size: 64,
            max_length: 64,
            ..Self::default()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "liteclip" => Ok(Self::liteclip()),
            "liteclip-nano" => Ok(Self::nano()),
            other => Err(Error::Config(format!(
                "unknown preset {other:?}; known presets: {}",
                PRESETS.join(", ")
            ))),
        }
    }

    /// A preset name, or the path of a JSON config file.
    pub fn from_name_or_file(spec: &str) -> Result<Self> {
        if PRESETS.contains(&spec) {
            return Self::preset(spec);
        }
        let path = Path::new(spec);
        if path.exists() || spec.ends_with(".json") {
            return Self::from_json_file(path);
        }
        Self::preset(spec)
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not a valid config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with finite floats cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that the numbers describe a model that can be built and run (and is not absurdly
    /// large: see [`MAX_WIDTH`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let im = &self.image;
        if im.dims.is_empty() || im.dims.len() != im.depths.len() {
            return bad(format!(
                "image.dims ({:?}) and image.depths ({:?}) must be non-empty and of equal length",
                im.dims, im.depths
            ));
        }
        if im.dims.iter().chain(&im.depths).any(|&v| v <= 0)
            || im.in_channels <= 0
            || im.patch_size <= 0
            || im.kernel_size <= 0
            || im.kernel_size % 2 == 0
            || im.mlp_ratio <= 0
        {
            return bad("image: widths, depths and sizes must be positive, kernel_size odd".into());
        }
        let tx = &self.text;
        if [
            tx.vocab_size,
            tx.hidden_size,
            tx.num_layers,
            tx.num_heads,
            tx.intermediate_size,
            tx.max_position_embeddings,
            tx.type_vocab_size,
        ]
        .iter()
        .any(|&v| v <= 0)
        {
            return bad("text: sizes must be positive".into());
        }
        if tx.hidden_size % tx.num_heads != 0 {
            return bad(format!(
                "text.hidden_size ({}) must be divisible by text.num_heads ({})",
                tx.hidden_size, tx.num_heads
            ));
        }
        if self.max_length < 2 || self.max_length > tx.max_position_embeddings {
            return bad(format!(
                "max_length ({}) must be between 2 and text.max_position_embeddings ({})",
                self.max_length, tx.max_position_embeddings
            ));
        }
        // The stem divides by patch_size, each later stage by 2.
        let stride = im.patch_size << (im.dims.len() - 1);
        if self.image_size < stride {
            return bad(format!(
                "image_size ({}) must be at least {stride} for this image tower",
                self.image_size
            ));
        }
        if self.embed_dim <= 0 {
            return bad("embed_dim must be positive".into());
        }
        // Far beyond any model this library is for: a config that asks for more is damaged or
        // hostile, and would allocate gigabytes before anything else could refuse it.
        let too_big = [
            (
                "image.dims",
                im.dims.iter().copied().max().unwrap_or(0),
                MAX_WIDTH,
            ),
            (
                "image.depths",
                im.depths.iter().copied().max().unwrap_or(0),
                MAX_DEPTH,
            ),
            ("image stages", im.dims.len() as i64, 8),
            ("image.in_channels", im.in_channels, 64),
            ("image.patch_size", im.patch_size, 64),
            ("image.kernel_size", im.kernel_size, 63),
            ("image.mlp_ratio", im.mlp_ratio, 16),
            ("image_size", self.image_size, 4096),
            ("text.vocab_size", tx.vocab_size, 1_000_000),
            ("text.hidden_size", tx.hidden_size, MAX_WIDTH),
            ("text.num_layers", tx.num_layers, MAX_DEPTH),
            (
                "text.intermediate_size",
                tx.intermediate_size,
                4 * MAX_WIDTH,
            ),
            (
                "text.max_position_embeddings",
                tx.max_position_embeddings,
                65_536,
            ),
            ("text.type_vocab_size", tx.type_vocab_size, 1024),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
        ];
        if let Some((name, value, max)) = too_big.iter().find(|(_, v, max)| v > max) {
            return bad(format!(
                "{name} is {value}, above the most this library builds ({max})"
            ));
        }
        for (name, p) in [
            ("head_dropout", self.head_dropout),
            ("text.hidden_dropout", tx.hidden_dropout),
            ("text.attention_dropout", tx.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in PRESETS {
            LiteClipConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn json_round_trip_and_partial_json() {
        let nano = LiteClipConfig::nano();
        assert_eq!(LiteClipConfig::from_json(&nano.to_json()).unwrap(), nano);
        // Missing fields take the liteclip defaults.
        let c = LiteClipConfig::from_json(r#"{"embed_dim": 64}"#).unwrap();
        assert_eq!(c.embed_dim, 64);
        assert_eq!(c.image, ConvNextConfig::default());
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(LiteClipConfig::from_json(r#"{"embed_dims": 64}"#).is_err());
        assert!(
            LiteClipConfig::from_json(r#"{"text": {"hidden_size": 100, "num_heads": 3}}"#).is_err()
        );
        assert!(
            LiteClipConfig::from_json(r#"{"image": {"dims": [8, 16], "depths": [1]}}"#).is_err()
        );
        assert!(LiteClipConfig::preset("liteclip-huge").is_err());
    }
}
