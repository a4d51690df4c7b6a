//! `liteclip.Index`: a photo index on disk (see [`crate::index`]), with the model that queries
//! it loaded on first use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;

use super::convert::to_python;
use super::errors::{run_released, IntoPyResult};
use super::model::{PyLiteClip, SharedModel};
use super::search::{extract_query, PySearchHit, SearchKeywords};
use crate::device::device_name;
use crate::error::{Error, Result};
// The signature defaults below (commit_every = 1024, lock_wait = 10.0) are the core's
// COMMIT_EVERY and LOCK_WAIT_SECONDS written out, so that help() shows them;
// tests/test_index.py checks them (and the CLI's) against INDEX_DEFAULTS, made from the core.
use crate::image::decode::decode_bytes_at;
use crate::image::thumbnail::thumbnail_jpeg;
use crate::image::Resolution;
use crate::index::query::{query_vectors, use_indexed_rows};
use crate::index::{Hit, IndexedFile, PhotoIndex, Progress, UpdateOptions, UpdateReport};

/// `INDEX_DEFAULTS`: the core's defaults of an update, for the signature and CLI checks.
pub fn add_index_defaults(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let defaults = UpdateOptions::default();
    let out = pyo3::types::PyDict::new(m.py());
    out.set_item("batch_size", defaults.batch_size)?;
    out.set_item("commit_every", defaults.commit_every)?;
    out.set_item("lock_wait", defaults.lock_wait.as_secs_f64())?;

    m.add("INDEX_DEFAULTS", out)?;
    // `Index.duplicates`' default threshold (the signature writes it out; a test compares).
    m.add(
        "DUPLICATE_THRESHOLD",
        crate::index::duplicates::DEFAULT_THRESHOLD,
    )
}
use crate::liteclip::InferenceOptions;

/// A searchable index of a folder of photos, kept on disk (a folder, e.g. `LIB.lcx`) and
/// brought up to date incrementally. Build one with `Index.build`, reopen it with `Index.open`.
/// Result paths are absolute: the indexed root joined with the file's path under it.
#[pyclass(name = "Index", module = "liteclip", frozen)]
pub struct PyIndex {
    index: Mutex<PhotoIndex>,
    model: Mutex<Option<Arc<SharedModel>>>,
    /// A checkpoint given to `open`, used instead of the recorded one (same weights).
    checkpoint: Option<PathBuf>,
    options: InferenceOptions,
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

