"""torch.distributed helpers shared by the scoring pass, the training loop and the pipelines
(no-ops in a single process): joining torchrun's process group, the world, and gathering rows of
uneven per-rank length."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
import time
import warnings
from typing import Optional, cast

import torch

_alone = 0  # > 0 inside ``alone()``


def resolve(device: str) -> str:
    """``"auto"``: ``"cuda"`` when a CUDA device is available, else ``"cpu"``; any other name as is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def init(device: str, timeout: float) -> torch.device:
    """This process's device (``"auto"``: CUDA when available); under torchrun (``WORLD_SIZE`` > 1)
    joins the process group (NCCL on CUDA, gloo on CPU) and takes the ``LOCAL_RANK``-th GPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(resolve(device))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"config device = {device!r}: no CUDA device is available")
        if size > 1:
            local, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if visible == 1:  # a launcher showing each task its own GPU (SLURM, CUDA_VISIBLE_DEVICES per task)
                local = 0
            elif local >= visible:
                raise ValueError(f"torchrun: LOCAL_RANK {local} but this process sees {visible} CUDA devices: "
                                 "start at most one process per visible GPU")
            dev = torch.device("cuda", local)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"config device = {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        torch.cuda.set_device(dev)
    dist = torch.distributed
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout))
        if dev.type != "cuda":
            atexit.register(_leave)
        # NCCL: left by finish() at a clean end only. Destroying an NCCL group waits for its pending
        # work, so at the exit of a rank that failed while another waits in a collective it would
        # hang until the timeout, where exiting lets torchrun stop the others at once.
    return dev


def warn_unbalanced(what: str, items: int, size: int) -> None:
    """Warns, once per call on rank 0, when ``items`` dealt round ``size`` ranks (item i on rank
    i mod size) leave some ranks with fewer: they wait in the next collective while the others
    work, within the process group's timeout."""
    if size <= 1 or items % size == 0 or world()[1] != 0:
        return
    counts = [(items - r + size - 1) // size for r in range(size)]
    fewer = [r for r in range(size) if counts[r] < counts[0]]
    warnings.warn(f"{what}s: {items} over {size} ranks give ranks {', '.join(map(str, fewer))} {counts[-1]} each and "
                  f"the others {counts[0]}: those wait in a collective meanwhile; keep --dist-timeout above one "
                  f"{what}'s time, or use a multiple of {size}", RuntimeWarning, stacklevel=2)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device``'s queued work is done: phase timings on CUDA count
    the kernels a phase launched, not the next phase that waits for them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def finish() -> None:
    """Leaves the process group at a clean end of a command (NCCL warns of leaked resources
    otherwise); a no-op without one."""
    _leave()


def _leave() -> None:
    """At exit (gloo groups, or ``finish``), while Python is still whole: a gloo worker thread that finished a collective may
    still be waiting for the GIL to drop the op's tensors; were the interpreter to finalise first,
    that thread would be killed inside a C++ destructor ("terminate called without an active
    exception", SIGABRT, about one exit in ten). Releasing the GIL for a moment lets it finish; then
    the group is left."""
    time.sleep(0.05)
    dist = torch.distributed
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def alone():
    """Inside, this process acts as a run of its own (``world()`` is (1, 0)) although a process
    group exists: no DDP, no sharding, no collectives — one rank training its own model (seed
    000's members, one per rank)."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def world() -> tuple[int, int]:
    """(world size, rank); (1, 0) without an initialised process group or inside ``alone()``."""
    dist = torch.distributed
    if not _alone and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def rank0_first(fn, *, share=None):
    """``fn()`` on rank 0 alone (e.g. claiming the output folder); an error it raises is raised on
    every rank (a ValueError as one, anything else as a RuntimeError with its text), which would
    otherwise wait in their next collective until the timeout. Returns ``fn()``'s result on rank 0;
    on the others None, or ``share(result)`` as rank 0 computed it (picklable data every rank
    needs, such as finished work found in the folder)."""
    size, rank = world()
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if size > 1:
        told = None if error is None else str(error) if isinstance(error, ValueError) \
            else RuntimeError(f"{type(error).__name__}: {error}")  # its text: any exception pickles as this
        box = [told, share(result) if share and error is None and rank == 0 else None]
        torch.distributed.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            raise box[0] if isinstance(box[0], RuntimeError) else ValueError(box[0])
        if rank != 0 and share:
            return box[1]
    if error is not None:
        raise error
    return result


def gather_rows(tensors: dict[str, torch.Tensor], device, dst: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Every rank's tensors, concatenated in rank order along dim 0 (lengths may differ by rank):
    on every rank, or with ``dst`` on that rank alone (the others get empty tensors, and no rank
    but ``dst`` ever holds more than its own rows)."""
    if dst is None:
        return _all_gather_rows(tensors, device)
    first = next(iter(tensors.values()))
    return route_rows(tensors, torch.full((first.shape[0],), dst, dtype=torch.int64), device)


ROUTE_BLOCK_BYTES = 4 << 20  # the rows one rank sends in one gather: a bounded transient


def route_rows(tensors: dict[str, torch.Tensor], owner: torch.Tensor, device, *, place: Optional[torch.Tensor] = None,
               consume: bool = False) -> dict[str, torch.Tensor]:
    """Row i of every tensor sent to rank ``owner[i]``: returns the rows this rank received, in
    (sending rank, row) order, or with ``place`` the j-th of them at row ``place[j]`` (a
    permutation of the received rows, e.g. sorting them, without a second copy). The rows travel
    in blocks of at most ``ROUTE_BLOCK_BYTES`` per sender (one ``gather`` per destination and
    block), written straight into the result, so beyond its own rows and what it receives a rank
    holds one block per sender. ``consume``: each tensor is dropped from ``tensors`` once sent (a
    caller's last reference then frees it before the next column travels)."""
    dist = torch.distributed
    size, rank = world()
    comm = _comm(device)
    owner = owner.to(comm, torch.int64)
    if owner.numel() and not (0 <= int(owner.min()) and int(owner.max()) < size):
        raise ValueError(f"route_rows: owners must be ranks in [0, {size})")
    counts = torch.bincount(owner, minlength=size)
    matrix = [torch.zeros_like(counts) for _ in range(size)]
    dist.all_gather(matrix, counts)
    sent = torch.stack(matrix).tolist()  # sent[src][dst]: rows src sends to dst
    mine = [row[rank] for row in sent]
    starts = [sum(mine[:src]) for src in range(size)]  # where each sender's rows begin in the result
    if place is not None:
        place = place.to(comm, torch.int64)
        if place.shape != (sum(mine),):
            raise ValueError(f"route_rows: place must hold one row per received row ({sum(mine)})")
    rows_to = [(owner == to).nonzero().flatten() for to in range(size)]
    out = {}
    for name in sorted(tensors):
        value = tensors.pop(name) if consume else tensors[name]
        home, was_bool = value.device, value.dtype == torch.bool
        v = value.to(comm)
        del value
        v = v.to(torch.uint8) if was_bool else v
        received = v.new_empty((sum(mine), *v.shape[1:]))
        row_bytes = math.prod(v.shape[1:]) * v.element_size()  # the same on every rank, rows or none
        block = max(1, ROUTE_BLOCK_BYTES // max(1, row_bytes))
        for to in range(size):
            longest = max(row[to] for row in sent)
            for at in range(0, longest, block):
                piece = v.index_select(0, rows_to[to][at:at + block])
                length = min(block, longest - at)
                if piece.shape[0] < length:  # this sender has fewer rows for ``to``: padded
                    piece = torch.cat([piece, v.new_zeros((length - piece.shape[0], *v.shape[1:]))])
                bucket = list(v.new_empty((size * length, *v.shape[1:])).split(length)) if rank == to else None
                dist.gather(piece, bucket, dst=to)
                if rank == to:
                    for src, part in enumerate(cast(list, bucket)):
                        got = max(0, min(length, mine[src] - at))
                        if got:
                            where = slice(starts[src] + at, starts[src] + at + got)
                            if place is None:
                                received[where] = part[:got]
                            else:
                                received[place[where]] = part[:got]
                del piece, bucket
        del v
        received = received.to(home)
        out[name] = received.bool() if was_bool else received
    return out


def _all_gather_rows(tensors: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """``gather_rows`` onto every rank: each tensor travels padded to the longest rank's length."""
    dist = torch.distributed
    size = world()[0]
    comm = _comm(device)
    first = next(iter(tensors.values()))
    length = torch.tensor([first.shape[0]], device=comm)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    lengths = [int(v.item()) for v in lengths]
    out = {}
    for name in sorted(tensors):
        value = tensors[name]
        v = value.to(comm)
        if v.dtype == torch.bool:
            v = v.to(torch.uint8)
        padded = v.new_zeros((max(lengths), *v.shape[1:]))
        padded[:v.shape[0]] = v
        chunks = [torch.zeros_like(padded) for _ in range(size)]
        dist.all_gather(chunks, padded)
        joined = torch.cat([c[:m] for c, m in zip(chunks, lengths)]).to(value.device)
        out[name] = joined.bool() if value.dtype == torch.bool else joined
    return out


def _comm(device) -> torch.device:
    """Where a collective's tensors must be: the CPU for gloo, ``device`` otherwise (NCCL)."""
    return torch.device("cpu") if torch.distributed.get_backend() == "gloo" else torch.device(device)


def all_reduce_(tensor: torch.Tensor, op: str) -> None:
    """``tensor`` replaced in place by its elementwise ``"max"`` or ``"sum"`` over the ranks (on
    the CPU for gloo)."""
    dist = torch.distributed
    reduce_op = {"max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op]
    if _comm(tensor.device) != tensor.device:  # gloo and a device tensor: reduced through the CPU
        on_cpu = tensor.cpu()
        dist.all_reduce(on_cpu, reduce_op)
        tensor.copy_(on_cpu)
    else:
        dist.all_reduce(tensor, reduce_op)


def to_cpu(value):
    """``value`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def unwrap(model):
    """The module a (Distributed)DataParallel wrapper holds; any other model as it is (a model
    with its own submodule called ``module`` is not a wrapper)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
