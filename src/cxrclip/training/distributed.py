"""torchrun / DDP plumbing: one process per device, gloo on CPU, NCCL on CUDA, rank 0 writes.

``torchrun --nproc_per_node=N -m cxrclip finetune ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and the rendezvous variables); :func:`init_distributed` reads them. Without them the
run is a single process and every helper here is a no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from cxrclip.models.factory import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes files."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "auto") -> DistContext:
    """Set up this process from torchrun's environment (or a single process when it is absent).

    ``device``: ``auto`` | ``cpu`` | ``cuda`` (``cuda`` without a GPU falls back to the CPU with a
    warning). Distributed CUDA runs use ``cuda:LOCAL_RANK`` and NCCL; CPU runs use gloo.
    """
    dev = resolve_device(device)
    world_size = env_world_size()
    if world_size <= 1:
        return DistContext(device=dev)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    log.info("rank %d/%d on %s (%s)", rank, world_size, dev, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Tear down the process group (no-op for a single process)."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``tensor`` over ranks (returns a new tensor; identity for one process)."""
    if not ctx.distributed:
        return tensor
    import torch.distributed as dist

    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable plain data only; identity for one process)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
