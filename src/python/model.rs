//! `liteclip.LiteClip`: a loaded model, its encoders, and checkpoint I/O.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::PyArrayMethods;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::convert::{as_strs, extract_images, extract_texts, to_numpy_2d, to_python};
use super::errors::{run_released, IntoPyResult};
use crate::config::LiteClipConfig;
use crate::device::device_name;
use crate::error::Result;
use crate::liteclip::{InferenceOptions, LiteClip};

/// A model shared between Python threads.
///
/// SAFETY: `LiteClip` is not `Sync` only because `tch::Tensor` is not marked so. Everything
/// reachable through `&SharedModel` runs inference: no_grad forward passes that read the weight
/// tensors and never write them, which libtorch supports from many threads at once. Training
/// (which mutates weights) takes its own model, not a shared one.
pub struct SharedModel(LiteClip);
unsafe impl Sync for SharedModel {}

impl SharedModel {
    pub fn new(model: LiteClip) -> Self {
        SharedModel(model)
    }
}

impl std::ops::Deref for SharedModel {
    type Target = LiteClip;
    fn deref(&self) -> &LiteClip {
        &self.0
    }
}

/// A numpy array, or with `as_tensor` a torch tensor over the same memory (no copy).
fn output<'py>(py: Python<'py>, t: &tch::Tensor, as_tensor: bool) -> PyResult<Bound<'py, PyAny>> {
    let array = to_numpy_2d(py, t)?;
    if as_tensor {
        py.import("torch")?.call_method1("from_numpy", (array,))
    } else {
        Ok(array)
    }
}

/// Resolves "liteclip", "liteclip-nano" or a JSON path.
fn config_from_arg(spec: Option<&str>) -> Result<Option<LiteClipConfig>> {
    spec.map(LiteClipConfig::from_name_or_file).transpose()
}

/// A liteclip model on a device: encodes images and texts into a shared, L2-normalised embedding
/// space; loads the original liteCLIP `.pt` or liteclip's own checkpoint format, and saves the
/// latter.
#[pyclass(name = "LiteClip", module = "liteclip", frozen)]
pub struct PyLiteClip {
    pub(crate) inner: Arc<SharedModel>,
}

impl PyLiteClip {
    pub fn load_model(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        config: Option<&str>,
        precision: &str,
        decode: &str,
    ) -> PyResult<Self> {
        let options = InferenceOptions::parse(device, precision, decode).py_err(py)?;
        let config = config.map(str::to_owned);
        let path = super::hub::resolve_checkpoint(py, path)?;
        let model = run_released(py, move || {
            options.load(&path, config_from_arg(config.as_deref())?)
        })?;
        Ok(PyLiteClip {
            inner: Arc::new(SharedModel(model)),
        })
    }
}

#[pymethods]
impl PyLiteClip {
    /// A new, randomly initialised model: `config` is a preset name ("liteclip",
    /// "liteclip-nano") or the path of a JSON config; `seed` makes the initialisation repeatable.
    #[new]
    #[pyo3(signature = (config = "liteclip", device = "auto", seed = None, precision = "fp32", decode = "exact"))]
    fn new(
        py: Python<'_>,
        config: &str,
        device: &str,
        seed: Option<i64>,
        precision: &str,
        decode: &str,
    ) -> PyResult<Self> {
        let options = InferenceOptions::parse(device, precision, decode).py_err(py)?;
        let config = config.to_owned();
        let model = run_released(py, move || {
            if let Some(seed) = seed {
                tch::manual_seed(seed);
            }
            let config = LiteClipConfig::from_name_or_file(&config)?;
            let mut model = LiteClip::new(config, options.device.resolve()?)?;
            options.apply(&mut model)?;
            Ok(model)
        })?;
        Ok(PyLiteClip {
            inner: Arc::new(SharedModel(model)),
        })
    }

