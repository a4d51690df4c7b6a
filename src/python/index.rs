//! `liteclip.Index`: a photo index on disk (see [`crate::index`]), with the model that queries
//! it loaded on first use.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use super::convert::{extract_images, to_python};
use super::errors::{run_released, IntoPyResult};
use super::model::SharedModel;
use crate::device::{device_name, parse_device};
use crate::error::{Error, Result};
// The signature defaults below (commit_every = 1024, lock_wait = 10.0) are the core's
// COMMIT_EVERY and LOCK_WAIT_SECONDS written out, so that help() shows them;
// tests/test_index.py checks them (and the CLI's) against INDEX_DEFAULTS, made from the core.
use crate::index::{PhotoIndex, Progress, UpdateOptions, UpdateReport};

/// `INDEX_DEFAULTS`: the core's defaults of an update, for the signature and CLI checks.
pub fn add_index_defaults(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let defaults = UpdateOptions::default();
    let out = pyo3::types::PyDict::new(m.py());
    out.set_item("batch_size", defaults.batch_size)?;
    out.set_item("commit_every", defaults.commit_every)?;
    out.set_item("lock_wait", defaults.lock_wait.as_secs_f64())?;
    m.add("INDEX_DEFAULTS", out)
}
use crate::liteclip::{Images, LiteClip};
use crate::model::Precision;

/// A searchable index of a folder of photos, kept on disk (a folder, e.g. `LIB.lcx`) and
/// brought up to date incrementally. Build one with `Index.build`, reopen it with `Index.open`.
/// Result paths are absolute: the indexed root joined with the file's path under it.
#[pyclass(name = "Index", module = "liteclip", frozen)]
pub struct PyIndex {
    index: Mutex<PhotoIndex>,
    model: Mutex<Option<Arc<SharedModel>>>,
    /// A checkpoint given to `open`, used instead of the recorded one (same weights).
    checkpoint: Option<PathBuf>,
    device: String,
    precision: Precision,
    last_report: Mutex<Option<UpdateReport>>,
}

/// Calls the user's `progress(dict)` after each batch. A Ctrl-C that lands inside it stops the
/// update (what was embedded is kept); any other exception in it is reported, not raised.
fn progress_callback(progress: Option<Py<PyAny>>) -> impl FnMut(&Progress) -> Result<()> + Send {
    move |state: &Progress| {
        let Some(callback) = &progress else {
            return Ok(());
        };
        Python::with_gil(|py| {
            let outcome = to_python(py, state).and_then(|s| callback.call1(py, (s,)));
            match outcome {
                Ok(_) => Ok(()),
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => {
                    Err(Error::Interrupted)
                }
                Err(e) => {
                    e.write_unraisable(py, Some(callback.bind(py)));
                    Ok(())
                }
            }
        })
    }
}

fn update_options(batch_size: usize, commit_every: usize, lock_wait: f64) -> Result<UpdateOptions> {
    if batch_size == 0 {
        return Err(Error::invalid("batch_size must be at least 1"));
    }
    if commit_every == 0 {
        return Err(Error::invalid("commit_every must be at least 1"));
    }
    if !(lock_wait.is_finite() && lock_wait >= 0.0) {
        return Err(Error::invalid(
            "lock_wait must be a number of seconds, 0 or more",
        ));
    }
    Ok(UpdateOptions {
        batch_size,
        commit_every,
        lock_wait: Duration::from_secs_f64(lock_wait),
    })
}

impl PyIndex {
    fn locked(&self) -> MutexGuard<'_, PhotoIndex> {
        // A panic inside the core is turned into an exception; the index itself is re-read
        // from disk by every writer, so a poisoned lock holds nothing half-done.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember<'py>(&self, py: Python<'py>, report: UpdateReport) -> PyResult<Bound<'py, PyAny>> {
        let out = to_python(py, &report);
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        out
    }

    /// The query model, loaded (and checked against the index) on first use.
    fn model(&self) -> Result<Arc<SharedModel>> {
        let mut slot = self.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(model) = slot.as_ref() {
            return Ok(model.clone());
        }
        let device = parse_device(&self.device)?;
        let model = self
            .locked()
            .load_model(self.checkpoint.as_deref(), device, self.precision)?;
        let model = Arc::new(SharedModel::new(model));
        *slot = Some(model.clone());
        Ok(model)
    }
}

