"""Ranks and strategies of distributed training (DDP / FSDP under torchrun or SLURM)."""

from __future__ import annotations

import torch

from ..errors import InputError


def check_strategy(strategy: str) -> None:
    """Fail with one line when ``strategy`` cannot run here: Lightning (2.6) accepts its FSDP
    strategies only with a CUDA accelerator (``ValueError: The strategy `fsdp` requires a GPU
    accelerator``), so on a machine without CUDA ``fsdp`` is refused before any work."""
    if str(strategy).startswith("fsdp") and not torch.cuda.is_available():
        raise InputError(f"strategy={strategy!r} needs CUDA GPUs (Lightning's FSDP runs only on "
                         f"a GPU accelerator) and this machine has none; use strategy='ddp' "
                         f"(CPU processes over gloo) or run on GPUs.")


def global_rank() -> int:
    """Rank of this process under torch.distributed (0 when not distributed)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_share(n: int) -> slice:
    """This process's equal, contiguous share of ``n`` items under torch.distributed (all of
    them when not distributed). ``n`` must divide evenly over the ranks."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return slice(0, n)
    rank, world = dist.get_rank(), dist.get_world_size()
    if n % world:
        raise InputError(f"n_sets={n} does not divide over {world} processes; use a multiple "
                         f"of {world}.")
    k = n // world
    return slice(rank * k, (rank + 1) * k)
