//! What `Index.search` takes and gives: queries of weighted terms, the filter and paging
//! keywords, and `SearchHit`, a result that unpacks as `(path, score)` and carries the photo's
//! date, camera and size.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use super::convert::{extract_images, to_python};
use crate::error::{Error, Result};
use crate::image::photo_info::PhotoInfo;
use crate::index::query::{parse_terms, Term, Weighted};
use crate::index::{Hit, PhotoFilter, PhotoIndex, SearchOptions, SortBy};

/// One search result. Unpacks and compares as the pair `(path, score)`; the photo's metadata is
/// in attributes, and `to_dict()` gives all of it (the JSON form of `liteclip search --json`).
#[pyclass(name = "SearchHit", module = "liteclip", frozen)]
pub struct PySearchHit {
    hit: Hit,
}

impl PySearchHit {
    pub fn new(hit: Hit) -> Self {
        PySearchHit { hit }
    }

    fn path_text(&self) -> String {
        self.hit.path.to_string_lossy().into_owned()
    }

    fn info(&self) -> Option<&PhotoInfo> {
        self.hit.info.as_ref()
    }

    /// `(path, score)` as a Python tuple.
    fn pair<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        (self.path_text(), self.hit.score).into_pyobject(py)
    }
}

/// The JSON form of a hit.
#[derive(serde::Serialize)]
struct HitRecord<'a> {
    path: String,
    score: f32,
    id: u64,
    taken: Option<&'a str>,
    taken_from: Option<crate::image::photo_info::TakenFrom>,
    camera: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    gps: Option<[f64; 2]>,
    file_size: u64,
}

#[pymethods]
impl PySearchHit {
    /// Absolute path of the photo.
    #[getter]
    fn path(&self) -> String {
        self.path_text()
    }

    /// Cosine similarity with the query.
    #[getter]
    fn score(&self) -> f32 {
        self.hit.score
    }

    /// Names the indexed file (for `Index.thumbnail`); the same while the file is unchanged.
    #[getter]
    fn id(&self) -> u64 {
        self.hit.id
    }

    /// When the photo was taken, ISO 8601 (EXIF date, else the file's modification time).
    #[getter]
    fn taken(&self) -> Option<String> {
        self.info().map(|i| i.taken.clone())
    }

    /// Where `taken` came from: "exif_original", "exif_datetime" or "file_time".
    #[getter]
    fn taken_from(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        self.info()
            .map(|i| to_python(py, &i.taken_from).map(Bound::unbind))
            .transpose()
    }

    /// Camera make and model, as one string.
    #[getter]
    fn camera(&self) -> Option<String> {
        self.info().and_then(PhotoInfo::camera)
    }

    /// Pixel width as shown (EXIF orientation applied).
    #[getter]
    fn width(&self) -> Option<u32> {
        self.info().map(|i| i.width)
    }

    /// Pixel height as shown.
    #[getter]
    fn height(&self) -> Option<u32> {
        self.info().map(|i| i.height)
    }

    /// `(latitude, longitude)` in degrees, when the photo records where it was taken.
    #[getter]
    fn gps(&self) -> Option<(f64, f64)> {
        self.info().and_then(|i| i.gps).map(|[lat, lon]| (lat, lon))
    }

    /// Bytes.
    #[getter]
    fn file_size(&self) -> u64 {
        self.hit.file_size
    }

    /// Everything above as a dict (JSON-ready).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let info = self.info();
        to_python(
            py,
            &HitRecord {
                path: self.path_text(),
                score: self.hit.score,
                id: self.hit.id,
                taken: info.map(|i| i.taken.as_str()),
                taken_from: info.map(|i| i.taken_from),
                camera: info.and_then(PhotoInfo::camera),
                width: info.map(|i| i.width),
                height: info.map(|i| i.height),
                gps: info.and_then(|i| i.gps),
                file_size: self.hit.file_size,
            },
        )
    }

    fn __len__(&self) -> usize {
        2
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // Python's own tuple indexing: negative indices, slices, its IndexError.
        self.pair(py)?.as_any().get_item(index)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.pair(py)?.try_iter().map(Bound::into_any)
    }

    fn __richcmp__(
        &self,
        other: &Bound<'_, PyAny>,
        op: pyo3::basic::CompareOp,
    ) -> PyResult<PyObject> {
        let py = other.py();
        let pair = match other.downcast::<PySearchHit>() {
            Ok(hit) => Some((hit.get().path_text(), hit.get().hit.score)),
            Err(_) => other.extract::<(String, f32)>().ok(),
        };
        let Some(pair) = pair else {
            return Ok(py.NotImplemented());
        };
        let equal = pair == (self.path_text(), self.hit.score);
        match op {
            pyo3::basic::CompareOp::Eq => {
                Ok(equal.into_pyobject(py)?.to_owned().into_any().unbind())
            }
            pyo3::basic::CompareOp::Ne => {
                Ok((!equal).into_pyobject(py)?.to_owned().into_any().unbind())
            }
            _ => Ok(py.NotImplemented()),
        }
    }

    fn __repr__(&self) -> String {
        let mut out = format!(
            "SearchHit(path={:?}, score={:.4}",
            self.path_text(),
            self.hit.score
        );
        if let Some(info) = self.info() {
            out += &format!(", taken={:?}", info.taken);
            if let Some(camera) = info.camera() {
                out += &format!(", camera={camera:?}");
            }
        }
        out + ")"
    }
}

