"""Training on several processes or machines with DistributedDataParallel, unchanged code.

    torchrun --nproc_per_node 2 -m training train cnn --dataset mnist          # one machine
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 4 -m training ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op and the
run is the ordinary single-process one. The backend is nccl when CUDA is there, gloo otherwise.

How the data is sharded: every rank draws the same seeded permutation, so every rank knows the
same global batch at each step, and each takes its strided share (`shard`). DDP averages the
gradients, so one step equals the single-process step on the whole global batch (exactly, for a
model without batch norm or dropout): the 2-process test compares the two runs. Metrics are sums
all-reduced over the ranks; only rank 0 exports and publishes.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes files, exports and publishes."""
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch of indices (every world_size-th, from rank)."""
        return index[self.rank :: self.world_size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over every rank (float64, so counts stay exact)."""
        if not self.enabled:
            return values
        # gloo reduces CPU tensors, nccl device ones
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return [float(v) for v in total.tolist()]

    def agree(self, value: float) -> float:
        """Rank 0's value on every rank: a decision (a clock reading, a stop flag) all must share."""
        if not self.enabled:
            return value
        shared = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return float(shared.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: DDP around it when there are several ranks."""
        if not self.enabled:
            return model
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def wrap_method(self, model: nn.Module, method: str) -> nn.Module:
        """`wrap` for a model trained through a method other than forward (a VAE's `loss`):
        DDP synchronises gradients only of what runs through its own forward."""
        return self.wrap(Method(model, method))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class Method(nn.Module):
    """A module whose forward is another module's named method (same parameters)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args: Any) -> Any:
        function: Callable[..., Any] = getattr(self.model, self.method)
        return function(*args)


def start(timeout_s: float = 1800.0) -> Distributed:
    """Join the process group torchrun described in the environment (or run alone without one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    assert dist.get_world_size() == world_size, "WORLD_SIZE disagrees with the process group"
    return Distributed(rank, world_size, local_rank, device)


def stop(context: Distributed, succeeded: bool = True) -> None:
    if context.enabled and dist.is_initialized():
        if succeeded:
            # Leave together: a rank that tears gloo down while rank 0 still exports has been
            # seen to abort in the teardown ("terminate called without an active exception").
            dist.barrier()
        dist.destroy_process_group()


def run_on_ranks(body: Callable[[Distributed], T]) -> T:
    """Run `body` in torchrun's process group (or alone without one), then leave the group."""
    context = start()
    try:
        result = body(context)
    except BaseException:
        stop(context, succeeded=False)  # no barrier: the other ranks may be mid-collective
        raise
    stop(context)
    return result
