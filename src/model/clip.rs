//! The CLIP module: both towers, both projection heads and the learned logit scale, under the
//! parameter names of liteCLIP's `CLIP` PyTorch module (`image_encoder.backbone.*`,
//! `text_encoder.backbone.*`, `img_projection.*`, `txt_projection.*`, `logit_scale`).

use tch::nn;
use tch::Tensor;

use super::bert::{masked_mean, Bert};
use super::convnext::ConvNext;
use super::head::ProjectionHead;
use crate::config::LiteClipConfig;

/// Parts of the towers locked for training (LiT; open_clip's `--lock-image`, `--lock-text`):
/// their weights get no gradient, hence no optimizer state and no weight decay, and they run
/// in eval mode. The projection heads and the temperature always train: they are what maps a
/// locked tower's features into the shared space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TowerLocks {
    /// The image backbone is locked but for its last this many stages (the last one with the
    /// final norm); `None`: not locked.
    pub image: Option<usize>,
    /// The text backbone is locked but for its last this many layers (the embeddings are
    /// always locked then); `None`: not locked.
    pub text: Option<usize>,
}

impl TowerLocks {
    /// Whether the variable `name` (as the checkpoint names it) is locked.
    pub fn locks(&self, name: &str, cfg: &LiteClipConfig) -> bool {
        // Index of the numbered part a name continues into: "stages.2.blocks..." -> 2.
        let index_after = |rest: &str| rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
        if let (Some(unlocked), Some(rest)) =
            (self.image, name.strip_prefix("image_encoder.backbone."))
        {
            let first_trainable = cfg.image.depths.len().saturating_sub(unlocked);
            return match rest.strip_prefix("stages.") {
                Some(stage) => index_after(stage).is_none_or(|i| i < first_trainable),
                None if rest.starts_with("head.") => unlocked == 0,
                None => true, // the stem
            };
        }
        if let (Some(unlocked), Some(rest)) =
            (self.text, name.strip_prefix("text_encoder.backbone."))
        {
            let first_trainable = (cfg.text.num_layers as usize).saturating_sub(unlocked);
            return match rest.strip_prefix("encoder.layer.") {
                Some(layer) => index_after(layer).is_none_or(|i| i < first_trainable),
                None => true, // embeddings and the unused pooler
            };
        }
        false
    }
}

#[derive(Debug)]
pub struct ClipModel {
    image_tower: ConvNext,
    text_tower: Bert,
    img_projection: ProjectionHead,
    txt_projection: ProjectionHead,
    /// ln of the temperature's inverse; `exp` of it multiplies the cosine similarities.
    logit_scale: Tensor,
}

/// Divides each row by its L2 norm (as liteCLIP does, without an epsilon), in fp32.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(tch::Kind::Float);
    &x / x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
}

impl ClipModel {
    /// Creates the variables under `root` (randomly initialised) and the modules using them.
    pub fn new(root: &nn::Path, cfg: &LiteClipConfig) -> Self {
        let image_tower = ConvNext::new(&(root / "image_encoder" / "backbone"), &cfg.image);
        let text_tower = Bert::new(&(root / "text_encoder" / "backbone"), &cfg.text);
        let head = |name: &str, in_dim| {
            ProjectionHead::new(
                &(root / name),
                in_dim,
                cfg.embed_dim,
                cfg.head_dropout,
                cfg.head_layer_norm_eps,
            )
        };
        ClipModel {
            image_tower,
            text_tower,
            img_projection: head("img_projection", cfg.image.out_dim()),
            txt_projection: head("txt_projection", cfg.text.hidden_size),
            logit_scale: root.var("logit_scale", &[], nn::Init::Const(cfg.logit_scale_init)),
        }
    }

    /// Locks parts of the towers (see [`TowerLocks`]): the variables of `vs` it names stop
    /// requiring gradients, so autograd records nothing through them (a fully locked image
    /// backbone has no backward at all); returns how many weights were locked.
    pub fn lock(&mut self, vs: &nn::VarStore, locks: TowerLocks, cfg: &LiteClipConfig) -> i64 {
        let mut locked = 0;
        for (name, var) in vs.variables() {
            if locks.locks(&name, cfg) {
                let _ = var.set_requires_grad(false);
                locked += var.numel() as i64;
            }
        }
        let text_layers = cfg.text.num_layers as usize;
        self.text_tower
            .set_frozen_layers(locks.text.map(|u| text_layers.saturating_sub(u)));
        locked
    }

    /// Projected (not yet normalised) image embeddings of a `(N, 3, S, S)` pixel batch.
    pub fn image_features(&self, pixels: &Tensor, train: bool) -> Tensor {
        self.img_projection
            .forward(&self.image_tower.forward(pixels), train)
    }

    /// Projected (not yet normalised) text embeddings of `(N, L)` token ids and mask.
    pub fn text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Tensor {
        let hidden = self.text_tower.forward(input_ids, attention_mask, train);
        self.txt_projection
            .forward(&masked_mean(&hidden, attention_mask), train)
    }

    /// L2-normalised image embeddings (inference).
    pub fn encode_image(&self, pixels: &Tensor) -> Tensor {
        l2_normalize(&self.image_features(pixels, false))
    }

    /// L2-normalised text embeddings (inference).
    pub fn encode_text(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        l2_normalize(&self.text_features(input_ids, attention_mask, false))
    }

    /// The raw (log-space) logit scale parameter.
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }
}
