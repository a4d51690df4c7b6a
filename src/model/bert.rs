//! The BERT text tower with Hugging Face `BertModel`'s numerics and parameter names
//! (`embeddings.*`, `encoder.layer.N.attention.self.{query,key,value}`, ..., `pooler.dense`), and
//! liteCLIP's masked mean pooling on top.

use std::sync::OnceLock;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::int8::Int8Weight;
use super::layers::{computes_int8, embedding, layer_norm, linear, Embedding, LayerNorm, Linear};
use super::mlp::Mlp;
use crate::config::BertConfig;

/// The query, key and value projections of one layer. In int8 they run as one product over
/// their concatenated weights, so the input is quantized once instead of three times.
#[derive(Debug)]
struct QkvProjection {
    query: Linear,
    key: Linear,
    value: Linear,
    int8: OnceLock<Int8Weight>,
}

impl QkvProjection {
    fn new(p: &nn::Path, h: i64) -> Self {
        QkvProjection {
            query: linear(&(p / "query"), h, h),
            key: linear(&(p / "key"), h, h),
            value: linear(&(p / "value"), h, h),
            int8: OnceLock::new(),
        }
    }

    /// `(q, k, v)`, each `[..., h]` like `x`.
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        if !computes_int8(x) {
            return (
                self.query.forward(x),
                self.key.forward(x),
                self.value.forward(x),
            );
        }
        let fused = self.int8.get_or_init(|| {
            let parts = [&self.query, &self.key, &self.value];
            let ws: Vec<&Tensor> = parts.iter().map(|l| &l.ws).collect();
            let bs: Vec<&Tensor> = parts.iter().map(|l| &l.bs).collect();
            Int8Weight::new(&Tensor::cat(&ws, 0), &Tensor::cat(&bs, 0))
        });
        let qkv = fused.forward(x).chunk(3, -1);
        (
            qkv[0].shallow_clone(),
            qkv[1].shallow_clone(),
            qkv[2].shallow_clone(),
        )
    }
}

#[derive(Debug)]
struct Layer {
    qkv: QkvProjection,
    attn_out: Linear,
    attn_norm: LayerNorm,
    /// `intermediate.dense -> GELU -> output.dense`.
    ffn: Mlp,
    out_norm: LayerNorm,
}

impl Layer {
    fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let att = p / "attention";
        Layer {
            qkv: QkvProjection::new(&(&att / "self"), h),
            attn_out: linear(&(&att / "output" / "dense"), h, h),
            attn_norm: layer_norm(&(&att / "output" / "LayerNorm"), h, eps),
            ffn: Mlp {
                fc1: linear(&(p / "intermediate" / "dense"), h, cfg.intermediate_size),
                fc2: linear(&(p / "output" / "dense"), cfg.intermediate_size, h),
            },
            out_norm: layer_norm(&(p / "output" / "LayerNorm"), h, eps),
        }
    }

    /// `x`: (N, L, H); `attend`: (N, 1, 1, L) booleans, false on padding.
    fn forward(&self, x: &Tensor, attend: &Tensor, cfg: &BertConfig, train: bool) -> Tensor {
        let size = x.size();
        let (n, l, h) = (size[0], size[1], size[2]);
        let heads = cfg.num_heads;
        let split = |t: Tensor| t.view([n, l, heads, h / heads]).transpose(1, 2);
        let (q, k, v) = self.qkv.forward(x);
        let (q, k, v) = (split(q), split(k), split(v));
        let p_drop = if train { cfg.attention_dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(attend),
            p_drop,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([n, l, h]);
        let attn = (self
            .attn_out
            .forward(&ctx)
            .dropout(cfg.hidden_dropout, train)
            + x)
            .apply(&self.attn_norm);
        let ffn = attn.apply(&self.ffn).dropout(cfg.hidden_dropout, train);
        (ffn + attn).apply(&self.out_norm)
    }
}

#[derive(Debug)]
pub struct Bert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    config: BertConfig,
    /// Locked for training (LiT): the embeddings and the first this many layers run in eval
    /// mode whatever `train` says (their weights get no gradient; see `ClipModel::lock`).
    frozen_layers: Option<usize>,
}