    /// The hits of each query (vectors computed in one model pass per kind of term), with the
    /// filters and paging of the keywords.
    fn search_queries(
        &self,
        py: Python<'_>,
        queries: &[Bound<'_, PyAny>],
        keywords: SearchKeywords,
    ) -> PyResult<Vec<Vec<Hit>>> {
        let mut queries = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let query = extract_query(q);
                if queries.len() > 1 {
                    query.map_err(|e| e.in_item("queries", i))
                } else {
                    query
                }
            })
            .collect::<Result<Vec<_>>>()
            .py_err(py)?;
        // Everything from here runs without the GIL: an update holding the index may be
        // waiting for it (its progress callback).
        run_released(py, move || {
            let model = self.model()?;
            let mut index = self.locked();
            index.refresh()?;
            let options = keywords.options(&index)?;
            use_indexed_rows(&mut queries, &|path| index.id_of_path(path));
            let vectors = query_vectors(&model, &queries, &mut |id| index.vector_of(id))?;
            vectors
                .iter()
                .map(|v| index.search_with(v, &options))
                .collect()
        })
    }

    /// The query model, loaded (and checked against the index) on first use.
    fn model(&self) -> Result<Arc<SharedModel>> {
        let mut slot = self.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(model) = slot.as_ref() {
            return Ok(model.clone());
        }
        let model = self
            .locked()
            .load_model(self.checkpoint.as_deref(), &self.options)?;
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
    #[pyo3(signature = (root, path, checkpoint, device = "auto", precision = "fp32", batch_size = 64, progress = None, lock_wait = 10.0, commit_every = 1024, decode = "exact"))]
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
        decode: &str,
    ) -> PyResult<Self> {
        let options = update_options(batch_size, commit_every, lock_wait).py_err(py)?;
        let built = Self::create(py, root, path, checkpoint, device, precision, decode)?;
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
    #[pyo3(signature = (root, path, checkpoint, device = "auto", precision = "fp32", decode = "exact"))]
    fn create(
        py: Python<'_>,
        root: PathBuf,
        path: PathBuf,
        checkpoint: PathBuf,
        device: &str,
        precision: &str,
        decode: &str,
    ) -> PyResult<Self> {
        let options = InferenceOptions::parse(device, precision, decode).py_err(py)?;
        let checkpoint = super::hub::resolve_checkpoint(py, checkpoint)?;
        let (index, model) = run_released(py, move || {
            let model = options.load(&checkpoint, None)?;
            let index = PhotoIndex::create(&path, &root, &model, &checkpoint)?;
            Ok((index, model))
        })?;
        Ok(PyIndex {
            index: Mutex::new(index),
            model: Mutex::new(Some(Arc::new(SharedModel::new(model)))),
            checkpoint: None,
            options,
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
    /// (a path, or a loaded `LiteClip` to share) must hold the same weights, and is checked now.
    /// Whether `path` holds an index (a folder with its manifest). Says nothing of whether the
    /// index is intact: `open` checks that.
    #[staticmethod]
    fn exists(path: PathBuf) -> bool {
        crate::index::PhotoIndex::exists(&path)
    }

    #[staticmethod]
    #[pyo3(signature = (path, checkpoint = None, device = "auto", precision = "fp32", decode = "exact"))]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        checkpoint: Option<&Bound<'_, PyAny>>,
        device: &str,
        precision: &str,
        decode: &str,
    ) -> PyResult<Self> {
        let options = InferenceOptions::parse(device, precision, decode).py_err(py)?;
        let (checkpoint, loaded) = match checkpoint {
            None => (None, None),
            Some(obj) => match obj.downcast::<PyLiteClip>() {
                Ok(model) => (None, Some(model.get().inner.clone())),
                Err(_) => (
                    Some(
                        obj.extract::<PathBuf>()
                            .map_err(|_| {
                                Error::InvalidType(
                                    "checkpoint must be a path (str or os.PathLike) or a LiteClip"
                                        .into(),
                                )
                            })
                            .py_err(py)?,
                    ),
                    None,
                ),
            },
        };
        let checkpoint = checkpoint
            .map(|c| super::hub::resolve_checkpoint(py, c))
            .transpose()?;
        let shared = loaded.clone();
        let index = run_released(py, move || {
            let index = PhotoIndex::open(&path)?;
            if let Some(model) = &shared {
                index.check_model(model, Path::new("the given LiteClip"))?;
            }
            Ok(index)
        })?;
        let opened = PyIndex {
            index: Mutex::new(index),
            model: Mutex::new(loaded),
            checkpoint,
            options,
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

    /// Indexes these files now, including ones taken out with `remove`. Each path is a file or
    /// a folder (every image under it), absolute or relative to the working folder (as `open`
    /// takes it), and must lie under the root. Returns a report as `update` does. Raises
    /// FileNotFoundError for a path that does not exist and ValueError for one outside the
    /// root, one that is not an image file, or one inside a folder taken out with `remove`
    /// (add that folder); nothing is indexed then.
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
    /// back. Each path is a file or a folder (everything under it, also files put there
    /// later), absolute or relative to the working folder. Returns how many indexed files were
    /// removed. Raises ValueError naming every path that is outside the root or neither
    /// indexed nor already removed, and then removes nothing.
    #[pyo3(signature = (paths, lock_wait = 10.0))]
    fn remove(&self, py: Python<'_>, paths: Vec<PathBuf>, lock_wait: f64) -> PyResult<usize> {
        let options = update_options(1, 1, lock_wait).py_err(py)?;
        run_released(py, || self.locked().remove(&paths, options.lock_wait))
    }

    /// The `k` indexed photos closest to `query`, best first, as `SearchHit`s: each unpacks as
    /// `(path, score)` (score: cosine similarity) and carries `taken`, `camera`, `width`,
    /// `height`, `gps`, `file_size` and `id`.
    ///
    /// `query` is a `str` (text), an image (a `pathlib.Path`, bytes, a PIL image or a uint8
    /// array; a path to a photo in the index uses its stored embedding), a `(term, weight)`
    /// pair, or a list of these: the query vector is then the normalised weighted sum of the
    /// terms' embeddings (a negative weight steers away), e.g.
    /// `[("a dog", 2.0), Path("beach.jpg"), ("people", -1.0)]`.
    ///
    /// Filters: `after` / `before` (`YYYY-MM-DD`, inclusive, on the date taken), `under` (a
    /// folder, relative to the indexed root or absolute), `camera` (case-insensitive part of
    /// the make or model), `min_score` (cosine). `offset` skips that many results (the next
    /// page). `sort="date"` lists every photo passing the filters and scoring at least
    /// `min_score` (then required), newest first. With filters, `k` results come back whenever
    /// `k` photos match. Sees commits made by other processes since the last call.
    #[pyo3(signature = (query, k = 10, *, offset = 0, after = None, before = None, under = None, camera = None, min_score = None, sort = "score"))]
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        py: Python<'_>,
        query: &Bound<'_, PyAny>,
        k: usize,
        offset: usize,
        after: Option<&str>,
        before: Option<&str>,
        under: Option<PathBuf>,
        camera: Option<&str>,
        min_score: Option<f32>,
        sort: &str,
    ) -> PyResult<Vec<PySearchHit>> {
        let queries = [query.clone()];
        let mut hits = self.search_queries(
            py,
            &queries,
            SearchKeywords {
                k,
                offset,
                after: after.map(str::to_owned),
                before: before.map(str::to_owned),
                under,
                camera: camera.map(str::to_owned),
                min_score,
                sort: sort.to_owned(),
            },
        )?;
        Ok(hits
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(PySearchHit::new)
            .collect())
    }

    /// `search` for several queries at once (texts embedded in one pass, images in another),
    /// with the same keywords for all: one list of `SearchHit`s per query. (What
    /// `liteclip serve` calls for a batch of requests.)
    #[pyo3(signature = (queries, k = 10, *, offset = 0, after = None, before = None, under = None, camera = None, min_score = None, sort = "score"))]
    #[allow(clippy::too_many_arguments)]
    fn search_many(
        &self,
        py: Python<'_>,
        queries: Vec<Bound<'_, PyAny>>,
        k: usize,
        offset: usize,
        after: Option<&str>,
        before: Option<&str>,
        under: Option<PathBuf>,
        camera: Option<&str>,
        min_score: Option<f32>,
        sort: &str,
    ) -> PyResult<Vec<Vec<PySearchHit>>> {
        let hits = self.search_queries(
            py,
            &queries,
            SearchKeywords {
                k,
                offset,
                after: after.map(str::to_owned),
                before: before.map(str::to_owned),
                under,
                camera: camera.map(str::to_owned),
                min_score,
                sort: sort.to_owned(),
            },
        )?;
        Ok(hits
            .into_iter()
            .map(|list| list.into_iter().map(PySearchHit::new).collect())
            .collect())
    }

    /// Groups of near-duplicate photos (resized, recompressed, slightly cropped copies):
    /// photos whose embeddings have a cosine of at least `threshold` with another of the group.
    /// A list of `{"keep": path, "duplicates": [path, ...]}`, `keep` being the largest in
    /// pixels, then the oldest. Found by neighbour search (every pair is never compared).
    #[pyo3(signature = (threshold = 0.95))]
    fn duplicates<'py>(&self, py: Python<'py>, threshold: f32) -> PyResult<Bound<'py, PyAny>> {
        let groups = run_released(py, || self.locked().duplicates(threshold))?;
        to_python(py, &groups)
    }

    /// Whether the index holds the photo at `path` (absolute, or relative to the root).
    fn __contains__(&self, py: Python<'_>, path: PathBuf) -> PyResult<bool> {
        run_released(py, || {
            let mut index = self.locked();
            index.refresh()?;
            let path = if path.is_absolute() {
                path
            } else {
                index.root().join(&path)
            };
            Ok(index.id_of_path(&path).is_some())
        })
    }

    /// The ids (as in `SearchHit.id`, for `thumbnail`) of the photos at `paths` (absolute, or
    /// relative to the root), None for one that is not indexed.
    fn ids_of(&self, py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Vec<Option<u64>>> {
        run_released(py, || {
            let mut index = self.locked();
            index.refresh()?;
            Ok(index.ids_of_paths(&paths))
        })
    }

    /// A JPEG preview (longest side `size` pixels) of the indexed file with this `id` (from
    /// `search_many`), or None when no file in the index has it, or when the file is no longer
    /// the one indexed (another size or time, or a link that now leads outside the folder):
    /// only indexed files, as they were indexed, are read.
    #[pyo3(signature = (id, size = 256))]
    fn thumbnail<'py>(
        &self,
        py: Python<'py>,
        id: u64,
        size: u32,
    ) -> PyResult<Option<Bound<'py, pyo3::types::PyBytes>>> {
        let jpeg = run_released(py, || {
            let file = {
                let mut index = self.locked();
                index.refresh()?;
                index.indexed_file(id)
            };
            // Read and decoded outside the lock: searches go on meanwhile. Only while the file
            // is the one indexed, under the root.
            let Some(bytes) = file.as_ref().map(IndexedFile::read).transpose()?.flatten() else {
                return Ok(None);
            };
            // A thumbnail needs no more than twice its own size decoded.
            let need = Resolution::AtLeast(size.saturating_mul(2));
            let origin = format!("image {id}");
            thumbnail_jpeg(&decode_bytes_at(&bytes, &origin, need)?, size).map(Some)
        })?;
        Ok(jpeg.map(|bytes| pyo3::types::PyBytes::new(py, &bytes)))
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

    /// The number of commits the index has seen (re-read from disk first): what is derived
    /// from its contents (cached thumbnails, results) is stale once it changes.
    #[getter]
    fn generation(&self, py: Python<'_>) -> PyResult<u64> {
        run_released(py, || {
            let mut index = self.locked();
            index.refresh()?;
            Ok(index.generation())
        })
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
