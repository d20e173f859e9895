"""torch.distributed set-up from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but CUDA is not available")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def init_distributed(device_name: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local)
    info = DistInfo(rank, world, local, device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        info.backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kw = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(
                info.backend,
                init_method="env://",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
                **kw,
            )
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not (info.enabled and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