impl Bert {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        let e = p / "embeddings";
        let layers = (0..cfg.num_layers)
            .map(|i| Layer::new(&(p / "encoder" / "layer" / i), cfg))
            .collect();
        // BertModel's pooler is unused by mean pooling; its weights exist so that checkpoints in
        // the original layout load strictly and save back unchanged.
        let _pooler = linear(&(p / "pooler" / "dense"), h, h);
        Bert {
            word_embeddings: embedding(&(&e / "word_embeddings"), cfg.vocab_size, h),
            position_embeddings: embedding(
                &(&e / "position_embeddings"),
                cfg.max_position_embeddings,
                h,
            ),
            token_type_embeddings: embedding(
                &(&e / "token_type_embeddings"),
                cfg.type_vocab_size,
                h,
            ),
            embeddings_norm: layer_norm(&(&e / "LayerNorm"), h, cfg.layer_norm_eps),
            layers,
            config: cfg.clone(),
            frozen_layers: None,
        }
    }

    /// Runs the embeddings and the first `layers` layers in eval mode from now on (`None`:
    /// every part follows `train` again).
    pub fn set_frozen_layers(&mut self, layers: Option<usize>) {
        self.frozen_layers = layers;
    }

    /// Token ids and attention mask, both (N, L) int64, to the last hidden states (N, L, H).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let l = input_ids.size()[1];
        let device = input_ids.device();
        let positions = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0);
        // token_type_ids are all zero for single sentences.
        let token_types = Tensor::zeros_like(input_ids);
        let mut x = (self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(&positions)
            + self.token_type_embeddings.forward(&token_types))
        .apply(&self.embeddings_norm)
        .dropout(
            self.config.hidden_dropout,
            train && self.frozen_layers.is_none(),
        );
        // Padding is never attended to: a boolean mask (the same probabilities as HF's additive
        // mask of the dtype's lowest value, which underflow to exactly zero), valid in any dtype.
        let attend = attention_mask.gt(0).view([-1, 1, 1, l]);
        for (i, layer) in self.layers.iter().enumerate() {
            let train = train && self.frozen_layers.is_none_or(|frozen| i >= frozen);
            x = layer.forward(&x, &attend, &self.config, train);
        }
        x
    }
}

/// liteCLIP's pooling: the mean of the hidden states of real tokens (padding excluded).
pub fn masked_mean(hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
    let hidden = hidden.to_kind(Kind::Float);
    let mask = attention_mask.unsqueeze(-1).to_kind(Kind::Float);
    let summed = (&hidden * &mask).sum_dim_intlist([1i64].as_slice(), false, None);
    let counts = mask
        .sum_dim_intlist([1i64].as_slice(), false, None)
        .clamp_min(1e-9);
    summed / counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precision::Precision;

    /// The fused int8 projection gives each of q, k, v exactly what that layer alone gives in
    /// int8 (rows and output channels are quantized independently), in the right order.
    #[test]
    fn fused_int8_qkv_equals_the_separate_int8_layers() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let qkv = QkvProjection::new(&vs.root(), 32);
        tch::no_grad(|| {
            for l in [&qkv.query, &qkv.key, &qkv.value] {
                // Shallow clones share storage: this writes the layer's own weights.
                let (mut ws, mut bs) = (l.ws.shallow_clone(), l.bs.shallow_clone());
                ws.copy_(&Tensor::randn([32, 32], (Kind::Float, tch::Device::Cpu)));
                bs.copy_(&Tensor::randn([32], (Kind::Float, tch::Device::Cpu)));
            }
        });
        let x = Tensor::randn([2, 7, 32], (Kind::Float, tch::Device::Cpu));
        let _int8 = Precision::Int8.enter(false);
        let (q, k, v) = tch::no_grad(|| qkv.forward(&x));
        for (got, layer) in [(q, &qkv.query), (k, &qkv.key), (v, &qkv.value)] {
            let want = Int8Weight::new(&layer.ws, &layer.bs).forward(&x);
            assert_eq!(got.size(), [2, 7, 32]);
            assert!(
                got.equal(&want),
                "fused output differs from its own layer's"
            );
        }
    }
}
