"""Data-parallel training across processes started by torchrun (or `ctxsae train --nproc N`).

Each of `world` ranks trains on its own slice of every global batch (`rank_slice`), and every
statistic of a batch is made global here, so that W ranks of B windows train the same model as
one process of W * B windows: gradients are averaged (`average_grads_`), and sums, maxima and
the candidate values of BatchTopK's pooled cut-off are reduced or gathered across ranks. With one
process every collective is the identity, so single-process code pays nothing."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

import torch
from torch import Tensor

from ctxsae_common.device import resolve_device
from ctxsae_common.errors import InputError

T = TypeVar("T")


class Group:
    """One process: every collective is the identity."""

    rank, world = 0, 1

    @property
    def is_main(self) -> bool:
        """Whether this rank logs, writes checkpoints and shows progress (rank 0)."""
        return self.rank == 0

    def sum_(self, t: Tensor) -> Tensor:
        """`t` summed over ranks, in place."""
        return t

    def max_(self, t: Tensor) -> Tensor:
        """`t`'s elementwise maximum over ranks, in place."""
        return t

    def gather_cat(self, t: Tensor) -> Tensor:
        """The 1-D tensors `t` of every rank (of any lengths), concatenated in rank order."""
        return t

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def average_grads_(self, params: list[Tensor]) -> None:
        """Replace each parameter's gradient by its mean over ranks (a rank's missing gradient
        counts as zero; a parameter no rank has a gradient for keeps None, as the optimiser
        must then skip it as one process would)."""

    def rank_slice(self, n: int) -> slice:
        """This rank's rows of a global batch of n rows (n a multiple of the world size)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


class TorchGroup(Group):
    """The ranks of an initialised torch.distributed process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sum_(self, t: Tensor) -> Tensor:
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return t

    def max_(self, t: Tensor) -> Tensor:
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t

    def gather_cat(self, t: Tensor) -> Tensor:
        size = torch.tensor([t.numel()], device=t.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        self.dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
        padded[: t.numel()] = t.reshape(-1)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self.dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def barrier(self) -> None:
        self.dist.barrier()

    def average_grads_(self, params: list[Tensor]) -> None:
        if not params:
            return
        has = self.max_(torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                                     device=params[0].device)).tolist()
        params = [p for p, h in zip(params, has) if h]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n


_GROUP: Group = Group()


def group() -> Group:
    """The process group training runs in: one process unless `init_from_env` started more."""
    return _GROUP


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> tuple[Group, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU) and pick this
    rank's device (cuda:LOCAL_RANK under 'auto' or 'cuda'); without torchrun, one process on
    `device`."""
    global _GROUP
    if not launched_by_torchrun():
        return _GROUP, resolve_device(device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = resolve_device(device)
    if want.type == "cuda":
        if local >= torch.cuda.device_count():
            raise InputError(f"rank {local} has no CUDA device (this machine has {torch.cuda.device_count()}): "
                             "pass --nproc-per-node at most the number of GPUs, or --device cpu")
        want = torch.device("cuda", local)
        torch.cuda.set_device(want)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    _GROUP = TorchGroup()
    return _GROUP, want


def main_first(make: Callable[[bool], T]) -> T:
    """`make(is_main)` on rank 0, then, once it has returned, on every other rank: for set-up
    that writes (rendered scenes, a cached model, token windows) which the others then read."""
    g = group()
    if g.is_main:
        made = make(True)
    g.barrier()
    if not g.is_main:
        made = make(False)
    return made


def leave_after_harvest() -> bool:
    """After a harvest shared among torchrun's ranks: leave the process group, and say whether
    this rank stops here (every rank but 0, which trains and reports alone). One process: False."""
    g = group()
    if g.world == 1:
        return False
    stops = not g.is_main
    shutdown()
    return stops


def shutdown(wait: bool = True) -> None:
    """Leave the process group (after training). With `wait`, every rank first waits for the
    others, so that none closes its connections while another still has a collective in flight;
    a rank that failed leaves at once (the others would wait for it until the timeout)."""
    global _GROUP
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    _GROUP = Group()
