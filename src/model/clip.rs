//! The CLIP module: both towers, both projection heads and the learned logit scale, under the
//! parameter names of liteCLIP's `CLIP` PyTorch module (`image_encoder.backbone.*`,
//! `text_encoder.backbone.*`, `img_projection.*`, `txt_projection.*`, `logit_scale`).

use tch::nn;
use tch::Tensor;

use super::bert::{masked_mean, Bert};
use super::convnext::ConvNext;
use super::head::ProjectionHead;
use crate::config::LiteClipConfig;

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
