//! Python values to core inputs (images, texts, keyword options as JSON), and core outputs to
//! numpy or plain Python objects. Reading happens here, under the GIL; everything after runs
//! without it.

use std::path::PathBuf;

use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use serde::Serialize;
use tch::Tensor;

use super::errors::IntoPyResult;
use crate::error::Error;
use crate::image::{decode::rgb_from_pixels, ImageInput};

/// What an `images` argument held.
pub enum Images {
    /// One image (path, bytes, pixels or PIL image).
    One(ImageInput),
    /// A list or tuple of images.
    Many(Vec<ImageInput>),
    /// Already preprocessed floats, `(N, 3, S, S)`; `batched` is false for a single `(3, S, S)`.
    Pixels { tensor: Tensor, batched: bool },
}

impl Images {
    /// The core's form, and whether the caller gave a batch (a list, or `(N, 3, S, S)` pixels)
    /// and so expects one result per image rather than a single one.
    pub fn into_core(self) -> (crate::liteclip::Images, bool) {
        use crate::liteclip::Images as Core;
        match self {
            Images::One(image) => (Core::Inputs(vec![image]), false),
            Images::Many(list) => (Core::Inputs(list), true),
            Images::Pixels { tensor, batched } => (Core::Pixels(tensor), batched),
        }
    }
}

const IMAGE_KINDS: &str = "a path (str or os.PathLike), encoded bytes, a PIL.Image, a uint8 \
    numpy array (H, W), (H, W, 3) or (H, W, 4), a float32 array (N, 3, S, S) of preprocessed \
    images, or a list of images";

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn extract_images(obj: &Bound<'_, PyAny>) -> Result<Images, Error> {
    if let Ok(array) = obj.downcast::<PyUntypedArray>() {
        if array.ndim() >= 3 && is_float(array) {
            return float_pixels(obj);
        }
    }
    if is_torch_tensor(obj) {
        let array = obj
            .call_method0("detach")
            .and_then(|t| t.call_method0("cpu"))
            .and_then(|t| t.call_method0("numpy"))
            .map_err(|e| Error::InvalidType(format!("cannot read torch tensor: {e}")))?;
        return extract_images(&array);
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in obj
            .try_iter()
            .map_err(|e| Error::InvalidType(e.to_string()))?
            .enumerate()
        {
            let item = item.map_err(|e| Error::InvalidType(e.to_string()))?;
            let image = extract_one(&item).map_err(|e| e.in_item("images", i))?;
            items.push(image);
        }
        if items.is_empty() {
            return Err(Error::invalid("the list of images is empty"));
        }
        return Ok(Images::Many(items));
    }
    Ok(Images::One(extract_one(obj)?))
}

/// One image: a path, bytes, a uint8 array or a PIL image.
fn extract_one(obj: &Bound<'_, PyAny>) -> Result<ImageInput, Error> {
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__").unwrap_or(false) {
        let path: PathBuf = obj
            .extract()
            .map_err(|e| Error::InvalidType(format!("not a usable path: {e}")))?;
        return Ok(ImageInput::Path(path));
    }
    if let Ok(bytes) = obj.downcast::<PyBytes>() {
        return Ok(ImageInput::Encoded(bytes.as_bytes().to_vec()));
    }
    if let Ok(array) = obj.downcast::<PyUntypedArray>() {
        return uint8_pixels(array);
    }
    if is_pil_image(obj) {
        return pil_pixels(obj);
    }
    Err(Error::InvalidType(format!(
        "expected {IMAGE_KINDS}; got {}",
        type_name(obj)
    )))
}

fn is_float(array: &Bound<'_, PyUntypedArray>) -> bool {
    array.dtype().kind() == b'f'
}

fn is_torch_tensor(obj: &Bound<'_, PyAny>) -> bool {
    obj.get_type()
        .module()
        .map(|m| m.to_string().starts_with("torch"))
        .unwrap_or(false)
        && obj.hasattr("detach").unwrap_or(false)
}

fn is_pil_image(obj: &Bound<'_, PyAny>) -> bool {
    ["mode", "size", "convert", "tobytes"]
        .iter()
        .all(|a| obj.hasattr(*a).unwrap_or(false))
}

fn pil_pixels(obj: &Bound<'_, PyAny>) -> Result<ImageInput, Error> {
    let bad = |e: PyErr| Error::image("PIL image", e.to_string());
    let rgb = obj.call_method1("convert", ("RGB",)).map_err(bad)?;
    let (width, height): (u32, u32) = rgb.getattr("size").and_then(|s| s.extract()).map_err(bad)?;
    let data = rgb.call_method0("tobytes").map_err(bad)?;
    let bytes = data.downcast::<PyBytes>().map_err(|e| bad(e.into()))?;
    Ok(ImageInput::Pixels(rgb_from_pixels(
        bytes.as_bytes(),
        width,
        height,
        3,
    )?))
}

