"""One run on many processes (``accelerate launch -m adaptbench run ...``): who is who, and sharing results.

Every process walks the same runs in the same order.  Training is data-parallel through accelerate
(DDP; FSDP or DeepSpeed from an accelerate config file); evaluation and ICL scoring are sharded: each
rank scores every world-th example and the scores are gathered, so all ranks hold the full result.
Only rank 0 writes files.  Outside a launch every function here is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group set up by the launcher (gloo on CPU, nccl on GPU) through accelerate.

    A rank whose run fails ends its process (``runner.stop_launch``) and the launcher stops the others;
    ``ADAPTBENCH_COLLECTIVE_TIMEOUT_S`` (default 1800) bounds how long a collective waits for a peer
    that vanished without a launcher noticing."""
    if launched() and not dist.is_initialized():
        from accelerate import PartialState

        seconds = int(os.environ.get("ADAPTBENCH_COLLECTIVE_TIMEOUT_S", "1800"))
        PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=seconds))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(*counts: int) -> tuple[int, ...]:
    """Each count summed over all ranks (token counts of sharded work)."""
    return tuple(int(sum(values)) for values in zip(*gather(counts)))


def shard(n: int) -> list[int]:
    """This rank's share of ``range(n)``: every world-th index, padded by repeating the last one so every
    rank runs the same number of forwards (sharded models need all ranks in each forward)."""
    size = world_size()
    if size == 1:
        return list(range(n))
    mine = list(range(rank(), n, size))
    per_rank = -(-n // size)
    return mine + [mine[-1] if mine else 0] * (per_rank - len(mine)) if n else []


def gather_rows(indices: list[int], rows: np.ndarray, n: int) -> np.ndarray:
    """Assemble the (n, ...) array whose rows ``indices`` each rank computed."""
    if not active():
        return rows
    parts = gather((indices, rows))
    out = np.zeros((n, *rows.shape[1:]), dtype=rows.dtype)
    for idx, part in parts:
        if len(idx):
            out[idx] = part
    return out


def local_device(device: str) -> str:
    """Under a launch with GPUs, ``auto``/``cuda`` means this process' GPU (LOCAL_RANK)."""
    if device in ("auto", "cuda") and launched() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
