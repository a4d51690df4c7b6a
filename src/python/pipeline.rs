//! `liteclip.ZeroShotPipeline`: the original liteCLIP entry point.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyList;

use super::convert::{extract_images, extract_texts};
use super::errors::{run_released, IntoPyResult};
use super::model::{PyLiteClip, SharedModel};
use crate::error::Error;
use crate::pipeline::{zero_shot, zero_shot_each, Candidates, PromptCache, Ranking};

/// One value for every item, or a list with one per item.
#[derive(FromPyObject)]
enum PerItem<T> {
    Each(Vec<T>),
    One(T),
}

impl<T: Clone> PerItem<T> {
    fn expand(self, n: usize, what: &str) -> Result<Vec<T>, Error> {
        match self {
            PerItem::One(value) => Ok(vec![value; n]),
            PerItem::Each(values) if values.len() == n => Ok(values),
            PerItem::Each(values) => Err(Error::invalid(format!(
                "{what} has {} values for {n} images",
                values.len()
            ))),
        }
    }
}

/// Where the original liteCLIP README expects its released weights.
const DEFAULT_CHECKPOINT: &str = "model/liteclip2.pt";

/// Zero-shot image classification: ranks candidate labels for an image.
///
/// `ZeroShotPipeline()` loads `./model/liteclip2.pt` (the original liteCLIP release); pass a
/// checkpoint path (any format `LiteClip.load` reads) or a `LiteClip` to use another model.
#[pyclass(name = "ZeroShotPipeline", module = "liteclip", frozen)]
pub struct PyZeroShotPipeline {
    model: Arc<SharedModel>,
    prompts: Arc<PromptCache>,
}

/// Prompts whose text embeddings a pipeline keeps (1 KiB each at embed_dim 256).
const CACHED_PROMPTS: usize = 4096;

impl PyZeroShotPipeline {
    fn with_model(model: Arc<SharedModel>) -> Self {
        PyZeroShotPipeline {
            model,
            prompts: Arc::new(PromptCache::new(CACHED_PROMPTS)),
        }
    }
}

#[pymethods]
impl PyZeroShotPipeline {
    #[new]
    #[pyo3(signature = (checkpoint = None, device = "auto", precision = "fp32", decode = "exact"))]
    fn new(
        py: Python<'_>,
        checkpoint: Option<&Bound<'_, PyAny>>,
        device: &str,
        precision: &str,
        decode: &str,
    ) -> PyResult<Self> {
        if let Some(obj) = checkpoint {
            if let Ok(model) = obj.downcast::<PyLiteClip>() {
                return Ok(Self::with_model(model.get().inner.clone()));
            }
        }
        let path: PathBuf = match checkpoint {
            Some(obj) => obj
                .extract()
                .map_err(|_| {
                    Error::InvalidType(
                        "checkpoint must be a path (str or os.PathLike) or a LiteClip".into(),
                    )
                })
                .py_err(py)?,
            None => PathBuf::from(DEFAULT_CHECKPOINT),
        };
        if checkpoint.is_none() && !path.exists() {
            return Err(Error::FileNotFound {
                path,
                hint: Some(
                    "ZeroShotPipeline() loads the original liteCLIP weights from \
                     ./model/liteclip2.pt; put them there, or pass the path of any liteclip \
                     checkpoint: ZeroShotPipeline(\"runs/exp/best\")"
                        .into(),
                ),
            })
            .py_err(py);
        }
        let model = PyLiteClip::load_model(py, path, device, None, precision, decode)?;
        Ok(Self::with_model(model.inner))
    }

    /// Ranks `labels` (at least two) for `image` and returns the `top_k` most probable as
    /// `[(label, probability), ...]`, most probable first; probabilities are a softmax over all
    /// labels. `image` takes every form `LiteClip.encode_image` does; a list of images gives one
    /// such list per image. `hypothesis_template` (e.g. `"a photo of a {}"`, as in Hugging
    /// Face's zero-shot pipeline) is filled with each label to make the text that is embedded;
    /// the labels are returned as given.
    #[pyo3(signature = (image, labels, top_k = 5, hypothesis_template = None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        top_k: i64,
        hypothesis_template: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let labels = extract_texts(labels, "labels").py_err(py)?;
        let candidates = Candidates::new(labels, hypothesis_template);
        let (images, batched) = extract_images(image).py_err(py)?.into_core();
        if top_k < 1 {
            return Err(Error::invalid(format!(
                "top_k must be at least 1, got {top_k}"
            )))
            .py_err(py);
        }
        let (model, cache) = (self.model.clone(), self.prompts.clone());
        let top_k = top_k as usize;
        let rankings = run_released(py, move || {
            zero_shot(&model, &images, &candidates, top_k, &cache)
        })?;
        let to_list = |r: Ranking| PyList::new(py, r);
        if batched {
            let lists = rankings
                .into_iter()
                .map(to_list)
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, lists)?.into_any())
        } else {
            let first = rankings.into_iter().next().unwrap_or_default();
            Ok(to_list(first)?.into_any())
        }
    }

    /// Ranks a different set of labels for each image in one pass: `images` is a list of
    /// images (or float pixels `(N, 3, S, S)`) and `label_sets` a list of as many label lists.
    /// `top_k` and `hypothesis_template` are one value for all, or a list with one per image.
    /// Returns one `[(label, probability), ...]` per image, the numbers `predict` gives for that
    /// image and its labels. (This is what `liteclip serve` calls for a batch of requests.)
    #[pyo3(
        signature = (images, label_sets, top_k = PerItem::One(5), hypothesis_template = PerItem::One(None)),
        text_signature = "(self, images, label_sets, top_k=5, hypothesis_template=None)"
    )]
    fn predict_each<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        label_sets: &Bound<'py, PyAny>,
        top_k: PerItem<i64>,
        hypothesis_template: PerItem<Option<String>>,
    ) -> PyResult<Vec<Bound<'py, PyList>>> {
        let sets: Vec<Bound<'py, PyAny>> = label_sets
            .try_iter()
            .and_then(|it| it.collect::<PyResult<_>>())
            .map_err(|_| Error::InvalidType("label_sets must be a list of label lists".into()))
            .py_err(py)?;
        let n = sets.len();
        let top_k = top_k.expand(n, "top_k").py_err(py)?;
        let templates = hypothesis_template
            .expand(n, "hypothesis_template")
            .py_err(py)?;
        let mut candidates = Vec::with_capacity(n);
        for (i, (set, template)) in sets.iter().zip(templates).enumerate() {
            let labels = extract_texts(set, &format!("label_sets[{i}]")).py_err(py)?;
            candidates.push(Candidates::new(labels, template.as_deref()));
        }
        let top_k = top_k
            .into_iter()
            .map(|k| {
                usize::try_from(k)
                    .ok()
                    .filter(|&k| k >= 1)
                    .ok_or_else(|| Error::invalid(format!("top_k must be at least 1, got {k}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .py_err(py)?;
        let (images, _) = extract_images(images).py_err(py)?.into_core();
        let (model, cache) = (self.model.clone(), self.prompts.clone());
        let rankings = run_released(py, move || {
            zero_shot_each(&model, &images, &candidates, &top_k, &cache)
        })?;
        rankings.into_iter().map(|r| PyList::new(py, r)).collect()
    }

    /// The underlying model.
    #[getter]
    fn model(&self) -> PyLiteClip {
        PyLiteClip {
            inner: self.model.clone(),
        }
    }

    fn __repr__(&self) -> String {
        format!("ZeroShotPipeline(model={})", self.model().__repr__())
    }
}
