//! `train`, `evaluate` and the built-in data set. Options arrive as a dict of keyword arguments
//! and become the core's option structs (which hold every default); results go back as plain
//! dicts. The Python wrappers in `liteclip/training.py` carry the documentation.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{options_json, to_python};
use super::distributed::PyCollectives;
use super::errors::{run_released, IntoPyResult};
use crate::data::synthetic::{self, Layout};
use crate::error::Error;
use crate::eval::{self, EvalOptions};
use crate::train::{self, EpochRecord, Flow, Observer, StepInfo, TrainOptions};

/// Forwards progress to a Python object with `epoch_start`, `step`, `epoch_end` and `message`
/// methods, and stops training on Ctrl-C or when a callback raises (the error is re-raised once
/// training has stopped cleanly).
struct PyObserver {
    target: PyObject,
    error: Option<PyErr>,
}

impl PyObserver {
    fn call(
        &mut self,
        method: &str,
        make_args: impl FnOnce(Python<'_>) -> PyResult<Bound<'_, PyAny>>,
    ) -> Flow {
        if self.error.is_some() {
            return Flow::Stop;
        }
        Python::with_gil(|py| {
            let outcome = py
                .check_signals()
                .and_then(|()| make_args(py))
                .and_then(|args| self.target.call_method1(py, method, (args,)).map(|_| ()));
            match outcome {
                Ok(()) => Flow::Continue,
                Err(e) => {
                    self.error = Some(e);
                    Flow::Stop
                }
            }
        })
    }
}

impl Observer for PyObserver {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) -> Flow {
        self.call("epoch_start", |py| {
            Ok(pyo3::types::PyTuple::new(py, [epoch, epochs, steps])?.into_any())
        })
    }

    fn step(&mut self, info: &StepInfo) -> Flow {
        self.call("step", |py| to_python(py, info))
    }

    fn epoch_end(&mut self, record: &EpochRecord) -> Flow {
        self.call("epoch_end", |py| to_python(py, record))
    }

    fn message(&mut self, text: &str) {
        let text = text.to_owned();
        let _ = self.call("message", move |py| Ok(text.into_pyobject(py)?.into_any()));
    }
}

/// The training entry point behind `liteclip.train`: `options` are its keyword arguments (see
/// its docstring); `collectives` a `liteclip.distributed.ProcessGroup` for data-parallel runs.
#[pyfunction]
#[pyo3(signature = (options, observer, collectives = None))]
pub fn train_model<'py>(
    py: Python<'py>,
    options: &Bound<'py, PyDict>,
    observer: PyObject,
    collectives: Option<PyObject>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = TrainOptions::from_json(&options_json(options)?).py_err(py)?;
    let collectives = collectives
        .map(|group| PyCollectives::new(py, group))
        .transpose()?;
    let mut observer = PyObserver {
        target: observer,
        error: None,
    };
    let (result, callback_error) = {
        let observer_ref = &mut observer;
        let comm = collectives.as_ref();
        let result = run_released(py, move || match comm {
            Some(comm) => train::train_distributed(&options, observer_ref, comm),
            None => train::train(&options, observer_ref),
        });
        (result, observer.error.take())
    };
    // A failed collective's own exception (it names the lost rank) wins over the core's
    // summary of it.
    if let Some(error) = collectives.as_ref().and_then(PyCollectives::take_error) {
        if result.is_err() {
            return Err(error);
        }
    }
    if let Some(error) = callback_error {
        return Err(error);
    }
    to_python(py, &result?)
}

/// The default of every training option, as the core defines them (for the checks that keep
/// `liteclip.train`, its stub and the command line in step).
#[pyfunction]
pub fn train_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    to_python(py, &TrainOptions::default())
}

/// The evaluation entry point behind `liteclip.evaluate`: `options` are its keyword arguments.
#[pyfunction]
pub fn evaluate_model<'py>(
    py: Python<'py>,
    options: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = EvalOptions::from_json(&options_json(options)?).py_err(py)?;
    let report = run_released(py, move || eval::evaluate_checkpoint(&options))?;
    to_python(py, &report)
}

