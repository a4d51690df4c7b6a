//! A loaded model: config, weights on a device, and the tokenizer that goes with them. This is
//! what `LiteClip` is in Python; it turns user inputs (images, captions) into embeddings.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::cancel;
use crate::checkpoint;
use crate::config::LiteClipConfig;
use crate::error::{Error, Result};
use crate::image::{preprocess_batch, DecodeMode, ImageInput};
use crate::model::{ClipModel, Precision, TowerLocks};
use crate::text::{token_tensors, Padding, TextTokenizer, TokenBatch, TokenizedCaptions};

/// Images per forward pass when encoding many: bounds activation memory, keeps batches large
/// enough for the kernels to be efficient.
const IMAGE_CHUNK: usize = 64;

/// Images per step of the decode/embed pipeline of `n` images: a quarter of them (so that the
/// decoding of a small batch still overlaps its embedding), between 8 and [`IMAGE_CHUNK`].
fn pipeline_chunk(n: usize) -> usize {
    n.div_ceil(4).clamp(8, IMAGE_CHUNK)
}
const TEXT_CHUNK: usize = 256;

/// Images to embed: inputs still to decode and transform, or a batch already preprocessed
/// into `(N, 3, S, S)` floats.
pub enum Images {
    Inputs(Vec<ImageInput>),
    Pixels(Tensor),
}

pub struct LiteClip {
    config: LiteClipConfig,
    vs: nn::VarStore,
    model: ClipModel,
    tokenizer: TextTokenizer,
    /// Arithmetic of inference passes (fp32 unless the user asks otherwise).
    precision: Precision,
    /// How images are decoded before the resize (scaled JPEG decoding, or every pixel).
    decode: DecodeMode,
}

