//! The one place where core errors become Python exceptions, and where panics are stopped.
//!
//! liteclip's exception classes also derive from the builtin a user would naturally catch
//! (`except ValueError` catches a corrupt image), which `create_exception!` cannot express, so
//! they are made with `type(name, bases, ns)` when the module is first imported.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::{hint_suffix, Error};

struct ExceptionTypes {
    base: Py<PyType>,
    image: Py<PyType>,
    checkpoint: Py<PyType>,
    config: Py<PyType>,
    device: Py<PyType>,
    distributed: Py<PyType>,
    non_finite: Py<PyType>,
    torch: Py<PyType>,
    bad_index: Py<PyType>,
    index_locked: Py<PyType>,
}

static TYPES: GILOnceCell<ExceptionTypes> = GILOnceCell::new();

fn make_type<'py>(
    py: Python<'py>,
    name: &str,
    bases: Vec<Bound<'py, PyAny>>,
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "liteclip")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let t = py
        .import("builtins")?
        .getattr("type")?
        .call1((name, bases, ns))?;
    Ok(t.downcast_into::<PyType>()?.unbind())
}

fn types(py: Python<'_>) -> PyResult<&ExceptionTypes> {
    TYPES.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let exception = builtins.getattr("Exception")?;
        let value_error = builtins.getattr("ValueError")?;
        let runtime_error = builtins.getattr("RuntimeError")?;
        let floating_point_error = builtins.getattr("FloatingPointError")?;
        let timeout_error = builtins.getattr("TimeoutError")?;
        let base = make_type(
            py,
            "LiteClipError",
            vec![exception],
            "Base class of every error liteclip raises on its own account.",
        )?;
        let sub = |name: &str, builtin: &Bound<'_, PyAny>, doc: &str| {
            make_type(
                py,
                name,
                vec![base.bind(py).clone().into_any(), builtin.clone()],
                doc,
            )
        };
        Ok(ExceptionTypes {
            image: sub(
                "ImageDecodeError",
                &value_error,
                "An input is not a decodable image, or is refused (empty, too many pixels).",
            )?,
            checkpoint: sub(
                "CheckpointError",
                &value_error,
                "A checkpoint cannot be read or does not fit the model config. A key mismatch \
                 lists the keys in `missing_keys`, `unexpected_keys` and `mismatched_keys`.",
            )?,
            config: sub(
                "ConfigError",
                &value_error,
                "A model config is inconsistent or names an unknown preset.",
            )?,
            device: sub(
                "DeviceError",
                &runtime_error,
                "A device was asked for that this machine does not have.",
            )?,
            distributed: sub(
                "DistributedError",
                &runtime_error,
                "A data-parallel training rank died, stopped answering, sent something \
                 unreadable, or was set up wrongly.",
            )?,
            non_finite: sub(
                "NonFiniteLossError",
                &floating_point_error,
                "Training diverged: the loss became NaN or infinite. The last completed \
                 epoch's checkpoint is kept; lower the learning rate, change the precision, or \
                 pass skip_nonfinite=True.",
            )?,
            torch: sub(
                "TorchError",
                &runtime_error,
                "libtorch reported a failure (out of memory, a CUDA error, a kernel that \
                 refused its inputs).",
            )?,
            bad_index: sub(
                "BadIndexError",
                &value_error,
                "A photo index cannot be used: the folder is not an index, is damaged, was \
                 written by a newer liteclip, or was made from other weights or another folder.",
            )?,
            index_locked: sub(
                "IndexLockedError",
                &timeout_error,
                "Another process is writing this photo index; the wait for it ran out.",
            )?,
            base,
        })
    })
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let t = types(m.py())?;
    for cls in [
        &t.base,
        &t.image,
        &t.checkpoint,
        &t.config,
        &t.device,
        &t.distributed,
        &t.non_finite,
        &t.torch,
        &t.bad_index,
        &t.index_locked,
    ] {
        let cls = cls.bind(m.py());
        m.add(cls.name()?, cls)?;
    }
    Ok(())
}

fn new_err(cls: &Py<PyType>, py: Python<'_>, message: String) -> PyErr {
    match cls.bind(py).call1((message.clone(),)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// Converts a core error into the matching Python exception.
pub fn to_py_err(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    let t = match types(py) {
        Ok(t) => t,
        Err(e) => return e,
    };
    match error {
        // Python's own form: "[Errno 2] No such file or directory (hint): 'path'".
        Error::FileNotFound { path, hint } => PyFileNotFoundError::new_err((
            2,
            format!("No such file or directory{}", hint_suffix(&hint)),
            path.display().to_string(),
        )),
        Error::Io { path, source } => match source.raw_os_error() {
            Some(code) => PyOSError::new_err((code, message, path.display().to_string())),
            None => PyOSError::new_err(message),
        },
        Error::ImageDecode { .. } => new_err(&t.image, py, message),
        Error::Checkpoint { .. } => new_err(&t.checkpoint, py, message),
        Error::KeyMismatch {
            missing,
            unexpected,
            mismatched,
            ..
        } => {
            let err = new_err(&t.checkpoint, py, message);
            let value = err.value(py);
            let mismatched: Vec<(String, Vec<i64>, Vec<i64>)> = mismatched
                .into_iter()
                .map(|m| (m.key, m.expected, m.found))
                .collect();
            // Attributes are a convenience; failing to set them must not hide the error.
            let _ = value.setattr("missing_keys", missing);
            let _ = value.setattr("unexpected_keys", unexpected);
            let _ = value.setattr("mismatched_keys", mismatched);
            err
        }
        Error::Config(_) => new_err(&t.config, py, message),
        Error::InvalidArgument(_) => PyValueError::new_err(message),
        Error::InvalidType(_) => PyTypeError::new_err(message),
        Error::Device(_) => new_err(&t.device, py, message),
        Error::Distributed(_) => new_err(&t.distributed, py, message),
        Error::Interrupted => PyKeyboardInterrupt::new_err(message),
        Error::NonFiniteLoss(_) => new_err(&t.non_finite, py, message),
        Error::Torch(_) => new_err(&t.torch, py, message),
        Error::BadIndex { .. } => new_err(&t.bad_index, py, message),
        Error::IndexLocked(_) => new_err(&t.index_locked, py, message),
    }
}

/// The core's cancellation poll (see [`crate::cancel`]): runs Python's signal handlers, and a
/// pending Ctrl-C stops the core's work at its next chunk with [`Error::Interrupted`], which
/// becomes `KeyboardInterrupt` again here.
pub fn ctrl_c_pressed() -> bool {
    Python::with_gil(|py| py.check_signals()).is_err()
}

/// Runs core work with the GIL released, turning errors into exceptions and panics into a
/// `LiteClipError` instead of a `PanicException` that would escape `except Exception`.
pub fn run_released<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> crate::Result<T> + Send,
{
    match py.allow_threads(|| catch_unwind(AssertUnwindSafe(work))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(to_py_err(py, error)),
        Err(panic) => Err(panic_to_py_err(py, panic)),
    }
}

fn panic_to_py_err(py: Python<'_>, panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    // libtorch failing inside a forward (out of memory, a CUDA error) is not a bug of ours.
    if let Some(error) = crate::Error::from_torch_panic(&what) {
        return to_py_err(py, error);
    }
    match types(py) {
        Ok(t) => new_err(
            &t.base,
            py,
            format!("internal error in liteclip (please report it): {what}"),
        ),
        Err(e) => e,
    }
}

/// `?` on core results inside bindings that hold the GIL.
pub trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for crate::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py_err(py, e))
    }
}