/// The default of every evaluation option, as the core defines them.
#[pyfunction]
pub fn evaluate_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    to_python(py, &EvalOptions::default())
}

/// Generates the built-in coloured-shapes data set (see `liteclip.datasets.make_shapes`).
#[pyfunction]
#[pyo3(signature = (path, n_images = 1000, seed = 0, image_size = 64, layout = "captions"))]
pub fn make_shapes(
    py: Python<'_>,
    path: PathBuf,
    n_images: usize,
    seed: u64,
    image_size: u32,
    layout: &str,
) -> PyResult<PathBuf> {
    let layout = match layout {
        "captions" => Layout::Captions,
        "folders" => Layout::Folders,
        other => {
            return Err(Error::invalid(format!(
                "layout must be \"captions\" or \"folders\", got {other:?}"
            )))
            .py_err(py)
        }
    };
    let root = path.clone();
    run_released(py, move || {
        synthetic::generate(&root, n_images, seed, image_size, layout)
    })?;
    Ok(path)
}

/// Writes a captioned data set as WebDataset shards (see `liteclip.datasets.write_shards`).
#[pyfunction]
#[pyo3(signature = (source, output, samples_per_shard = 1000, image_column = "image", caption_column = "caption", images_dir = None, shuffle = true, seed = 0))]
#[allow(clippy::too_many_arguments)]
pub fn write_shards(
    py: Python<'_>,
    source: PathBuf,
    output: PathBuf,
    samples_per_shard: usize,
    image_column: &str,
    caption_column: &str,
    images_dir: Option<PathBuf>,
    shuffle: bool,
    seed: u64,
) -> PyResult<Vec<PathBuf>> {
    let csv = crate::data::CsvOptions {
        image_column: image_column.to_owned(),
        caption_column: caption_column.to_owned(),
        images_dir,
    };
    run_released(py, move || {
        let dataset = crate::data::Dataset::open(&source, &csv)?;
        let order = shuffle.then_some(seed);
        crate::data::shards::write_shards(&dataset, &output, samples_per_shard, order)
    })
}

/// The values each enumerated option takes, from the core's own lists (command-line choices).
pub fn add_option_choices(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use crate::eval::{Split, Task};
    use crate::model::Precision;
    use crate::train::optim::{OptimizerKind, Schedule};
    let py = m.py();
    let train = PyDict::new(py);
    train.set_item("optimizer", OptimizerKind::NAMES.to_vec())?;
    train.set_item("schedule", Schedule::NAMES.to_vec())?;
    train.set_item("monitor", crate::train::Monitor::NAMES.to_vec())?;
    let mut precisions = vec!["auto"];
    precisions.extend(Precision::NAMES);
    train.set_item("precision", precisions)?;
    let decode = crate::image::DecodeMode::NAMES.to_vec();
    train.set_item("decode", decode.clone())?;
    let evaluate = PyDict::new(py);
    evaluate.set_item("decode", decode)?;
    evaluate.set_item("split", Split::NAMES.to_vec())?;
    evaluate.set_item("task", [Task::Retrieval.name(), Task::ZeroShot.name()])?;
    evaluate.set_item("precision", Precision::INFERENCE_NAMES.to_vec())?;
    let choices = PyDict::new(py);
    choices.set_item("train", train)?;
    choices.set_item("evaluate", evaluate)?;
    m.add("OPTION_CHOICES", choices)
}

/// Constants of the built-in data set, for the Python `datasets` module.
pub fn add_dataset_constants(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let d = PyDict::new(m.py());
    d.set_item("classes", synthetic::class_names())?;
    d.set_item("train_templates", synthetic::TRAIN_TEMPLATES.to_vec())?;
    d.set_item("held_out_template", synthetic::HELD_OUT_TEMPLATE)?;
    d.set_item(
        "colors",
        synthetic::COLORS.iter().map(|c| c.0).collect::<Vec<_>>(),
    )?;
    d.set_item("shapes", synthetic::SHAPES.to_vec())?;
    m.add("SHAPES_INFO", d)
}