#[pymethods]
impl PyIndex {
    /// Indexes the images under `root` (recursively) into the index folder `path` with the
    /// model at `checkpoint`, or brings an existing index of that folder and model up to date.
    /// `progress`, if given, is called with a dict (`done`, `to_embed`, `skipped`, `seconds`)
    /// after each batch. The report of this first update is `index.last_report`.
    #[staticmethod]
    #[pyo3(signature = (root, path, checkpoint, device = "auto", precision = "fp32", batch_size = 64, progress = None, lock_wait = 10.0, commit_every = 1024))]
    #[allow(clippy::too_many_arguments)]
    fn build(
        py: Python<'_>,
        root: PathBuf,
        path: PathBuf,
        checkpoint: PathBuf,
        device: &str,
        precision: &str,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
        lock_wait: f64,
        commit_every: usize,
    ) -> PyResult<Self> {
        let options = update_options(batch_size, commit_every, lock_wait).py_err(py)?;
        let built = Self::create(py, root, path, checkpoint, device, precision)?;
        let mut report_progress = progress_callback(progress);
        let report = run_released(py, || {
            let model = built.model()?;
            built
                .locked()
                .update(&model, &options, &mut report_progress)
        })?;
        built.remember(py, report)?;
        Ok(built)
    }

    /// Creates an empty index of `root` at `path` for the model at `checkpoint` (or opens the
    /// existing one, which must be of that folder and those weights), without embedding
    /// anything yet: `update()` does that.
    #[staticmethod]
    #[pyo3(signature = (root, path, checkpoint, device = "auto", precision = "fp32"))]
    fn create(
        py: Python<'_>,
        root: PathBuf,
        path: PathBuf,
        checkpoint: PathBuf,
        device: &str,
        precision: &str,
    ) -> PyResult<Self> {
        let precision = Precision::parse(precision).py_err(py)?;
        let device_spec = device.to_owned();
        let (index, model) = run_released(py, move || {
            let mut model = LiteClip::load(&checkpoint, parse_device(&device_spec)?, None)?;
            model.set_precision(precision);
            let index = PhotoIndex::create(&path, &root, &model, &checkpoint)?;
            Ok((index, model))
        })?;
        Ok(PyIndex {
            index: Mutex::new(index),
            model: Mutex::new(Some(Arc::new(SharedModel::new(model)))),
            checkpoint: None,
            device: device.to_owned(),
            precision,
            last_report: Mutex::new(None),
        })
    }

    /// One rank's part of a distributed update (what `torchrun ... -m liteclip index` runs):
    /// embeds share `rank` of `world` of the files an update would embed now, into the
    /// index's staging folder. The next `update()` (on rank 0, once every rank has finished)
    /// takes those rows in. Returns how many files this rank embedded.
    #[pyo3(signature = (rank, world, batch_size = 64, progress = None, commit_every = 1024))]
    fn embed_share(
        &self,
        py: Python<'_>,
        rank: usize,
        world: usize,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
        commit_every: usize,
    ) -> PyResult<usize> {
        let options = update_options(batch_size, commit_every, 0.0).py_err(py)?;
        let mut report_progress = progress_callback(progress);
        run_released(py, || {
            let model = self.model()?;
            let mut index = self.locked();
            index.refresh()?;
            index.embed_share(&model, rank, world, &options, &mut report_progress)
        })
    }

