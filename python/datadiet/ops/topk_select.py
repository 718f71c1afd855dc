"""``topk_select``: indices of the k largest (or smallest) scores — whole vectors, row batches
or ragged groups (per-class budgets) — by radix selection, no full sort.

Wrapper, fake (meta) registrations and the Triton custom op for ``torch.ops.datadiet.topk_select``.
The ordering rule lives in ``csrc/ops/select/select_math.h``; the engine in
``csrc/ops/select/radix_select_cpu.h``.
"""

from __future__ import annotations

from typing import Optional, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.ops._args import IntSeqLike
from datadiet.ops._segments import IntsLike, segments
from datadiet.reference.select import topk_select_reference

_SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def topk_select(
    scores: torch.Tensor,
    k: IntsLike,
    *,
    largest: bool = True,
    offsets: Optional[IntSeqLike] = None,
    groups: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Indices (int64) of the ``k`` largest (``largest=False``: smallest) scores.

    Layouts (see ``datadiet.ops._segments``):

    - ``scores [n]``: ``[k]`` indices into ``scores``.
    - ``scores [B, n]``: ``[B, k]`` indices within each row.
    - ``offsets`` (G + 1 ints): G ragged segments, ``k`` an int or one per segment; the
      picks of each segment concatenated in segment order, as indices into ``scores``.
    - ``groups`` (``[n]`` ids in ``[0, G)``): the same per group (e.g. per-class budgets).

    Order: best first; equal scores go to the lower index, so the result is deterministic
    and the same on every backend. ``-0.0 == 0.0``. NaN ranks after every number in both
    directions: it is picked only when k exceeds the count of non-NaN scores.

    Args:
        scores: float32, float16 or bfloat16 (float64 is rejected rather than rounded,
            which could merge distinct scores into ties). Non-contiguous input is copied.
        backend: ``"auto" | "cpu" | "cuda" | "triton" | "torch"``.
    """
    if isinstance(scores, torch.Tensor) and scores.dtype not in _SCORE_DTYPES:
        raise TypeError(f"datadiet.topk_select: scores must be float32, float16 or bfloat16, got {scores.dtype}"
                        + ("; rounding float64 could create ties, cast explicitly with .float()"
                           if scores.dtype == torch.float64 else ""))
    seg = segments("topk_select", "scores", scores, k, offsets, groups)
    chosen = resolve(backend, scores.device, "topk_select")
    args = (seg.values, seg.offsets, seg.ks, bool(largest))
    if chosen in ("cpu", "cuda"):
        out = torch.ops.datadiet.topk_select(*args)
    elif chosen == "triton":
        out = torch.ops.datadiet.topk_select_triton(*args)
    else:
        out = topk_select_reference(*args)
    return seg.finish(out)


def _fake(scores: torch.Tensor, offsets: list[int], ks: list[int], largest: bool) -> torch.Tensor:
    return scores.new_empty((sum(ks),), dtype=torch.int64)


@torch.library.custom_op("datadiet::topk_select_triton", mutates_args=())
def _topk_select_triton(scores: torch.Tensor, offsets: list[int], ks: list[int], largest: bool) -> torch.Tensor:
    from datadiet.kernels import topk_select as kernel

    return cast(torch.Tensor, kernel.topk_select(scores, offsets, ks, largest))


_topk_select_triton.register_fake(_fake)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::topk_select")(_fake)
