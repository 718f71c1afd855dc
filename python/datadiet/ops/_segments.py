"""The segment layouts shared by ``topk_select`` and ``weighted_sample``.

Every call is reduced to the ops' one form — a contiguous 1-D tensor cut into segments by
host ``offsets`` with one ``k`` per segment — and the result mapped back:

- 1-D ``[n]``: one segment; indices into the input.
- 2-D ``[B, n]``: one segment per row; ``[B, k]`` indices within each row.
- ``offsets`` (``G + 1`` non-decreasing ints from 0 to n): ragged segments; indices into
  the input, segment by segment.
- ``groups`` (``[n]`` int ids in ``[0, G)``): the segments are the groups, in id order, taken
  by a stable sort of the ids; indices into the input, group by group.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch

from datadiet.ops._args import IntSeqLike, int_list

IntsLike = Union[int, Sequence[int], torch.Tensor]


class Segments(NamedTuple):
    values: torch.Tensor  # 1-D, contiguous
    offsets: list[int]
    ks: list[int]
    finish: Callable[[torch.Tensor], torch.Tensor]  # op output -> user-facing indices


def _per_segment_k(k: IntsLike, sizes: list[int], op: str) -> list[int]:
    if isinstance(k, bool) or not isinstance(k, (int, Sequence, torch.Tensor)):
        raise TypeError(f"datadiet.{op}: k must be an int or one int per segment, got {k!r}")
    ks = [int(k)] * len(sizes) if isinstance(k, int) else int_list(k, "k", op)
    if len(ks) != len(sizes):
        raise ValueError(f"datadiet.{op}: got {len(ks)} values of k for {len(sizes)} segments")
    for g, (kg, n) in enumerate(zip(ks, sizes)):
        if not 0 <= kg <= n:
            where = "" if len(sizes) == 1 else f" for segment {g}"
            raise ValueError(f"datadiet.{op}: k = {kg}{where} but there are {n} elements; need 0 <= k <= {n}")
    return ks


def segments(op: str, what: str, values: torch.Tensor, k: IntsLike, offsets: Optional[IntSeqLike],
             groups: Optional[torch.Tensor]) -> Segments:
    """Validates the layout and returns the op's arguments plus the mapping of its output."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"datadiet.{op}: {what} must be a tensor, got {type(values).__name__}")
    if offsets is not None and groups is not None:
        raise ValueError(f"datadiet.{op}: pass offsets or groups, not both")
    if values.dim() == 2 and offsets is None and groups is None:
        rows, n = values.shape
        ks = _per_segment_k(k, [n] * rows, op)
        width = ks[0] if ks else 0
        if any(kg != width for kg in ks):
            raise ValueError(f"datadiet.{op}: row-batched {what} need one k for all rows, got {ks[:8]}")
        starts = torch.arange(rows, device=values.device).unsqueeze(1) * n

        def rows_finish(out: torch.Tensor) -> torch.Tensor:
            return out.view(rows, width) - starts

        return Segments(values.contiguous().view(-1), [r * n for r in range(rows + 1)], ks, rows_finish)
    if values.dim() != 1:
        raise ValueError(f"datadiet.{op}: {what} must be 1-D [n] or 2-D [B, n] (rows), got shape "
                         f"{tuple(values.shape)}" + (" with offsets/groups" if values.dim() == 2 else ""))
    n = values.shape[0]
    flat = values.contiguous()
    if groups is not None:
        return _group_segments(op, flat, k, groups)
    offs = [0, n] if offsets is None else int_list(offsets, "offsets", op)
    if not offs or offs[0] != 0 or offs[-1] != n:
        raise ValueError(f"datadiet.{op}: offsets must start at 0 and end at {what}.numel() = {n}, got "
                         f"{offs[:4]}{'...' if len(offs) > 4 else ''} (length {len(offs)})")
    sizes = [b - a for a, b in zip(offs[:-1], offs[1:])]
    for g, size in enumerate(sizes):
        if size < 0:
            raise ValueError(f"datadiet.{op}: offsets must be non-decreasing, got offsets[{g}] = {offs[g]} > "
                             f"offsets[{g + 1}] = {offs[g + 1]}")
    return Segments(flat, offs, _per_segment_k(k, sizes, op), lambda out: out)


_MAX_SPARSE_GROUPS = 65536


def _group_segments(op: str, flat: torch.Tensor, k: IntsLike, groups: torch.Tensor) -> Segments:
    if not isinstance(groups, torch.Tensor) or groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise TypeError(f"datadiet.{op}: groups must be an integer tensor of group ids, got "
                        f"{groups.dtype if isinstance(groups, torch.Tensor) else type(groups).__name__}")
    if groups.shape != flat.shape:
        raise ValueError(f"datadiet.{op}: groups must have shape {tuple(flat.shape)}, got {tuple(groups.shape)}")
    if groups.device != flat.device:
        raise ValueError(f"datadiet.{op}: groups are on {groups.device} but the values are on {flat.device}")
    ids = groups.long()
    if ids.numel() and int(ids.min()) < 0:
        i = int((ids < 0).nonzero()[0, 0])
        raise ValueError(f"datadiet.{op}: groups[{i}] = {int(ids[i])} is negative; group ids must be >= 0")
    num_groups = int(ids.max()) + 1 if ids.numel() else 0
    listed = 0 if isinstance(k, int) else len(int_list(k, "k", op))
    # Ids are counted densely (bincount): an id far beyond the values' count would allocate a table
    # of that size for nothing (2**40 is terabytes). Sparse ids up to 65536 stay allowed.
    bound = max(ids.numel(), listed, _MAX_SPARSE_GROUPS)
    if num_groups > bound:
        raise ValueError(f"datadiet.{op}: groups hold id {num_groups - 1}, which would count {num_groups} groups for "
                         f"{ids.numel()} values; group ids must be < {bound} (number the groups 0, 1, ...)")
    num_groups = max(num_groups, listed)
    counts = torch.bincount(ids, minlength=num_groups).tolist()
    offs = [0]
    for c in counts:
        offs.append(offs[-1] + c)
    perm = torch.sort(ids, stable=True).indices
    ks = _per_segment_k(k, counts, op)
    return Segments(flat[perm], offs, ks, lambda out: perm[out])
