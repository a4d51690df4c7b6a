"""Checkpoints: the original `.pt`, liteclip's own format, and what goes wrong with them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import liteclip

from conftest import CAT

TEXTS = ["a photo of a cat", "a dog"]


def test_original_pt_loads_every_tensor(nano_ckpt, nano_model):
    state = torch.load(nano_ckpt, map_location="cpu", weights_only=True)
    shapes = nano_model.parameter_shapes()
    assert set(shapes) == set(state)
    for key, tensor in state.items():
        assert list(tensor.shape) == shapes[key], key


def test_save_load_round_trip_is_exact(tmp_path, nano_ckpt, nano_model):
    out = tmp_path / "ckpt"
    nano_model.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    # The saved tensors are bit-identical to the original checkpoint's.
    saved = load_file(out / "model.safetensors")
    original = torch.load(nano_ckpt, map_location="cpu", weights_only=True)
    assert set(saved) == set(original)
    for key in original:
        assert torch.equal(saved[key], original[key]), key
    config = json.loads((out / "config.json").read_text())
    assert config["image"]["dims"] == [32, 64, 128, 256]
    assert config == nano_model.config

    again = liteclip.LiteClip.load(out, device="cpu")
    assert again.config == nano_model.config
    np.testing.assert_array_equal(again.encode_text(TEXTS), nano_model.encode_text(TEXTS))
    np.testing.assert_array_equal(again.encode_image(str(CAT)), nano_model.encode_image(str(CAT)))
    # The weights file alone, with its config beside it.
    alone = liteclip.LiteClip.load(out / "model.safetensors", device="cpu")
    np.testing.assert_array_equal(alone.encode_text(TEXTS), nano_model.encode_text(TEXTS))


def test_save_overwrites_atomically(tmp_path, nano_model):
    out = tmp_path / "ckpt"
    nano_model.save(out)
    nano_model.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_wrapped_state_dicts_load(tmp_path, nano_ckpt, nano_model):
    state = torch.load(nano_ckpt, map_location="cpu", weights_only=True)
    for name, obj in [
        ("lightning", {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}),
        ("ddp", {f"module.{k}": v for k, v in state.items()}),
        ("plain_dict", dict(state)),
    ]:
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        m = liteclip.LiteClip.load(path, device="cpu")
        np.testing.assert_array_equal(m.encode_text(TEXTS), nano_model.encode_text(TEXTS))


def test_half_precision_and_position_ids_buffer(tmp_path, nano_ckpt, nano_model):
    """Older transformers saved `embeddings.position_ids`; fp16 checkpoints are upcast."""
    state = torch.load(nano_ckpt, map_location="cpu", weights_only=True)
    state["text_encoder.backbone.embeddings.position_ids"] = torch.arange(128).unsqueeze(0)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    m = liteclip.LiteClip.load(path, device="cpu")
    np.testing.assert_array_equal(m.encode_text(TEXTS), nano_model.encode_text(TEXTS))
    half = {k: v.half() for k, v in state.items() if v.is_floating_point()}
    half["text_encoder.backbone.embeddings.position_ids"] = state[
        "text_encoder.backbone.embeddings.position_ids"
    ]
    torch.save(half, tmp_path / "half.pt")
    m = liteclip.LiteClip.load(tmp_path / "half.pt", device="cpu")
    assert np.abs(m.encode_text(TEXTS) - nano_model.encode_text(TEXTS)).max() < 1e-2


def test_key_mismatches_are_all_listed(tmp_path, nano_ckpt):
    state = torch.load(nano_ckpt, map_location="cpu", weights_only=True)
    del state["img_projection.ln.weight"]
    del state["text_encoder.backbone.encoder.layer.1.output.dense.bias"]
    state["surprise.weight"] = torch.zeros(3)
    state["txt_projection.proj.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    # The config is given, so that only the key matching is under test.
    config = tmp_path / "nano.json"
    config.write_text(json.dumps(liteclip.LiteClip("liteclip-nano", device="cpu").config))
    with pytest.raises(liteclip.CheckpointError) as info:
        liteclip.LiteClip.load(path, device="cpu", config=str(config))
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, liteclip.LiteClipError)
    message = str(err)
    for key in [
        "img_projection.ln.weight",
        "text_encoder.backbone.encoder.layer.1.output.dense.bias",
        "surprise.weight",
        "txt_projection.proj.bias",
    ]:
        assert key in message
    assert sorted(err.missing_keys) == [
        "img_projection.ln.weight",
        "text_encoder.backbone.encoder.layer.1.output.dense.bias",
    ]
    assert err.unexpected_keys == ["surprise.weight"]
    assert err.mismatched_keys == [("txt_projection.proj.bias", [128], [7])]


def test_checkpoint_of_another_config(nano_ckpt):
    with pytest.raises(liteclip.CheckpointError, match="does not fit the weights") as info:
        liteclip.LiteClip.load(nano_ckpt, device="cpu", config="liteclip")
    assert "text.hidden_size 256 in the config, 128 in the weights" in str(info.value)


def test_a_config_that_does_not_fit_its_weights_is_refused_before_allocating(tmp_path, checkpoint):
    """A config.json asking for a huge model beside small weights: refused by comparing sizes,
    not by allocating the model it describes first (gigabytes here)."""
    import resource

    folder = tmp_path / "huge"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text"]["hidden_size"] = 16384
    config["text"]["num_heads"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(liteclip.CheckpointError, match="text.hidden_size 16384 in the config"):
        liteclip.LiteClip.load(folder, device="cpu")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, grown_mib  # the model described would take over 2 GB
    config["text"]["hidden_size"] = 32768
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(liteclip.ConfigError, match="above the most"):
        liteclip.LiteClip.load(folder, device="cpu")


def test_nan_weights_are_refused(tmp_path, nano_ckpt):
    state = torch.load(nano_ckpt, map_location="cpu", weights_only=True)
    state["img_projection.proj.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(liteclip.CheckpointError, match="img_projection.proj.weight"):
        liteclip.LiteClip.load(tmp_path / "nan.pt", device="cpu")


def test_unreadable_checkpoints(tmp_path, nano_ckpt):
    with pytest.raises(FileNotFoundError):
        liteclip.LiteClip.load(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("certainly not a checkpoint")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(10_000))
    data = nano_ckpt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "no_tensors.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name in ["empty", "text", "random", "truncated", "list", "no_tensors", "tensor"]:
        with pytest.raises(liteclip.CheckpointError) as info:
            liteclip.LiteClip.load(tmp_path / f"{name}.pt", device="cpu")
        assert f"{name}.pt" in str(info.value)
    # A folder without model.safetensors.
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        liteclip.LiteClip.load(tmp_path / "folder")


def test_garbage_config_json(tmp_path, nano_model):
    out = tmp_path / "ckpt"
    nano_model.save(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(liteclip.ConfigError):
        liteclip.LiteClip.load(out)
    shutil.rmtree(out)
