//! The core's [`Collectives`] on a Python object that drives `torch.distributed`
//! (`liteclip/distributed.py`). Tensors cross as `torch.Tensor`s that share their storage with
//! the tch tensors (pyo3-tch): the collectives work in place on the trainer's own buffers, with
//! no copies across the boundary.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::train::distributed::Collectives;

pub struct PyCollectives {
    group: PyObject,
    rank: usize,
    world_size: usize,
    /// The Python exception of a failed collective (naming a lost rank, a timeout, Ctrl-C),
    /// re-raised as it is once training has unwound.
    error: Mutex<Option<PyErr>>,
}

impl PyCollectives {
    pub fn new(py: Python<'_>, group: PyObject) -> PyResult<Self> {
        let rank = group.getattr(py, "rank")?.extract(py)?;
        let world_size = group.getattr(py, "world_size")?.extract(py)?;
        Ok(PyCollectives {
            group,
            rank,
            world_size,
            error: Mutex::new(None),
        })
    }

    /// The Python exception behind the last failure, if any.
    pub fn take_error(&self) -> Option<PyErr> {
        self.error.lock().ok()?.take()
    }

    fn call<T>(
        &self,
        method: &str,
        make_args: impl FnOnce(Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyTuple>>,
        convert: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> Result<T> {
        Python::with_gil(|py| {
            let outcome = make_args(py)
                .and_then(|args| self.group.bind(py).call_method1(method, args))
                .and_then(|value| convert(&value));
            outcome.map_err(|e| {
                let message = format!("torch.distributed {method} failed: {e}");
                if let Ok(mut slot) = self.error.lock() {
                    slot.get_or_insert(e);
                }
                Error::Distributed(message)
            })
        })
    }
}

fn wrap<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
    pyo3::types::PyTuple::new(py, [PyTensor(t.shallow_clone()).into_pyobject(py)?])
}

impl Collectives for PyCollectives {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        self.call(
            "all_gather",
            |py| wrap(py, local),
            |out| Ok(out.extract::<PyTensor>()?.0),
        )
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<()> {
        self.call("all_reduce_sum", |py| wrap(py, tensor), |_| Ok(()))
    }

    fn broadcast_from_main(&self, text: Option<String>) -> Result<String> {
        self.call(
            "broadcast_from_main",
            |py| pyo3::types::PyTuple::new(py, [text.into_pyobject(py)?]),
            |out| out.extract::<String>(),
        )
    }
}
