"""Averaging over DDP ranks for what the training step computes outside DDP's gradient hooks.

DDP all-reduces gradients only inside ``backward()``. The controllers' inputs are built otherwise: per-task
gradients come from ``torch.autograd.grad`` (which never fires DDP's hooks), the losses are each rank's own. Every
rank must feed its controller the global batch's numbers, or the task weights, and with them the replicas, drift
apart. In a single process these are no-ops that return their input unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
# one all-reduce for many tensors needs them packed in one buffer; torch's only packing helpers are these private
# ones (what DDP and its comm hooks use themselves)
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world_size() -> int:
    """Processes in the default group (1 without an initialised ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_across_ranks(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The mean over ranks of each tensor (``None``, a parameter a task does not reach, stays ``None``), in one
    all-reduce of the flattened tensors; new tensors, the inputs are left as they are."""
    ranks = world_size()
    if ranks == 1:
        return list(tensors)
    present = [t for t in tensors if t is not None]
    flat = _flatten_dense_tensors(present)
    dist.all_reduce(flat)  # a sum: ReduceOp.AVG is NCCL-only, gloo (CPU) lacks it
    flat.div_(ranks)
    averaged = iter(_unflatten_dense_tensors(flat, present))
    return [None if t is None else next(averaged) for t in tensors]
