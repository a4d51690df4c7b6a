"""Data-parallel training over torch.distributed (gloo, loopback): two processes with batch B
train like one with batch 2B, shards are disjoint, resume works, and a dead rank is named."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import liteclip
from liteclip import datasets
from liteclip.distributed import start_local_ranks

WORKER = textwrap.dedent(
    """
    import json, sys
    import liteclip
    kwargs = json.loads(sys.argv[1])
    result = liteclip.train(**kwargs)
    print("RESULT " + json.dumps({"history": result.history, "device": result.device}))
    """
)


def launch(world: int, kwargs: dict, extra_env: dict | None = None) -> list[subprocess.Popen]:
    """Starts `world` ranks as torchrun would (the env:// variables), each running train()."""
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return start_local_ranks(world, [sys.executable, "-c", WORKER, json.dumps(kwargs)], env)


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[dict]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    return results


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return datasets.make_shapes(tmp_path_factory.mktemp("d") / "data", n_images=48, image_size=32)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A nano model without dropout: dropout masks cannot match between a batch of 2B in one
    process and two batches of B in two processes; everything else must."""
    folder = tmp_path_factory.mktemp("start")
    config = liteclip.LiteClip("liteclip-nano", device="cpu").config
    config["head_dropout"] = 0.0
    config["text"]["hidden_dropout"] = 0.0
    config["text"]["attention_dropout"] = 0.0
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    liteclip.LiteClip(str(folder / "config.json"), device="cpu").save(folder / "model")
    return folder / "model"


def common(data, start, output, batch_size, **more) -> dict:
    base = dict(
        data=str(data),
        output=str(output),
        init=str(start),
        epochs=2,
        batch_size=batch_size,
        lr=1e-3,
        # Constant, so that a run of one epoch resumed for a second is the unbroken run's
        # first half (a cosine decay depends on the number of epochs).
        schedule="constant",
        weight_decay=0.05,
        augment=True,
        device="cpu",
        val_fraction=0.25,
        early_stopping_patience=None,
        max_steps_per_epoch=3,
        progress=False,
    )
    return {**base, **more}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    state = liteclip.LiteClip.load(folder, device="cpu").state_dict()
    return {k: torch.from_numpy(v) for k, v in state.items()}


def assert_same_weights(a: Path, b: Path, tolerance: float = 1e-4) -> None:
    # fp32 tolerance after a few Adam steps of 1e-3: Adam turns the rounding noise of gradients
    # that are zero in exact arithmetic (attention key biases) into steps of up to lr, so
    # weights agree to ~1e-5 while a wrong gradient moves them by ~1e-3.
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(((wa[k] - wb[k]).abs().max().item(), k) for k in wa)
    assert worst[0] < tolerance, f"{worst[1]} differs by {worst[0]}"


@pytest.mark.slow
@pytest.mark.parametrize("local_loss", [False, True])
def test_two_ranks_with_batch_b_end_with_the_weights_of_one_process_with_batch_2b(
    data, start, tmp_path, local_loss
):
    single = liteclip.train(**common(data, start, tmp_path / "single", 16, distributed=False))
    ranks = finish(
        launch(2, common(data, start, tmp_path / "ddp", 8, distributed=True, local_loss=local_loss))
    )
    assert ranks[0]["history"] == ranks[1]["history"]  # every rank returns rank 0's history
    for a, b in zip(ranks[0]["history"], single.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert_same_weights(tmp_path / "ddp" / "last", tmp_path / "single" / "last")


@pytest.mark.slow
def test_gradient_caching_composes_with_ranks(data, start, tmp_path):
    """Two ranks, each with accum_steps=2 micro-batches of 4: one contrastive batch of 16 per
    step, trained like one process with batch 16."""
    single = liteclip.train(**common(data, start, tmp_path / "single", 16, distributed=False))
    kwargs = common(data, start, tmp_path / "ddp", 4, distributed=True, accum_steps=2)
    ranks = finish(launch(2, kwargs))
    for a, b in zip(ranks[0]["history"], single.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert_same_weights(tmp_path / "ddp" / "last", tmp_path / "single" / "last")


@pytest.mark.slow
def test_a_wrong_global_batch_is_detected(data, start, tmp_path):
    """The comparison above can fail: two ranks of B do not match one process of B."""
    liteclip.train(**common(data, start, tmp_path / "single", 8, distributed=False))
    finish(launch(2, common(data, start, tmp_path / "ddp", 8, distributed=True)))
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "ddp" / "last", tmp_path / "single" / "last")


@pytest.mark.slow
def test_only_rank_0_writes_and_a_distributed_run_resumes_like_an_unbroken_one(
    data, start, tmp_path
):
    unbroken = tmp_path / "unbroken"
    finish(launch(2, common(data, start, unbroken, 8, distributed=True)))
    assert sorted(p.name for p in unbroken.iterdir()) == ["best", "last", "metrics.jsonl"]

    broken = tmp_path / "broken"
    finish(launch(2, common(data, start, broken, 8, distributed=True, epochs=1)))
    ranks = finish(launch(2, common(data, start, broken, 8, distributed=True, resume=True)))
    assert [r["epoch"] for r in ranks[0]["history"]] == [1, 2]
    assert_same_weights(broken / "last", unbroken / "last", tolerance=1e-6)


@pytest.mark.slow
def test_shards_over_two_ranks_pad_the_shorter_and_resume_inside_an_epoch_exactly(
    data, start, tmp_path
):
    """48 samples in shards of 5 over 2 ranks x 2 workers: rank 0 streams shards 0,1,4,5,8,9
    (28 samples), rank 1 shards 2,3,6,7 (20), so an epoch is 7 steps of 4 per rank and rank 1
    pads its last two. Both ranks killed after a checkpoint inside epoch 2, then resumed: the
    weights and records of an unbroken run (each rank's streams continue where they were)."""
    datasets.write_shards(data, tmp_path / "shards", samples_per_shard=5)
    shards = f"{tmp_path}/shards/*.tar"
    more = dict(distributed=True, checkpoint_every=2, workers=2, shuffle_buffer=3)

    def kwargs(output):
        args = common(shards, start, tmp_path / output, 4, **more)
        args["max_steps_per_epoch"] = None
        return args

    unbroken = finish(launch(2, kwargs("unbroken")))
    assert unbroken[0]["history"] == unbroken[1]["history"]
    assert [h["step"] for h in unbroken[0]["history"]] == [7, 14]

    state_file = tmp_path / "broken" / "last" / "train_state.json"

    def position():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        partial = state.get("partial_epoch")
        return state["epochs_completed"], partial and partial["steps_done"]

    procs = launch(2, kwargs("broken"))
    try:
        deadline = time.monotonic() + 300
        while (position() or (0, None))[0] < 1 or not position()[1]:
            assert all(p.poll() is None for p in procs), "ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.communicate()
    killed_at = position()
    assert killed_at[0] == 1 and killed_at[1] in (2, 4, 6), killed_at
    cursor = json.loads(state_file.read_text())["partial_epoch"]["shard_cursor"]
    assert cursor["workers"] == 2 and len(cursor["ranks"]) == 2
    resumed = finish(launch(2, {**kwargs("broken"), "resume": True}))
    for a, b in zip(unbroken[0]["history"], resumed[0]["history"]):
        for key in ("epoch", "step", "train_loss", "lr", "logit_scale"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert_same_weights(tmp_path / "broken" / "last", tmp_path / "unbroken" / "last", 1e-6)


@pytest.mark.slow
def test_a_validation_set_smaller_than_the_ranks_is_validated_whole(data, start, tmp_path):
    """Three ranks, two validation images: rank 0 validates the whole set, and every rank
    reports the loss that evaluating the saved model on that set in one process gives."""
    val = datasets.make_shapes(tmp_path / "val", n_images=2, image_size=32, seed=5)
    kwargs = common(data, start, tmp_path / "run", 4, val_data=str(val), epochs=1)
    results = finish(launch(3, kwargs))
    losses = [r["history"][0]["val_loss"] for r in results]
    assert all(loss is not None for loss in losses) and len(set(losses)) == 1
    alone = liteclip.evaluate(
        tmp_path / "run" / "best", data=val, split="all", batch_size=3 * 4, device="cpu"
    )
    assert alone["images"] == 2
    assert abs(alone["loss"] - losses[0]) < 1e-4


@pytest.mark.slow
def test_killing_a_rank_stops_the_others_with_an_error_naming_it(data, start, tmp_path):
    kwargs = common(data, start, tmp_path / "run", 8, distributed=True, epochs=50)
    kwargs["max_steps_per_epoch"] = None
    procs = launch(2, kwargs, extra_env={"LITECLIP_HEARTBEAT_TIMEOUT": "5"})
    try:
        time.sleep(8)  # well into training
        assert procs[0].poll() is None and procs[1].poll() is None
        procs[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode != 0
    assert "DistributedError" in err and "rank 1 is lost" in err, err[-2000:]
    assert took < 30


def test_distributed_without_a_launcher_says_how_to_start_one(data, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(liteclip.DistributedError, match="torchrun"):
        liteclip.train(data, tmp_path / "run", model="liteclip-nano", distributed=True)
    with pytest.raises(ValueError, match="distributed must be"):
        liteclip.train(data, tmp_path / "run", model="liteclip-nano", distributed="yes")
