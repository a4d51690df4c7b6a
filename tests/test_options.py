"""Every option is defined once, in the Rust core: the Python signatures, their docstrings and
the command line are checked against the core's defaults here, so an option cannot be added,
renamed or re-defaulted in one place only."""

from __future__ import annotations

import dataclasses
import inspect
import os

import pytest

import liteclip
from liteclip import _liteclip, cli, datasets
from liteclip.cli import _argument_docs
from liteclip.training import _PYTHON_ONLY

APIS = {
    "train": (liteclip.train, _liteclip.train_defaults, set(_PYTHON_ONLY)),
    "evaluate": (liteclip.evaluate, _liteclip.evaluate_defaults, set()),
}


def python_defaults(function):
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def required(function):
    return {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.default is inspect.Parameter.empty
    }


@pytest.mark.parametrize("api", sorted(APIS))
def test_python_signature_has_every_core_option_with_the_core_default(api):
    function, core_defaults, python_only = APIS[api]
    core = core_defaults()
    ours = python_defaults(function)
    assert set(ours) | required(function) == set(core) | python_only
    for name, value in ours.items():
        if name in python_only:
            continue
        assert value == core[name], (
            f"{api}({name}=...) defaults to {value!r}, the core to {core[name]!r}"
        )


@pytest.mark.parametrize("api", sorted(APIS))
def test_docstring_documents_every_argument(api):
    function = APIS[api][0]
    documented = set(_argument_docs(function))
    assert documented == set(inspect.signature(function).parameters)


def parse(*argv):
    return cli._parser().parse_args(list(map(str, argv)))


def test_cli_train_defaults_are_the_core_defaults():
    args = parse("train", "DATA")
    passed = cli.train_arguments(args)
    core = _liteclip.train_defaults()
    for name, value in passed.items():
        if name in _PYTHON_ONLY:
            continue
        assert value == core[name], f"--{name}: {value!r} vs the core's {core[name]!r}"
    assert set(passed) | {"data"} == set(core) | set(_PYTHON_ONLY)


def test_cli_evaluate_defaults_are_the_core_defaults():
    passed = cli.evaluate_arguments(parse("evaluate", "CKPT"))
    core = _liteclip.evaluate_defaults()
    assert set(passed) | {"checkpoint"} == set(core)
    for name, value in passed.items():
        assert value == core[name], f"--{name}: {value!r} vs the core's {core[name]!r}"


def test_cli_flags_reach_the_api():
    """The drifts that were: no --prefetch, no --skip-nonfinite, --patience 0 meaning 'off'."""
    passed = cli.train_arguments(
        parse(
            "train",
            "DATA",
            "--prefetch",
            9,
            "--skip-nonfinite",
            "--patience",
            "none",
            "--max-steps-per-epoch",
            3,
            "--no-progress",
            "--augment",
            "--lr",
            "1e-3",
            "--images-dir",
            "imgs",
            "--resume",
        )
    )
    assert passed["prefetch"] == 9 and passed["skip_nonfinite"] is True
    assert passed["early_stopping_patience"] is None
    assert passed["max_steps_per_epoch"] == 3 and passed["progress"] is False
    assert passed["augment"] is True and passed["lr"] == 1e-3
    assert passed["images_dir"] == "imgs" and passed["resume"] is True
    assert cli.train_arguments(parse("train", "D", "--patience", 4))["early_stopping_patience"] == 4
    zero_shot = cli.evaluate_arguments(
        parse("evaluate", "C", "--zero-shot", "F", "--templates", "a {}", "--precision", "fp16")
    )
    assert zero_shot["task"] == "zero-shot" and zero_shot["data"] == "F"
    assert zero_shot["templates"] == ["a {}"] and zero_shot["precision"] == "fp16"
    # The deprecated singular still works, and mixes with the plural.
    both = cli.evaluate_arguments(
        parse("evaluate", "C", "--template", "a {}", "--templates", "b {}")
    )
    assert both["templates"] == ["a {}", "b {}"]
    predict = cli._parser().parse_args(["predict", "x.jpg", "a", "b", "--template", "a {}"])
    assert predict.hypothesis_template == "a {}"


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.jpg", "a", "b", "--precision", "fp16"],
        ["search", "q", "--index", "lib.lcx", "--precision", "bf16"],
        ["index", "photos", "--index", "lib.lcx", "--precision", "fp16"],
        ["embed", "src", "--checkpoint", "c", "--precision", "fp16"],
        ["predict", "x.jpg", "a", "b", "--precision", "int8"],
    ],
)
def test_every_inference_command_takes_every_precision(argv):
    assert parse(*argv).precision == argv[-1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return datasets.make_shapes(tmp_path_factory.mktemp("d") / "data", n_images=8, image_size=32)


def test_patience_zero_is_refused_the_same_way_by_the_api_and_the_cli(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience must be at least 1"):
        liteclip.train(tiny_data, tmp_path / "a", early_stopping_patience=0, progress=False)
    code = cli.main(["train", str(tiny_data), "--output", str(tmp_path / "b"), "--patience", "0"])
    assert code == cli.EXIT_ERROR
    assert not (tmp_path / "b" / "last").exists()


def test_bad_option_values_name_the_option(tiny_data, tmp_path):
    with pytest.raises(TypeError, match="epochs"):
        liteclip.train(tiny_data, tmp_path, epochs="five", progress=False)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        liteclip.train(tiny_data, tmp_path, lr=float("nan"), progress=False)
    with pytest.raises(ValueError, match="schedule"):
        liteclip.train(tiny_data, tmp_path, schedule="linear", progress=False)
    with pytest.raises(ValueError, match="split"):
        liteclip.evaluate(tmp_path, split="test")
    with pytest.raises(ValueError, match="task"):
        liteclip.evaluate(tmp_path, task="captioning")


def test_the_result_type_has_exactly_the_core_result_fields(tiny_data, tmp_path):
    """The Python TrainResult mirrors the core's result: a field added to one only fails here."""

    class Quiet:
        def __getattr__(self, name):
            return lambda *args: None

    raw = _liteclip.train_model(
        {
            "data": os.fspath(tiny_data),
            "output": os.fspath(tmp_path / "run"),
            "model": "liteclip-nano",
            "epochs": 1,
            "batch_size": 4,
            "device": "cpu",
            "val_fraction": 0.0,
            "max_steps_per_epoch": 1,
        },
        Quiet(),
    )
    fields = {f.name for f in dataclasses.fields(liteclip.TrainResult)}
    assert set(raw) == fields
    result = liteclip.TrainResult._from_core(raw)
    assert result.device == "cpu" and result.precision == "fp32"
    assert len(result.history) == 1 and result.best_checkpoint == result.last_checkpoint


def test_enumerated_options_offer_the_core_values():
    assert _liteclip.OPTION_CHOICES["train"]["optimizer"] == ["adam", "adamw"]
    with pytest.raises(SystemExit) as exit_:
        parse("train", "D", "--schedule", "linear")
    assert exit_.value.code == cli.EXIT_USAGE
    for value in _liteclip.OPTION_CHOICES["train"]["precision"]:
        assert parse("train", "D", "--precision", value).precision == value
