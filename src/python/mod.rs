//! The PyO3 bindings: thin wrappers that convert arguments, release the GIL, call the core and
//! convert results and errors back. No model logic lives here.

mod convert;
mod distributed;
mod errors;
mod hub;
mod index;
mod model;
mod pipeline;
mod search;
mod training;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use convert::{as_strs, extract_images, extract_texts};
use errors::{run_released, IntoPyResult};
use numpy::{PyArray1, PyArrayMethods};

use crate::error::Error;
use crate::image::{self as img, preprocess_batch};
use crate::liteclip;
use crate::text::{Padding, TextTokenizer};

/// Applies liteCLIP's image transform (resize shorter side with bicubic antialiasing, center
/// crop, normalise with CLIP's mean/std). One image gives float32 `(3, S, S)`; a list gives
/// `(N, 3, S, S)`. `decode="fast"` decodes large JPEGs at a reduced DCT scale first. A model
/// takes only its own size: `LiteClip.preprocess` makes that (and uses the model's decoding).
#[pyfunction]
#[pyo3(signature = (image, image_size = 224, decode = "exact"))]
fn preprocess<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    image_size: u32,
    decode: &str,
) -> PyResult<Bound<'py, PyAny>> {
    if image_size == 0 {
        return Err(Error::invalid("image_size must be positive")).py_err(py);
    }
    let decode = img::DecodeMode::parse(decode).py_err(py)?;
    preprocess_images(py, image, image_size, decode)
}

/// `preprocess`'s work, also `LiteClip.preprocess` (at the model's size and decoding).
pub(crate) fn preprocess_images<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    image_size: u32,
    decode: img::DecodeMode,
) -> PyResult<Bound<'py, PyAny>> {
    let (list, batched) = match extract_images(image).py_err(py)?.into_core() {
        (liteclip::Images::Inputs(list), batched) => (list, batched),
        (liteclip::Images::Pixels(_), _) => {
            return Err(Error::InvalidType(
                "preprocess takes images, not float arrays (they are already preprocessed)".into(),
            ))
            .py_err(py)
        }
    };
    let n = list.len();
    let data = run_released(py, move || preprocess_batch(&list, image_size, decode))?;
    let s = image_size as usize;
    let shape = if batched {
        vec![n, 3, s, s]
    } else {
        vec![3, s, s]
    };
    Ok(PyArray1::from_vec(py, data).reshape(shape)?.into_any())
}

/// Tokenizes with the BERT uncased vocabulary: [CLS] ... [SEP], truncated to `max_length`.
/// `padding` is "max_length" (as the original liteCLIP, every row `max_length` long) or
/// "longest" (to the longest text). Returns a dict of int64 `(N, L)` arrays: `input_ids`,
/// `attention_mask` and `token_type_ids`.
#[pyfunction]
#[pyo3(signature = (texts, max_length = 128, padding = "max_length"))]
fn tokenize<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyAny>,
    max_length: usize,
    padding: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let texts = extract_texts(texts, "texts").py_err(py)?;
    let padding = Padding::parse(padding).py_err(py)?;
    let batch = run_released(py, move || {
        TextTokenizer::new(max_length)?.encode(&as_strs(&texts), padding)
    })?;
    let shape = [batch.batch, batch.seq_len];
    let out = PyDict::new(py);
    let zeros = vec![0i64; batch.input_ids.len()];
    out.set_item(
        "input_ids",
        PyArray1::from_vec(py, batch.input_ids).reshape(shape)?,
    )?;
    out.set_item(
        "attention_mask",
        PyArray1::from_vec(py, batch.attention_mask).reshape(shape)?,
    )?;
    out.set_item(
        "token_type_ids",
        PyArray1::from_vec(py, zeros).reshape(shape)?,
    )?;
    Ok(out)
}

/// Largest image (width x height) decoded; bigger ones raise `ImageDecodeError` before any
/// pixel is decoded (decompression-bomb guard). Default: Pillow's own limit, 178,956,970.
#[pyfunction]
fn get_max_image_pixels() -> u64 {
    img::max_image_pixels()
}

/// Sets the limit of `get_max_image_pixels` for the whole process.
#[pyfunction]
fn set_max_image_pixels(py: Python<'_>, limit: u64) -> PyResult<()> {
    img::set_max_image_pixels(limit).py_err(py)
}

/// `(width, height)` of an encoded image, from its header alone (nothing is decoded): what
/// `liteclip serve` checks against its pixel limit before decoding an upload.
#[pyfunction]
fn image_dimensions(py: Python<'_>, data: &[u8]) -> PyResult<(u32, u32)> {
    img::decode::dimensions(data, "image").py_err(py)
}

/// Whether this build of libtorch can use CUDA on this machine.
#[pyfunction]
fn cuda_is_available() -> bool {
    tch::Cuda::is_available()
}

/// Panics on purpose inside core work, so tests can check that the boundary turns a panic into
/// a `LiteClipError` (never a `PanicException`).
#[pyfunction]
fn _panic_for_tests(py: Python<'_>) -> PyResult<()> {
    run_released(py, || -> crate::Result<()> {
        panic!("deliberate panic for the tests")
    })
}

/// Makes libtorch fail inside an infallible tensor call (a matrix product of mismatched
/// shapes), so tests can check that such failures read as `TorchError`.
#[pyfunction]
fn _torch_failure_for_tests(py: Python<'_>) -> PyResult<()> {
    run_released(py, || -> crate::Result<()> {
        let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        let _ = a.matmul(&a);
        Ok(())
    })
}

#[pymodule]
#[pyo3(name = "_liteclip")]
fn liteclip_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::PyLiteClip>()?;
    m.add_class::<pipeline::PyZeroShotPipeline>()?;
    m.add_class::<index::PyIndex>()?;
    m.add_class::<search::PySearchHit>()?;
    m.add_function(wrap_pyfunction!(search::parse_query, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(tokenize, m)?)?;
    m.add_function(wrap_pyfunction!(get_max_image_pixels, m)?)?;
    m.add_function(wrap_pyfunction!(set_max_image_pixels, m)?)?;
    m.add_function(wrap_pyfunction!(image_dimensions, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_is_available, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(_torch_failure_for_tests, m)?)?;
    m.add("DEFAULT_MAX_IMAGE_PIXELS", img::DEFAULT_MAX_IMAGE_PIXELS)?;
    // The file name extensions a folder's images are recognised by (lower case, no dot).
    m.add("IMAGE_EXTENSIONS", crate::data::IMAGE_EXTENSIONS.to_vec())?;
    m.add_function(wrap_pyfunction!(training::train_model, m)?)?;
    m.add_function(wrap_pyfunction!(training::evaluate_model, m)?)?;
    m.add_function(wrap_pyfunction!(training::train_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(training::evaluate_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(training::make_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(training::write_shards, m)?)?;
    training::add_dataset_constants(m)?;
    training::add_option_choices(m)?;
    index::add_index_defaults(m)?;
    errors::register(m)?;
    crate::cancel::install(errors::ctrl_c_pressed);
    Ok(())
}
