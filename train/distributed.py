"""Processes of a run: single process, or ``torchrun`` (one node or many, through its rendezvous).

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with
them the default process group is initialised from the environment: nccl for CUDA devices, gloo
for the CPU. Rank 0 logs and writes checkpoints; every rank computes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from ..devices import resolve_device


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def init_processes(device_name: str = "auto") -> Processes:
    """Join the run's process group when started by torchrun; otherwise a single process."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    if world > 1 and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Processes(rank, world, local_rank, local_world, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any, procs: Processes) -> List[Any]:
    """Every process's ``obj``, in rank order (all processes must call it)."""
    if not procs.distributed:
        return [obj]
    out: List[Any] = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, procs: Processes) -> Any:
    """Rank 0's ``obj`` on every process (all processes must call it)."""
    if not procs.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()