impl std::fmt::Debug for LiteClip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiteClip")
            .field("device", &self.device())
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl LiteClip {
    /// A randomly initialised model (for training from scratch, or tests).
    pub fn new(config: LiteClipConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let model = ClipModel::new(&vs.root(), &config);
        let tokenizer = TextTokenizer::new(config.max_length as usize)?;
        Ok(LiteClip {
            config,
            vs,
            model,
            tokenizer,
            precision: Precision::Fp32,
            decode: DecodeMode::default(),
        })
    }

    /// Loads a checkpoint (see [`checkpoint::read`] for the accepted forms). `config` overrides
    /// the one stored with (or inferred from) the checkpoint.
    pub fn load(path: &Path, device: Device, config: Option<LiteClipConfig>) -> Result<Self> {
        let weights = checkpoint::read(path)?;
        let config = match (config, &weights.config) {
            (Some(c), _) => c,
            (None, Some(c)) => c.clone(),
            (None, None) => checkpoint::infer_config(&weights.tensors, path)?,
        };
        checkpoint::check_config_fits(&config, &weights.tensors, path)?;
        let model = Self::new(config, device)?;
        checkpoint::load_into(&model.vs, weights)?;
        Ok(model)
    }

    /// Saves in liteclip's own format (a folder with `config.json` and `model.safetensors`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(dir, &self.config, &self.vs)
    }

    /// Writes the weights as the original liteCLIP released them (`torch.save` of an ordered
    /// state dict, loadable by its PyTorch `CLIP` module), atomically. Only the original
    /// architecture (the `liteclip` preset) has that layout.
    pub fn export_pt(&self, path: &Path) -> Result<()> {
        let (c, original) = (&self.config, LiteClipConfig::liteclip());
        if c.image != original.image || c.text != original.text || c.embed_dim != original.embed_dim
        {
            return Err(Error::Config(
                "export_pt writes the original liteCLIP layout, which only the \"liteclip\" \
                 architecture has (convnext_tiny + bert-mini + 256-d); use save() for this model"
                    .into(),
            ));
        }
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        checkpoint::torch_save::write_state_dict(path, &named)
    }

    /// A hash of the weights (names, shapes and values): two models with equal fingerprints
    /// make the same embeddings. Photo indexes record it to refuse another model's queries.
    pub fn fingerprint(&self) -> Result<String> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (name, tensor) in named {
            hasher.update(name.as_bytes());
            for d in tensor.size() {
                hasher.update(&d.to_le_bytes());
            }
            let flat = tensor
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?
                .f_view([-1])?;
            let values = Vec::<f32>::try_from(&flat)?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            hasher.update(&bytes);
        }
        Ok(format!("xxh3-128:{:032x}", hasher.digest128()))
    }

    /// Sets the arithmetic of inference passes; weights stay fp32. int8 runs through the
    /// CPU's integer kernels only: on a GPU it is refused rather than silently run in fp32.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Int8 && self.device().is_cuda() {
            return Err(Error::invalid(format!(
                "precision \"int8\" is for inference on the CPU, but this model is on {}: \
                 use \"bf16\" (or \"fp16\") on a GPU, or device=\"cpu\"",
                crate::device::device_name(self.device())
            )));
        }
        self.precision = precision;
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets how images given by path or bytes are decoded ([`DecodeMode`]).
    pub fn set_decode(&mut self, decode: DecodeMode) {
        self.decode = decode;
    }

    pub fn decode(&self) -> DecodeMode {
        self.decode
    }

    /// Channels-last convolutions pay off on CUDA only.
    fn enter_precision(&self) -> crate::model::precision::PrecisionGuard {
        self.precision.enter(self.device().is_cuda())
    }

    pub fn config(&self) -> &LiteClipConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>() as i64
    }

    /// Locks parts of the towers for training (see [`TowerLocks`]); returns the weights locked.
    pub fn lock(&mut self, locks: TowerLocks) -> i64 {
        self.model.lock(&self.vs, locks, &self.config)
    }

    pub fn varstore(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// `exp(logit_scale)`: the factor applied to cosine similarities.
    pub fn logit_scale(&self) -> Result<f64> {
        Ok(self.model.logit_scale().f_exp()?.f_double_value(&[])?)
    }

    /// Decodes and transforms images into a `(N, 3, S, S)` float batch on the CPU.
    pub fn preprocess(&self, images: &[ImageInput]) -> Result<Tensor> {
        let size = self.config.image_size;
        let data = preprocess_batch(images, size as u32, self.decode)?;
        Ok(Tensor::f_from_slice(&data)?.f_view([images.len() as i64, 3, size, size])?)
    }

    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch> {
        self.tokenizer.encode(texts, Padding::Longest)
    }

    /// L2-normalised embeddings `(N, embed_dim)` of images, on the CPU.
    pub fn encode(&self, images: &Images) -> Result<Tensor> {
        match images {
            Images::Inputs(list) => self.encode_images(list),
            Images::Pixels(pixels) => self.encode_pixels(pixels),
        }
    }

    /// L2-normalised embeddings `(N, embed_dim)` of images, on the CPU. A list is a pipeline
    /// ([`crate::image_embedding`]): threads decode the images ahead of the model while it
    /// embeds the ones before them (on a 2-core CPU each side fills the other's idle time; on a
    /// GPU host, all cores decode). The first image that cannot be used is the error.
    pub fn encode_images(&self, images: &[ImageInput]) -> Result<Tensor> {
        let chunk = pipeline_chunk(images.len());
        if images.len() <= chunk {
            return self.concat(vec![self.encode_pixels(&self.preprocess(images)?)?]);
        }
        let (size, decode) = (self.config.image_size as u32, self.decode);
        let mut parts = Vec::new();
        crate::image_embedding::embed_each(
            self,
            images,
            chunk,
            |image| image.preprocess(size, decode).map(|pixels| ((), pixels)),
            |batch| {
                if let Some(error) = batch.items.into_iter().find_map(|item| item.err()) {
                    return Err(error);
                }
                parts.push(batch.rows);
                Ok(())
            },
        )?;
        self.concat(parts)
    }

    /// The `(N, M)` logits between N images and M texts: `exp(logit_scale)` times the cosine
    /// similarities, as liteCLIP's `logits_per_image` (the transpose is `logits_per_text`).
    pub fn similarity(&self, images: &Images, texts: &[&str]) -> Result<Tensor> {
        let image_emb = self.encode(images)?;
        let text_emb = self.encode_texts(texts)?;
        Ok(image_emb
            .f_matmul(&text_emb.f_tr()?)?
            .f_mul_scalar(self.logit_scale()?)?)
    }

    /// L2-normalised embeddings of an already preprocessed `(N, 3, S, S)` float batch, on the CPU.
    pub fn encode_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        // The towers pool globally and would take any size, but a model given images of
        // another size than it was trained at gives embeddings unlike its own (a 224-pixel
        // crop given to a 64-pixel model: cosine -0.55 with the right input), so only its own
        // size is taken.
        let s = self.config.image_size;
        let size = pixels.size();
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            let shape = match size.as_slice() {
                [n, c, h, w] => format!("({n}, {c}, {h}, {w})"),
                other => format!("{other:?}"),
            };
            return Err(Error::invalid(format!(
                "preprocessed images for this model must be (N, 3, {s}, {s}), its image size, \
                 got {shape}; preprocess them with model.preprocess(images), or \
                 liteclip.preprocess(images, image_size={s})"
            )));
        }
        let mut parts = Vec::new();
        for chunk in pixels.split(IMAGE_CHUNK as i64, 0) {
            cancel::check()?;
            let x = chunk.f_to_device(self.device())?.f_to_kind(Kind::Float)?;
            let _precision = self.enter_precision();
            let emb = tch::no_grad(|| self.model.encode_image(&x));
            parts.push(emb.f_to_device(Device::Cpu)?);
        }
        self.concat(parts)
    }

    /// L2-normalised embeddings `(N, embed_dim)` of captions or labels, on the CPU.
    ///
    /// Texts are tokenized once and batched by length, so that each batch is padded only to
    /// its own longest text (padding is masked out: the result does not depend on the
    /// batching), then put back in input order.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Tensor> {
        let tokens = TokenizedCaptions::new(&self.tokenizer, texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| tokens.token_count(i));
        let mut parts = Vec::new();
        for chunk in order.chunks(TEXT_CHUNK) {
            cancel::check()?;
            let (ids, mask) = token_tensors(&tokens.batch(chunk), self.device())?;
            let _precision = self.enter_precision();
            let emb = tch::no_grad(|| self.model.encode_text(&ids, &mask));
            parts.push(emb.f_to_device(Device::Cpu)?);
        }
        let sorted = self.concat(parts)?;
        if sorted.size()[0] == 0 {
            return Ok(sorted);
        }
        // Row k of `sorted` is text order[k]: invert the permutation.
        let mut inverse = vec![0i64; order.len()];
        for (k, &i) in order.iter().enumerate() {
            inverse[i] = k as i64;
        }
        Ok(sorted.f_index_select(0, &Tensor::f_from_slice(&inverse)?)?)
    }

    fn concat(&self, parts: Vec<Tensor>) -> Result<Tensor> {
        if parts.is_empty() {
            return Ok(Tensor::f_zeros(
                [0, self.config.embed_dim],
                (Kind::Float, Device::Cpu),
            )?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

/// How a loaded model computes: the device it runs on, its arithmetic, and how it decodes
/// images given by path or bytes. Parsed once from the names users type, wherever a model is
/// made or loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferenceOptions {
    pub device: crate::device::DeviceSpec,
    pub precision: Precision,
    pub decode: DecodeMode,
}

impl InferenceOptions {
    /// From the names: device "auto", "cpu", "cuda", "cuda:N"; precision "fp32", "bf16",
    /// "fp16", "int8"; decode "exact" or "fast".
    pub fn parse(device: &str, precision: &str, decode: &str) -> Result<Self> {
        Ok(InferenceOptions {
            device: crate::device::DeviceSpec::parse(device)?,
            precision: Precision::parse(precision)?,
            decode: DecodeMode::parse(decode)?,
        })
    }

    /// Loads a checkpoint with these settings.
    pub fn load(&self, path: &Path, config: Option<LiteClipConfig>) -> Result<LiteClip> {
        let mut model = LiteClip::load(path, self.device.resolve()?, config)?;
        self.apply(&mut model)?;
        Ok(model)
    }

    /// Puts the arithmetic and the decoding on a model (already on its device).
    pub fn apply(&self, model: &mut LiteClip) -> Result<()> {
        model.set_precision(self.precision)?;
        model.set_decode(self.decode);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nano() -> LiteClip {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(0);
        LiteClip::new(LiteClipConfig::nano(), Device::Cpu).unwrap()
    }

    #[test]
    fn embeddings_are_unit_rows_of_the_configured_width() {
        let model = nano();
        let img = image::RgbImage::from_fn(80, 50, |x, y| image::Rgb([x as u8, y as u8, 100]));
        let e = model
            .encode_images(&[ImageInput::Pixels(img.clone()), ImageInput::Pixels(img)])
            .unwrap();
        assert_eq!(e.size(), [2, 128]);
        let norms = e.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        let t = model
            .encode_texts(&["a cat", "a photo of a dog on the grass"])
            .unwrap();
        assert_eq!(t.size(), [2, 128]);
        assert_eq!(model.encode_texts(&[]).unwrap().size(), [0, 128]);
    }

    #[test]
    fn bf16_inference_stays_close_to_fp32() {
        let mut model = nano();
        let img = image::RgbImage::from_fn(70, 64, |x, y| image::Rgb([x as u8 * 3, y as u8, 50]));
        let images = [ImageInput::Pixels(img)];
        let texts = ["a red square", "two dogs running on the grass"];
        let (i32_, t32) = (
            model.encode_images(&images).unwrap(),
            model.encode_texts(&texts).unwrap(),
        );
        model.set_precision(Precision::Bf16).unwrap();
        let (i16_, t16) = (
            model.encode_images(&images).unwrap(),
            model.encode_texts(&texts).unwrap(),
        );
        assert_eq!(i16_.kind(), Kind::Float);
        let cos = |a: &Tensor, b: &Tensor| {
            (a * b)
                .sum_dim_intlist([1i64].as_slice(), false, None)
                .min()
                .double_value(&[])
        };
        assert!(cos(&i32_, &i16_) > 0.99, "{}", cos(&i32_, &i16_));
        assert!(cos(&t32, &t16) > 0.99, "{}", cos(&t32, &t16));
        assert!(
            (&i32_ - &i16_).abs().max().double_value(&[]) > 0.0,
            "bf16 changed nothing"
        );
    }

    #[test]
    fn padding_does_not_change_text_embeddings() {
        // Masked positions must not leak into attention or pooling.
        let model = nano();
        let alone = model.encode_texts(&["a cat"]).unwrap();
        let padded = model
            .encode_texts(&["a cat", "a much longer caption that forces padding"])
            .unwrap();
        let diff = (alone.get(0) - padded.get(0)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn save_and_load_round_trip_exactly() {
        let model = nano();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let loaded = LiteClip::load(dir.path(), Device::Cpu, None).unwrap();
        assert_eq!(loaded.config(), model.config());
        let a = model.varstore().variables();
        for (name, t) in loaded.varstore().variables() {
            assert!(t.equal(&a[&name]), "{name}");
        }
    }

    #[test]
    fn a_checkpoint_of_another_config_names_every_differing_size() {
        let model = nano();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        // Refused by comparing sizes, before the (larger) model of that config is allocated.
        let err =
            LiteClip::load(dir.path(), Device::Cpu, Some(LiteClipConfig::liteclip())).unwrap_err();
        match err {
            Error::Checkpoint { message, .. } => {
                for part in [
                    "image.depths [3, 3, 9, 3] in the config, [1, 1, 2, 1] in the weights",
                    "text.hidden_size 256 in the config, 128 in the weights",
                    "embed_dim 256 in the config, 128 in the weights",
                ] {
                    assert!(message.contains(part), "{message}");
                }
            }
            other => panic!("{other}"),
        }
    }
}