fn uint8_pixels(array: &Bound<'_, PyUntypedArray>) -> Result<ImageInput, Error> {
    let dtype = array.dtype();
    if dtype.kind() != b'u' || dtype.itemsize() != 1 {
        return Err(Error::InvalidType(format!(
            "image arrays must be uint8 (H, W, 3) pixels, or float32 (N, 3, S, S) preprocessed \
             batches; got dtype {dtype} with shape {:?}",
            array.shape()
        )));
    }
    let shape = array.shape().to_vec();
    let (h, w, c) = match shape.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] => (*h, *w, *c),
        _ => {
            return Err(Error::invalid(format!(
                "a uint8 image array must be (H, W) or (H, W, C), got shape {shape:?}"
            )))
        }
    };
    let readonly: PyReadonlyArrayDyn<'_, u8> = array
        .downcast::<numpy::PyArrayDyn<u8>>()
        .map_err(|e| Error::InvalidType(e.to_string()))?
        .readonly();
    // Iterating the ndarray view follows logical (C) order whatever the memory layout.
    let data: Vec<u8> = readonly.as_array().iter().copied().collect();
    let dims = |v: usize| u32::try_from(v).map_err(|_| Error::invalid("image array too large"));
    Ok(ImageInput::Pixels(rgb_from_pixels(
        &data,
        dims(w)?,
        dims(h)?,
        dims(c)?,
    )?))
}

fn float_pixels(obj: &Bound<'_, PyAny>) -> Result<Images, Error> {
    // No copy when the array is already C-contiguous float32; one memcpy into the tensor.
    let array = obj
        .py()
        .import("numpy")
        .and_then(|np| np.call_method1("ascontiguousarray", (obj, "float32")))
        .map_err(|e| Error::InvalidType(format!("cannot read the float array: {e}")))?;
    let readonly: PyReadonlyArrayDyn<'_, f32> = array
        .extract()
        .map_err(|e: PyErr| Error::InvalidType(e.to_string()))?;
    let shape: Vec<i64> = readonly.shape().iter().map(|&d| d as i64).collect();
    let data = readonly
        .as_slice()
        .map_err(|e| Error::InvalidType(format!("float array is not contiguous: {e}")))?;
    let (batched, shape) = match shape.len() {
        3 if shape[0] == 3 => (false, [&[1][..], &shape[..]].concat()),
        3 => {
            return Err(Error::invalid(format!(
                "one preprocessed image is (3, S, S), got {shape:?}; a batch is (N, 3, S, S)"
            )))
        }
        4 => (true, shape),
        _ => {
            return Err(Error::invalid(format!(
                "preprocessed images must be (3, S, S) or (N, 3, S, S), got {shape:?}"
            )))
        }
    };
    let tensor = Tensor::f_from_slice(data)?.f_view(shape.as_slice())?;
    Ok(Images::Pixels { tensor, batched })
}

/// `str`, or a list, tuple or other iterable of `str`; `what` names the argument in errors.
pub fn extract_texts(obj: &Bound<'_, PyAny>, what: &str) -> Result<Vec<String>, Error> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(vec![s.to_string()]);
    }
    let not_texts = || {
        Error::InvalidType(format!(
            "{what} must be a str or a list of str, got {}",
            type_name(obj)
        ))
    };
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<pyo3::types::PyDict>() {
        return Err(not_texts());
    }
    let items = obj.try_iter().map_err(|_| not_texts())?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item.map_err(|e| Error::InvalidType(e.to_string()))?;
        match item.downcast::<PyString>() {
            Ok(s) => out.push(s.to_string()),
            Err(_) => {
                return Err(Error::InvalidType(format!(
                    "{what}[{i}] must be a str, got {}",
                    type_name(&item)
                )))
            }
        }
    }
    Ok(out)
}

/// Borrowed views of owned strings, as the core's text functions take them.
pub fn as_strs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

/// A 2-D float tensor (on the CPU) as a new numpy array.
pub fn to_numpy_2d<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let t = t.to_kind(tch::Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let mut data = vec![0f32; t.numel()];
    let n = data.len();
    t.f_copy_data(&mut data, n)
        .map_err(Error::from)
        .py_err(py)?;
    Ok(PyArray1::from_vec(py, data).reshape(shape)?.into_any())
}

/// Any serialisable core value as Python objects (through JSON: plain dicts, lists, numbers).
pub fn to_python<'py>(py: Python<'py>, value: &impl Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::invalid(format!("cannot convert a result: {e}")))
        .py_err(py)?;
    py.import("json")?.call_method1("loads", (text,))
}

/// A dict of keyword arguments as the JSON object the core's option structs read (paths through
/// `os.fspath`). Non-finite floats are refused here, naming the argument: JSON cannot carry them.
pub fn options_json(options: &Bound<'_, PyDict>) -> PyResult<String> {
    let py = options.py();
    for (key, value) in options.iter() {
        if let Ok(x) = value.extract::<f64>() {
            if !x.is_finite() && !value.is_instance_of::<pyo3::types::PyBool>() {
                return Err(Error::invalid(format!(
                    "{key} must be a finite number, got {x}"
                )))
                .py_err(py);
            }
        }
    }
    let fspath = py.import("os")?.getattr("fspath")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("default", fspath)?;
    py.import("json")?
        .call_method("dumps", (options,), Some(&kwargs))?
        .extract()
}
