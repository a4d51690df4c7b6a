//! `train`, `evaluate` and the built-in data set: argument conversion, progress callbacks into
//! Python, and results back as plain dicts. The Python wrappers in `liteclip/training.py` carry
//! the documentation.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::Serialize;

use super::distributed::PyCollectives;
use super::errors::{run_released, IntoPyResult};
use crate::data::synthetic::{self, Layout};
use crate::data::CsvOptions;
use crate::device::parse_device;
use crate::error::Error;
use crate::eval;
use crate::liteclip::LiteClip;
use crate::model::Precision;
use crate::train::optim::{OptimizerKind, Schedule};
use crate::train::{self, EpochRecord, Flow, Observer, Resume, StepInfo, TrainOptions};

/// Any serialisable value as Python objects (through JSON: plain dicts, lists, numbers).
fn to_python<'py>(py: Python<'py>, value: &impl Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

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

#[derive(Serialize)]
struct StepJson {
    epoch: usize,
    step: usize,
    steps: usize,
    global_step: i64,
    loss: Option<f64>,
    lr: f64,
    pairs: usize,
    pairs_per_second: f64,
}

impl Observer for PyObserver {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) -> Flow {
        self.call("epoch_start", |py| {
            Ok(pyo3::types::PyTuple::new(py, [epoch, epochs, steps])?.into_any())
        })
    }

    fn step(&mut self, info: &StepInfo) -> Flow {
        let json = StepJson {
            epoch: info.epoch,
            step: info.step_in_epoch,
            steps: info.steps_in_epoch,
            global_step: info.global_step,
            loss: info.loss,
            lr: info.lr,
            pairs: info.pairs,
            pairs_per_second: info.pairs_per_second,
        };
        self.call("step", |py| to_python(py, &json))
    }

    fn epoch_end(&mut self, record: &EpochRecord) -> Flow {
        self.call("epoch_end", |py| to_python(py, record))
    }

    fn message(&mut self, text: &str) {
        let text = text.to_owned();
        let _ = self.call("message", move |py| Ok(text.into_pyobject(py)?.into_any()));
    }
}

#[derive(Serialize)]
struct TrainResultJson {
    best_checkpoint: Option<PathBuf>,
    last_checkpoint: PathBuf,
    history: Vec<EpochRecord>,
    stopped_early: bool,
    interrupted: bool,
    skipped_images: Vec<(PathBuf, String)>,
    malformed_rows: usize,
    missing_images: usize,
    train_images: usize,
    val_images: usize,
    device: String,
    precision: String,
}

fn csv_options(
    image_column: &str,
    caption_column: &str,
    images_dir: Option<PathBuf>,
) -> CsvOptions {
    CsvOptions {
        image_column: image_column.to_owned(),
        caption_column: caption_column.to_owned(),
        images_dir,
    }
}

/// The training entry point behind `liteclip.train` (see its docstring).
#[pyfunction]
#[pyo3(signature = (
    data, output, observer, model = "liteclip", epochs = 5, batch_size = 64, lr = 2e-4,
    optimizer = "adam", weight_decay = 0.0, warmup_steps = 0, schedule = "constant",
    val_fraction = 0.2, seed = 0, device = "auto", precision = "auto", init = None,
    image_weights = None, text_weights = None, early_stopping_patience = Some(2),
    augment = false, resume = None, image_column = "image", caption_column = "caption",
    images_dir = None, prefetch = 4, max_steps_per_epoch = None, skip_nonfinite = false,
    collectives = None, local_loss = false
))]
#[allow(clippy::too_many_arguments)]
pub fn train_model<'py>(
    py: Python<'py>,
    data: PathBuf,
    output: PathBuf,
    observer: PyObject,
    model: &str,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    optimizer: &str,
    weight_decay: f64,
    warmup_steps: i64,
    schedule: &str,
    val_fraction: f64,
    seed: u64,
    device: &str,
    precision: &str,
    init: Option<PathBuf>,
    image_weights: Option<PathBuf>,
    text_weights: Option<PathBuf>,
    early_stopping_patience: Option<usize>,
    augment: bool,
    resume: Option<&Bound<'py, PyAny>>,
    image_column: &str,
    caption_column: &str,
    images_dir: Option<PathBuf>,
    prefetch: usize,
    max_steps_per_epoch: Option<usize>,
    skip_nonfinite: bool,
    collectives: Option<PyObject>,
    local_loss: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let resume = match resume {
        None => Resume::No,
        Some(v) if v.is_instance_of::<pyo3::types::PyBool>() => {
            if v.extract::<bool>()? {
                Resume::Latest
            } else {
                Resume::No
            }
        }
        Some(v) => Resume::From(v.extract::<PathBuf>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(
                "resume must be True, False or a checkpoint path",
            )
        })?),
    };
    if precision != "auto" {
        Precision::parse(precision).py_err(py)?;
    }
    let options = TrainOptions {
        data,
        csv: csv_options(image_column, caption_column, images_dir),
        output,
        model: model.to_owned(),
        epochs,
        batch_size,
        lr,
        optimizer: OptimizerKind::parse(optimizer).py_err(py)?,
        weight_decay,
        warmup_steps,
        schedule: Schedule::parse(schedule).py_err(py)?,
        val_fraction,
        seed,
        device: device.to_owned(),
        precision: precision.to_owned(),
        init,
        image_weights,
        text_weights,
        early_stopping_patience,
        augment,
        resume,
        prefetch,
        max_steps_per_epoch,
        skip_nonfinite,
        local_loss,
    };
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
    let r = result?;
    let json = TrainResultJson {
        best_checkpoint: r.best_checkpoint,
        last_checkpoint: r.last_checkpoint,
        history: r.history,
        stopped_early: r.stopped_early,
        interrupted: r.interrupted,
        skipped_images: r.skipped_images,
        malformed_rows: r.data_report.malformed_rows,
        missing_images: r.data_report.missing_images,
        train_images: r.train_images,
        val_images: r.val_images,
        device: r.device,
        precision: r.precision,
    };
    to_python(py, &json)
}

/// The evaluation entry point behind `liteclip.evaluate` (see its docstring).
#[pyfunction]
#[pyo3(signature = (
    checkpoint, data = None, split = "val", task = "retrieval", templates = None,
    batch_size = 64, device = "auto", precision = "fp32", val_fraction = None, seed = None,
    image_column = None, caption_column = None, images_dir = None
))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate_model<'py>(
    py: Python<'py>,
    checkpoint: PathBuf,
    data: Option<PathBuf>,
    split: &str,
    task: &str,
    templates: Option<Vec<String>>,
    batch_size: usize,
    device: &str,
    precision: &str,
    val_fraction: Option<f64>,
    seed: Option<u64>,
    image_column: Option<String>,
    caption_column: Option<String>,
    images_dir: Option<PathBuf>,
) -> PyResult<Bound<'py, PyAny>> {
    let task = match eval::Task::parse_name(task).py_err(py)? {
        "retrieval" => eval::Task::Retrieval {
            split: eval::Split::parse(split).py_err(py)?,
            image_column,
            caption_column,
            images_dir,
            val_fraction,
            seed,
        },
        _ => eval::Task::ZeroShot {
            templates: eval::resolve_templates(templates),
        },
    };
    let precision = Precision::parse(precision).py_err(py)?;
    let device = device.to_owned();
    let report = run_released(py, move || {
        let mut model = LiteClip::load(&checkpoint, parse_device(&device)?, None)?;
        model.set_precision(precision);
        eval::evaluate(&model, &checkpoint, data, &task, batch_size)
    })?;
    to_python(py, &report)
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