    /// Opens an index folder made by `Index.build` or `liteclip index`. The model is the
    /// recorded checkpoint (loaded at the first search or update); a `checkpoint` given here
    /// must hold the same weights, and is checked now.
    #[staticmethod]
    #[pyo3(signature = (path, checkpoint = None, device = "auto", precision = "fp32"))]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        checkpoint: Option<PathBuf>,
        device: &str,
        precision: &str,
    ) -> PyResult<Self> {
        let precision = Precision::parse(precision).py_err(py)?;
        let index = run_released(py, move || PhotoIndex::open(&path))?;
        let opened = PyIndex {
            index: Mutex::new(index),
            model: Mutex::new(None),
            checkpoint,
            device: device.to_owned(),
            precision,
            last_report: Mutex::new(None),
        };
        if opened.checkpoint.is_some() {
            run_released(py, || opened.model().map(drop))?;
        }
        Ok(opened)
    }

    /// Re-scans the folder: embeds new and changed files, drops deleted ones. Returns a report
    /// dict: `total`, `embedded`, `removed`, `unchanged`, `skipped` (a list of `{path, error}`),
    /// `seconds`, `size`. Ctrl-C keeps what was embedded and stops.
    #[pyo3(signature = (batch_size = 64, progress = None, lock_wait = 10.0, commit_every = 1024))]
    fn update<'py>(
        &self,
        py: Python<'py>,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
        lock_wait: f64,
        commit_every: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = update_options(batch_size, commit_every, lock_wait).py_err(py)?;
        let mut report_progress = progress_callback(progress);
        let report = run_released(py, || {
            let model = self.model()?;
            self.locked().update(&model, &options, &mut report_progress)
        })?;
        self.remember(py, report)
    }

    /// Indexes these files (paths under the root, absolute or relative to it) now, including
    /// ones taken out with `remove`. Returns a report as `update` does.
    #[pyo3(signature = (paths, batch_size = 64, progress = None, lock_wait = 10.0, commit_every = 1024))]
    fn add<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
        lock_wait: f64,
        commit_every: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = update_options(batch_size, commit_every, lock_wait).py_err(py)?;
        let mut report_progress = progress_callback(progress);
        let report = run_released(py, || {
            let model = self.model()?;
            self.locked()
                .add(&model, &paths, &options, &mut report_progress)
        })?;
        self.remember(py, report)
    }

    /// Takes files out of the index; later updates leave them out until `add` brings them
    /// back. Returns how many indexed files were removed.
    #[pyo3(signature = (paths, lock_wait = 10.0))]
    fn remove(&self, py: Python<'_>, paths: Vec<PathBuf>, lock_wait: f64) -> PyResult<usize> {
        let options = update_options(1, 1, lock_wait).py_err(py)?;
        run_released(py, || self.locked().remove(&paths, options.lock_wait))
    }

    /// The `k` indexed images closest to `query`, best first, as `(path, score)` pairs (score:
    /// cosine similarity). A `str` is a text query; an image is a `pathlib.Path`, bytes, a PIL
    /// image or a uint8 array. Sees commits made by other processes since the last call.
    #[pyo3(signature = (query, k = 10))]
    fn search(
        &self,
        py: Python<'_>,
        query: &Bound<'_, PyAny>,
        k: usize,
    ) -> PyResult<Vec<(String, f32)>> {
        if k == 0 {
            return Err(Error::invalid("k must be at least 1")).py_err(py);
        }
        let query = Query::extract(query).py_err(py)?;
        let hits = run_released(py, move || {
            let model = self.model()?;
            let vector = query.embed(&model)?;
            self.locked().search(&vector, k)
        })?;
        Ok(hits.into_iter().map(|h| (text(&h.path), h.score)).collect())
    }

    /// Every indexed file as an absolute path, in index order.
    fn files(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        run_released(py, || {
            let mut index = self.locked();
            index.refresh()?;
            Ok(index.files().into_iter().map(|(_, p)| text(&p)).collect())
        })
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        run_released(py, || {
            let mut index = self.locked();
            index.refresh()?;
            Ok(index.len())
        })
    }

    /// The report of the last `build`, `update` or `add` through this object, or None.
    #[getter]
    fn last_report<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let report = self
            .last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        report.map(|r| to_python(py, &r)).transpose()
    }

    /// The indexed folder (absolute).
    #[getter]
    fn root(&self) -> String {
        text(self.locked().root())
    }

    /// The checkpoint the index was built with (absolute).
    #[getter]
    fn checkpoint(&self) -> String {
        text(self.locked().checkpoint())
    }

    /// The index folder.
    #[getter]
    fn path(&self) -> String {
        text(self.locked().dir())
    }

    /// Width of the indexed embeddings (the model's `embed_dim`).
    #[getter]
    fn embed_dim(&self) -> i64 {
        self.locked().embed_dim()
    }

    /// Where queries are embedded: the device name, or "not loaded" before the first query.
    #[getter]
    fn device(&self) -> String {
        match self
            .model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(model) => device_name(model.device()),
            None => "not loaded".into(),
        }
    }

    fn __repr__(&self) -> String {
        let index = self.locked();
        format!(
            "Index(path='{}', root='{}', files={}, checkpoint='{}')",
            index.dir().display(),
            index.root().display(),
            index.len(),
            index.checkpoint().display()
        )
    }
}

/// A path for Python (indexed paths are UTF-8: other names are skipped when indexing).
fn text(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A search query: text, or one image.
enum Query {
    Text(String),
    Image(Images),
}

impl Query {
    fn extract(obj: &Bound<'_, PyAny>) -> Result<Self> {
        if let Ok(text) = obj.downcast::<PyString>() {
            let text = text.to_string();
            if text.trim().is_empty() {
                return Err(Error::invalid(
                    "the query is empty: give words to search for (or an image)",
                ));
            }
            return Ok(Query::Text(text));
        }
        if obj.downcast::<PyList>().is_ok() {
            return Err(Error::InvalidType(
                "search takes one query (a str, or one image), not a list".into(),
            ));
        }
        let (images, batched) = extract_images(obj)?.into_core();
        if batched {
            return Err(Error::InvalidType(
                "search takes one query image, not a batch".into(),
            ));
        }
        Ok(Query::Image(images))
    }

    /// The query's unit vector.
    fn embed(&self, model: &LiteClip) -> Result<Vec<f32>> {
        let row = match self {
            Query::Text(text) => model.encode_texts(&[text.as_str()])?,
            Query::Image(images) => model.encode(images)?,
        };
        Ok(Vec::<f32>::try_from(&row.f_view([-1])?)?)
    }
}