/// A query from Python: a `str` is a text; a `pathlib.Path`, bytes, a PIL image or an array is
/// an image; `(term, weight)` weights a term; a list combines terms. (A path to a photo the
/// index holds is swapped for its stored row later: [`use_indexed_rows`].)
///
/// [`use_indexed_rows`]: crate::index::query::use_indexed_rows
pub fn extract_query(obj: &Bound<'_, PyAny>) -> Result<Vec<Weighted>> {
    if let Ok(list) = obj.downcast::<PyList>() {
        if list.is_empty() {
            return Err(Error::invalid(
                "the query is an empty list: give terms (texts, images, (term, weight) pairs)",
            ));
        }
        return list
            .iter()
            .enumerate()
            .map(|(i, item)| extract_term(&item).map_err(|e| e.in_item("query", i)))
            .collect();
    }
    Ok(vec![extract_term(obj)?])
}

fn extract_term(obj: &Bound<'_, PyAny>) -> Result<Weighted> {
    if let Ok(pair) = obj.downcast::<PyTuple>() {
        if pair.len() == 2 {
            if let Ok(weight) = pair.get_item(1).and_then(|w| w.extract::<f32>()) {
                if !weight.is_finite() {
                    return Err(Error::invalid("a term's weight must be a finite number"));
                }
                let term = pair
                    .get_item(0)
                    .map_err(|e| Error::InvalidType(e.to_string()))?;
                let inner = extract_term(&term)?;
                return Ok(Weighted {
                    term: inner.term,
                    weight: weight * inner.weight,
                });
            }
        }
    }
    let term = if let Ok(text) = obj.downcast::<PyString>() {
        let text = text.to_string();
        if text.trim().is_empty() {
            return Err(Error::invalid(
                "the query is empty: give words to search for (or an image)",
            ));
        }
        Term::Text(text)
    } else {
        let (images, batched) = extract_images(obj)?.into_core();
        if batched {
            return Err(Error::InvalidType(
                "a query term is one image; to combine several, give a list of terms".into(),
            ));
        }
        Term::Image(images)
    };
    Ok(Weighted { term, weight: 1.0 })
}

/// Splits a query written in rclip's form into `(term, weight)` pairs: terms joined by `+`
/// and `-` (each a separate word), `W:term` weighting a term, e.g.
/// `parse_query('2:a dog + beach.jpg - people')` gives
/// `[('a dog', 2.0), ('beach.jpg', 1.0), ('people', -1.0)]`. Takes a str (split on spaces) or
/// a list of words (as a shell splits them). Whether a term is an image is the caller's call
/// (`liteclip search` takes a term that names an existing file as an image).
#[pyfunction]
pub fn parse_query(py: Python<'_>, query: &Bound<'_, PyAny>) -> PyResult<Vec<(String, f32)>> {
    use super::errors::IntoPyResult;
    let words: Vec<String> = if let Ok(text) = query.downcast::<PyString>() {
        text.to_string()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    } else {
        query
            .extract()
            .map_err(|_| Error::InvalidType("parse_query takes a str or a list of str".into()))
            .py_err(py)?
    };
    let tokens = parse_terms(&words).py_err(py)?;
    Ok(tokens.into_iter().map(|t| (t.text, t.weight)).collect())
}

/// The filter and paging keywords of `Index.search` / `search_many`, as given.
pub struct SearchKeywords {
    pub k: usize,
    pub offset: usize,
    pub after: Option<String>,
    pub before: Option<String>,
    /// Absolute (under the root) or relative to the root.
    pub under: Option<PathBuf>,
    pub camera: Option<String>,
    pub min_score: Option<f32>,
    pub sort: String,
}

impl SearchKeywords {
    /// The core's options, checked, with `under` made relative to `index`'s root.
    pub fn options(&self, index: &PhotoIndex) -> Result<SearchOptions> {
        let under = self
            .under
            .as_ref()
            .map(|u| index.folder_under_root(u))
            .transpose()?;
        let options = SearchOptions {
            top_k: self.k,
            offset: self.offset,
            filter: PhotoFilter::new(
                self.after.as_deref(),
                self.before.as_deref(),
                under.as_deref(),
                self.camera.as_deref(),
            )?,
            min_score: self.min_score,
            sort: SortBy::parse(&self.sort)?,
        };
        options.check()?;
        Ok(options)
    }
}
