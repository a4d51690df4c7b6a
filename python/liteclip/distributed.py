"""Data-parallel training on ``torch.distributed``: the process group and the three collective
calls the Rust trainer makes per step.

The trainer (``src/train/distributed.rs``) computes; this module only moves its tensors between
processes. Tensors arrive as ``torch.Tensor`` views of the trainer's own buffers (no copies),
and the collectives work on them in place: NCCL on GPUs, gloo on CPUs, as torchrun set up.

Failure handling: every rank bumps a heartbeat counter in the rendezvous store each second.
When a collective fails (gloo notices a dead peer at once; NCCL after the group's timeout), the
error names the ranks whose heartbeat stopped. Waits for rank 0 at the end of an epoch (it alone
validates and saves, which can take long) go through the store and watch the heartbeats, so
they need no deadline and still end when rank 0 dies.
"""

from __future__ import annotations

import datetime
import itertools
import os
import socket
import subprocess
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from ._liteclip import DistributedError

#: Seconds without a heartbeat after which a rank counts as lost (``LITECLIP_HEARTBEAT_TIMEOUT``
#: overrides it).
HEARTBEAT_TIMEOUT = 30.0
_BEAT_SECONDS = 1.0
# Every training run in a process gets its own key space in the store; ranks run the same
# sequence of trainings, so the numbers agree.
_runs = itertools.count()


def requested(distributed: bool | str) -> bool:
    """Whether ``train(distributed=...)`` asks for data parallelism (``"auto"``: when the
    process was started as one of several, ``WORLD_SIZE > 1``)."""
    if distributed == "auto":
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    if isinstance(distributed, bool):
        return distributed
    raise ValueError(f'distributed must be True, False or "auto", got {distributed!r}')


def rank_device(device: str) -> str:
    """The device of this rank: ``"cuda"`` (or ``"auto"`` on a GPU machine) becomes
    ``cuda:LOCAL_RANK``, one GPU per process, as torchrun lays them out."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def local_rank_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun gives rank ``rank`` of ``world_size`` processes on this machine,
    for starting ranks without torchrun (tests, benchmarks, notebooks); ``port`` is the
    rendezvous port, the same for all."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def free_port() -> int:
    """A TCP port free on this machine now, for the rendezvous of local ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ranks(
    world_size: int, command: list[str], env: dict[str, str] | None = None
) -> list[subprocess.Popen]:
    """Starts ``command`` as ranks 0..world_size-1 on this machine, the way torchrun would but
    without its supervision (tests, benchmarks): text-mode pipes for stdout and stderr, the
    environment plus ``env`` plus the rank's variables."""
    port = free_port()
    return [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), **local_rank_environment(rank, world_size, port)},
        )
        for rank in range(world_size)
    ]