    /// Loads a checkpoint: an original liteCLIP `.pt` state dict, a liteclip folder
    /// (`config.json` + `model.safetensors`) or a `.safetensors` file. `device` is "auto",
    /// "cpu", "cuda" or "cuda:N"; `config` overrides the stored or inferred model config.
    /// `precision` is the arithmetic of encoding: "fp32" (exact parity with the original),
    /// "bf16" (faster where the hardware has bf16 units, at a small, measured accuracy cost),
    /// "fp16", or "int8" (CPU inference: int8 linear layers, about 2x fp32 on CPUs with AVX-512
    /// VNNI, far slower than fp32 on CPUs without VNNI: see the Performance guide).
    /// `decode` is how images given by path or bytes are decoded: "exact" (every pixel, as
    /// PIL) or "fast" (large JPEGs decoded at a reduced DCT scale that keeps 1.5 times the
    /// resolution the resize produces).
    #[staticmethod]
    #[pyo3(signature = (path, device = "auto", config = None, precision = "fp32", decode = "exact"))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        config: Option<&str>,
        precision: &str,
        decode: &str,
    ) -> PyResult<Self> {
        Self::load_model(py, path, device, config, precision, decode)
    }

    /// Uploads this model to the Hugging Face Hub repository `repo_id` (created if needed):
    /// `config.json`, `model.safetensors` and a short model card. `LiteClip.load("hf-hub:" +
    /// repo_id)` loads it back. Returns the commit's URL. Needs `pip install 'liteclip[hub]'`
    /// and a token (`token=`, `HF_TOKEN` or `huggingface-cli login`).
    #[pyo3(signature = (repo_id, private = false, token = None, commit_message = "Upload liteclip model"))]
    fn push_to_hub(
        slf: &Bound<'_, Self>,
        repo_id: &str,
        private: bool,
        token: Option<&str>,
        commit_message: &str,
    ) -> PyResult<String> {
        slf.py()
            .import("liteclip.hub")?
            .call_method1(
                "push_to_hub",
                (slf, repo_id, private, token, commit_message),
            )?
            .extract()
    }

    /// The arithmetic of encoding: "fp32", "bf16", "fp16" or "int8".
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision().name()
    }

    /// How images given by path or bytes are decoded: "exact" or "fast".
    #[getter]
    fn decode(&self) -> &'static str {
        self.inner.decode().name()
    }

    /// Saves in liteclip's own format: a folder with `config.json` and `model.safetensors`,
    /// each written atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let model = self.inner.clone();
        run_released(py, move || model.save(&path))
    }

    /// The model's input for images (a path, bytes, PIL image, uint8 array, or a list of
    /// them): float32 `(3, S, S)` for one, `(N, 3, S, S)` for a list, with S this model's
    /// `image_size` and its `decode` mode. What `encode_image` does first; its result may be
    /// given to `encode_image` later.
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let size = self.inner.config().image_size as u32;
        super::preprocess_images(py, images, size, self.inner.decode())
    }

    /// Embeds images: a path, PIL image, uint8 array, or a list of them, or a float32
    /// `(N, 3, S, S)` batch already preprocessed. Returns float32 `(N, embed_dim)`, rows of unit
    /// length: a numpy array, or a CPU `torch.Tensor` sharing its memory with `as_tensor=True`.
    #[pyo3(signature = (images, as_tensor = false))]
    fn encode_image<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        as_tensor: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (images, _) = extract_images(images).py_err(py)?.into_core();
        let model = self.inner.clone();
        let emb = run_released(py, move || model.encode(&images))?;
        output(py, &emb, as_tensor)
    }

    /// Embeds a string or a list of strings: float32 `(N, embed_dim)`, rows of unit length (a
    /// numpy array, or a `torch.Tensor` with `as_tensor=True`).
    #[pyo3(signature = (texts, as_tensor = false))]
    fn encode_text<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        as_tensor: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let texts = extract_texts(texts, "texts").py_err(py)?;
        let model = self.inner.clone();
        let emb = run_released(py, move || model.encode_texts(&as_strs(&texts)))?;
        output(py, &emb, as_tensor)
    }

    /// The `(N, M)` logits between N images and M texts: `logit_scale` times the cosine
    /// similarities, as liteCLIP's `logits_per_image` (the transpose is `logits_per_text`).
    #[pyo3(signature = (images, texts, as_tensor = false))]
    fn similarity<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        texts: &Bound<'py, PyAny>,
        as_tensor: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (images, _) = extract_images(images).py_err(py)?.into_core();
        let texts = extract_texts(texts, "texts").py_err(py)?;
        let model = self.inner.clone();
        let logits = run_released(py, move || model.similarity(&images, &as_strs(&texts)))?;
        output(py, &logits, as_tensor)
    }

    /// The factor applied to cosine similarities (`exp` of the learned parameter).
    #[getter]
    fn logit_scale(&self, py: Python<'_>) -> PyResult<f64> {
        self.inner.logit_scale().py_err(py)
    }

    /// The device the weights are on: "cpu" or "cuda:N".
    #[getter]
    fn device(&self) -> String {
        device_name(self.inner.device())
    }

    /// The model config as a dict (the content of a checkpoint's `config.json`).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.inner.config().to_json(),))
    }

    /// Width of the shared embedding space.
    #[getter]
    fn embed_dim(&self) -> i64 {
        self.inner.config().embed_dim
    }

    /// Side of the square images the model sees (what `preprocess` makes for it).
    #[getter]
    fn image_size(&self) -> i64 {
        self.inner.config().image_size
    }

    /// Number of trainable parameters.
    #[getter]
    fn num_parameters(&self) -> i64 {
        self.inner.num_parameters()
    }

    /// Every parameter as a numpy array (float32), under the original liteCLIP names: what
    /// `CLIP.load_state_dict` of the original PyTorch code takes (after `torch.from_numpy`).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let mut vars: Vec<_> = self.inner.varstore().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            let t = t.detach().to_device(tch::Device::Cpu);
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let flat = t.to_kind(tch::Kind::Float).contiguous().view([-1]);
            let data = Vec::<f32>::try_from(&flat)
                .map_err(crate::error::Error::from)
                .py_err(py)?;
            out.set_item(name, numpy::PyArray1::from_vec(py, data).reshape(shape)?)?;
        }
        Ok(out)
    }

    /// Writes the weights as the original liteCLIP released them: `torch.save` of an ordered
    /// state dict, loadable by its PyTorch `CLIP` module. Only for the original architecture
    /// (the `liteclip` preset); the file is written atomically.
    fn export_pt(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let model = self.inner.clone();
        run_released(py, move || model.export_pt(&path))
    }

    /// Embeds every image under `folder` (recursively; the extensions `liteclip` reads),
    /// `batch_size` at a time. Returns `(paths, embeddings, skipped)`: the paths in sorted order
    /// with one unit-length float32 row each, and `(path, reason)` for images that could not be
    /// decoded (skipped, not fatal). Ctrl-C stops it between batches.
    #[pyo3(signature = (folder, batch_size = 64))]
    fn embed_folder<'py>(
        &self,
        py: Python<'py>,
        folder: PathBuf,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let model = self.inner.clone();
        let found = run_released(py, move || {
            crate::embed::embed_folder(&model, &folder, batch_size)
        })?;
        let embeddings = to_numpy_2d(py, &found.embeddings)?;
        (found.paths, embeddings, found.skipped).into_pyobject(py)
    }

    /// Writes the embeddings of `source` (a folder of images, or a text file with one text per
    /// line) to `output` (`.npy`) and its index (`.json` beside it): what `liteclip embed` does.
    /// Returns a summary dict (`output`, `index`, `kind`, `rows`, `skipped`).
    #[pyo3(signature = (source, output, batch_size = 64, checkpoint = None))]
    fn embed_to_file<'py>(
        &self,
        py: Python<'py>,
        source: PathBuf,
        output: PathBuf,
        batch_size: usize,
        checkpoint: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let model = self.inner.clone();
        let checkpoint = checkpoint.unwrap_or_default();
        let report = run_released(py, move || {
            crate::embed::embed_to_file(&model, &source, &output, batch_size, &checkpoint)
        })?;
        to_python(py, &report)
    }

    /// Names and shapes of all parameters, in the original liteCLIP layout.
    fn parameter_shapes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let mut vars: Vec<_> = self.inner.varstore().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            out.set_item(name, t.size())?;
        }
        Ok(out)
    }

    pub(crate) fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "LiteClip(device='{}', precision='{}', image=ConvNeXt(dims={:?}, depths={:?}), text=BERT(hidden={}, \
             layers={}, heads={}), embed_dim={}, image_size={}, parameters={:.1}M)",
            device_name(self.inner.device()),
            self.inner.precision().name(),
            c.image.dims,
            c.image.depths,
            c.text.hidden_size,
            c.text.num_layers,
            c.text.num_heads,
            c.embed_dim,
            c.image_size,
            self.inner.num_parameters() as f64 / 1e6
        )
    }
}
