"""Many processes, one run: torchrun detection, process groups, per-rank data order, rank-0 duties.

A plain ``python -m perchead train`` is a world of one; under ``torchrun --nproc_per_node N -m perchead
train`` every process finds RANK / WORLD_SIZE / LOCAL_RANK in its environment, joins one process group
(NCCL when it trains on a GPU, gloo on CPU), takes its own slice of every global batch, and leaves logging and
checkpoints to rank 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """What torchrun (or any launcher that sets the same variables) says about this process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise RuntimeError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def resolve_device(requested: str, info: DistInfo) -> torch.device:
    """'auto' -> this process's GPU when CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} asked for but this torch sees no CUDA GPU; use --device cpu")
        if device.index is None:
            # One GPU per process: torchrun's LOCAL_RANK picks it.
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for a single process). NCCL for GPUs, gloo for CPUs."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True on every rank iff ``flag`` is True on every rank (so all ranks take the same branch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() == 0.0)


def mean_scalar(value: float, device: torch.device) -> float:
    """Average of a Python number over ranks (for logging the global loss)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` on every rank (small things only: RNG states, counters)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardedOrder:
    """Which samples each process trains on at each step: what DistributedSampler does, as a pure function
    of the step, so a resumed run continues with exactly the samples the killed one would have used.

    The run's samples are numbered by global position p = (step - 1) * global_batch + rank * batch + i: within
    a step the ranks take disjoint, consecutive slices. The data side turns a position into a sample
    deterministically (:class:`perchead.train.data.PositionDataset`).
    """

    def __init__(self, batch_size: int, info: DistInfo) -> None:
        self.batch = batch_size
        self.info = info

    def batch_for_step(self, step: int) -> list[int]:
        """This rank's sample positions for a 1-based optimizer step."""
        start = (step - 1) * self.batch * self.info.world_size + self.info.rank * self.batch
        return list(range(start, start + self.batch))

    def iterate(self, first_step: int, last_step: int) -> StepBatches:
        """Batches of steps first_step..last_step (a DataLoader ``batch_sampler``), produced lazily."""
        return StepBatches(self, first_step, last_step)


class StepBatches:
    def __init__(self, order: ShardedOrder, first_step: int, last_step: int) -> None:
        self.order, self.first, self.last = order, first_step, last_step

    def __len__(self) -> int:
        return max(0, self.last - self.first + 1)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first, self.last + 1):
            yield self.order.batch_for_step(step)


__all__ = ["DistInfo", "ShardedOrder", "StepBatches", "all_true", "barrier", "broadcast_object", "env_info",
           "gather_objects", "init", "mean_scalar", "resolve_device", "shutdown"]