class ProcessGroup:
    """One rank's view of the data-parallel group, passed to the Rust trainer.

    Joins the default process group when the process has not (``env://``: what torchrun sets,
    or ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` by hand), with NCCL for a
    CUDA device and gloo otherwise, and leaves it again in :meth:`close`.
    """

    def __init__(self, device: str, timeout: float):
        if not dist.is_available():
            raise DistributedError("this build of torch has no torch.distributed")
        self._created = False
        if not dist.is_initialized():
            needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
            missing = [name for name in needed if name not in os.environ]
            if missing:
                raise DistributedError(
                    "distributed training needs a process started by torchrun (for example "
                    "`torchrun --nproc_per_node=2 -m liteclip train ...`) or the variables "
                    f"{', '.join(needed)}; missing: {', '.join(missing)}"
                )
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(torch.device(device))
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
            self._created = True
        self.rank: int = dist.get_rank()
        self.world_size: int = dist.get_world_size()
        self.backend: str = str(dist.get_backend())
        self._store = dist.PrefixStore(
            f"liteclip/{next(_runs)}/", dist.distributed_c10d._get_default_store()
        )
        self._broadcasts = 0
        self._heartbeat_timeout = float(
            os.environ.get("LITECLIP_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT)
        )
        # Last value seen of each rank's heartbeat counter, and when it last changed.
        self._seen: dict[int, tuple[int, float]] = {}
        self._store_error: Exception | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(
            target=self._beat_loop, name="liteclip-heartbeat", daemon=True
        )
        self._thread.start()

    # -- the collectives the trainer calls ---------------------------------------------------

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's ``local`` stacked along dimension 0, in rank order."""
        out = local.new_empty((self.world_size * local.shape[0], *local.shape[1:]))
        self._run("all_gather", dist.all_gather_into_tensor, out, local.contiguous())
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        """Sums ``tensor`` over the ranks, in place."""
        self._run("all_reduce", dist.all_reduce, tensor)

    def broadcast_from_main(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank; the others wait for it as long as rank 0 lives."""
        key = f"broadcast/{self._broadcasts}"
        self._broadcasts += 1
        if self.rank == 0:
            self._store_call(lambda: self._store.set(key, text or ""))
            return text or ""
        while not self._store_call(lambda: self._store.check([key])):
            lost = self._lost_ranks()
            if lost:
                raise DistributedError(
                    self._lost_message(lost, "while waiting for rank 0's epoch results")
                )
            time.sleep(0.05)
        return self._store_call(lambda: self._store.get(key)).decode()

    # -- liveness ----------------------------------------------------------------------------

    def _beat(self) -> None:
        """Bumps this rank's counter and reads everyone's."""
        self._store.add(f"heartbeat/{self.rank}", 1)
        # add(key, 0) reads without blocking on a key that a late rank has not written yet.
        values = [self._store.add(f"heartbeat/{r}", 0) for r in range(self.world_size)]
        now = time.monotonic()
        with self._lock:
            for r, value in enumerate(values):
                if self._seen.get(r, (None, 0.0))[0] != value:
                    self._seen[r] = (value, now)

    def _beat_loop(self) -> None:
        while not self._stop.wait(_BEAT_SECONDS):
            try:
                self._beat()
            except Exception as e:  # the store is gone: its host (rank 0 or torchrun) died
                self._store_error = e
                return

    def _lost_ranks(self) -> list[int]:
        if self._store_error is not None:
            return [0]
        now = time.monotonic()
        with self._lock:
            return sorted(
                r
                for r in range(self.world_size)
                if r != self.rank
                and now - self._seen.get(r, (None, now))[1] > self._heartbeat_timeout
            )

    def _lost_message(self, lost: list[int], when: str) -> str:
        if self._store_error is not None:
            return (
                f"data-parallel training stopped {when}: the rendezvous store "
                f"({os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}) "
                f"is unreachable, so rank 0 (or the torchrun that hosts it) is lost "
                f"({self._store_error})"
            )
        names = ", ".join(str(r) for r in lost)
        return (
            f"data-parallel training stopped {when}: rank {names} is lost (no heartbeat for "
            f"{self._heartbeat_timeout:.0f} s); this is rank {self.rank} of {self.world_size}. "
            "The last completed epoch's checkpoint can be resumed with resume=True."
        )

    def _store_call(self, call: Any) -> Any:
        try:
            return call()
        except DistributedError:
            raise
        except Exception as e:
            self._store_error = self._store_error or e
            raise DistributedError(
                self._lost_message([0], "talking to the rendezvous store")
            ) from e

    def _run(self, name: str, collective: Any, *args: Any) -> None:
        try:
            collective(*args)
        except Exception as e:
            # Give a dead peer's heartbeat the time to go stale, then name it.
            deadline = time.monotonic() + self._heartbeat_timeout + 2 * _BEAT_SECONDS
            while not self._lost_ranks() and time.monotonic() < deadline:
                time.sleep(0.1)
            lost = self._lost_ranks()
            if lost:
                raise DistributedError(self._lost_message(lost, f"in {name}")) from e
            raise DistributedError(
                f"data-parallel training stopped: {name} failed on rank {self.rank} while every "
                f"rank still had a heartbeat ({e}); see the other ranks' errors"
            ) from e

    def close(self, succeeded: bool) -> None:
        """Stops the heartbeat; leaves the process group if this object joined it (after a
        barrier when the run succeeded, so that no rank leaves while another still reads)."""
        self._stop.set()
        self._thread.join(timeout=2 * _BEAT_SECONDS)
        if self._created and dist.is_initialized():
            if succeeded:
                try:
                    dist.barrier()
                except Exception:  # pragma: no cover - a peer died after the run ended
                    pass
            dist.destroy_process_group()
