"""Exact per-sample squared gradient norms of one layer's own parameters, from the layer's input
and the loss gradient at its output — the rules behind ``grad_norms``.

A rule turns one call of a layer into *pieces* whose squared norms add up to the layer's:

- ``Pair(A [B, T, d], G [B, T, p], groups)``: a weight whose per-sample gradient is ``G_iᵀ A_i``
  (Linear on any number of leading dims, Conv1d/Conv2d through ``unfold`` per group). Its squared
  norm is ``⟨A_iA_iᵀ, G_iG_iᵀ⟩`` ("ghost", O(T²(d+p))) or ``‖G_iᵀA_i‖²`` formed tile by tile by
  ``per_sample_grad_sqnorm`` ("instantiate", O(T·p·d)); ``auto`` takes ghost when
  ``2T² ≤ p·d`` per group, decided per call, so a new input shape is decided again. T = 1 is
  ``‖a_i‖²‖g_i‖²``.
- ``Patches(x, g, geometry)``: a Conv1d / Conv2d weight, the pair of its unfolded input and output
  gradient kept implicit: instantiated, ``per_sample_conv_grad_sqnorm`` gathers the patches from
  the input itself (an unfold is kh·kw times the input); ghost and merging unfold it.
- ``Vector(V [B, m])``: a gradient built directly (biases ``Σ_t g_t``; LayerNorm / GroupNorm /
  eval-mode BatchNorm scales ``Σ g·x̂`` and shifts ``Σ g``), squared norm ``‖V_i‖²``.
- ``Rows(ids [B, T], G [B, T, p])``: an embedding table; sample i's gradient has row ``v`` =
  ``Σ_{t: id_t = v} g_t`` (padding positions excluded), summed over its unique (sample, token) pairs.

A layer called several times in one forward pass (shared weights) has one gradient summed over
its calls: pieces of the same kind are merged (``merge``) before squaring — pairs and rows
concatenate along T, vectors add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from datadiet.ops.per_sample_grad_sqnorm import per_sample_conv_grad_sqnorm, per_sample_grad_sqnorm

MODES = ("auto", "ghost", "instantiate")


@dataclass
class Pair:
    A: torch.Tensor
    G: torch.Tensor
    groups: int = 1


@dataclass
class Patches:
    """A Conv2d weight: ``Pair(unfold(x), g)`` kept implicit — the instantiated form gathers the
    patches inside ``per_sample_conv_grad_sqnorm``; the ghost form and merging unfold them."""

    x: torch.Tensor
    g: torch.Tensor
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    def pair(self) -> Pair:
        B, O = self.g.shape[:2]
        k = self.kernel_size
        if k == (1, 1) and not any(self.padding):  # a 1×1 convolution's patches are its (strided) pixels
            cols = self.x[:, :, ::self.stride[0], ::self.stride[1]].flatten(2)
        else:
            cols = F.unfold(self.x, k, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return Pair(cols.transpose(1, 2), self.g.reshape(B, O, -1).transpose(1, 2), self.groups)


@dataclass
class Vector:
    V: torch.Tensor


@dataclass
class Rows:
    ids: torch.Tensor
    G: torch.Tensor
    num_rows: int


def linear_pieces(m: nn.Linear, x: torch.Tensor, g: torch.Tensor, wanted: set) -> dict:
    B = x.shape[0]
    A = x.reshape(B, -1, x.shape[-1])
    G = g.reshape(B, -1, g.shape[-1])
    out = {}
    if "weight" in wanted:
        out["weight"] = Pair(A, G)
    if "bias" in wanted:
        out["bias"] = Vector(G.sum(1))
    return out


def conv_pieces(m: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor, wanted: set) -> dict:
    if x.dim() != m.weight.dim():
        raise ValueError(f"grad_norms: {type(m).__name__} got an unbatched input of shape {tuple(x.shape)}; "
                         "per-sample norms need a batch dimension")
    B = x.shape[0]
    out = {}
    if "weight" in wanted:
        pads = list(m._reversed_padding_repeated_twice)  # (left, right) per dim, last dim first
        if m.padding_mode == "zeros" and pads[0::2] == pads[1::2]:  # the kernels pad (or nothing to pad)
            padded, padding = x, tuple(reversed(pads[0::2]))
        else:  # 'same' with an even kernel, reflect / replicate / circular
            padded = F.pad(x, pads, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
            padding = (0,) * len(m.kernel_size)
        if isinstance(m, nn.Conv1d):  # a Conv1d is a Conv2d of height 1
            out["weight"] = Patches(padded.unsqueeze(2), g.unsqueeze(2), (1, *m.kernel_size), (1, *m.stride),
                                    (0, *padding), (1, *m.dilation), m.groups)
        else:
            out["weight"] = Patches(padded, g, tuple(m.kernel_size), tuple(m.stride), padding, tuple(m.dilation),
                                    m.groups)
    if "bias" in wanted:
        out["bias"] = Vector(g.reshape(B, g.shape[1], -1).sum(2))
    return out


def embedding_pieces(m: nn.Embedding, ids: torch.Tensor, g: torch.Tensor, wanted: set) -> dict:
    if "weight" not in wanted:
        return {}
    if m.scale_grad_by_freq:
        raise ValueError("grad_norms: an nn.Embedding with scale_grad_by_freq=True scales each gradient row by the "
                         "token's frequency in the whole batch, so a sample's gradient depends on the other samples; "
                         "there is no per-sample gradient to take the norm of")
    B = ids.shape[0]
    ids = ids.reshape(B, -1)
    if m.padding_idx is not None:  # padding positions send no gradient to the table
        ids = torch.where(ids == m.padding_idx, -1, ids)
    return {"weight": Rows(ids, g.reshape(B, ids.shape[1], -1), m.num_embeddings)}


def _affine_pieces(x_hat: torch.Tensor, g: torch.Tensor, channel_dims: tuple[int, ...], wanted: set) -> dict:
    """Scale ``Σ g·x̂`` and shift ``Σ g`` over every dim but the batch and ``channel_dims``."""
    keep = (0, *channel_dims)
    summed = [d for d in range(g.dim()) if d not in keep]
    B = g.shape[0]
    out = {}
    if "weight" in wanted:
        out["weight"] = Vector((g * x_hat).sum(summed).reshape(B, -1) if summed else (g * x_hat).reshape(B, -1))
    if "bias" in wanted:
        out["bias"] = Vector(g.sum(summed).reshape(B, -1) if summed else g.reshape(B, -1))
    return out


def layer_norm_pieces(m: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor, wanted: set) -> dict:
    k = len(m.normalized_shape)
    x_hat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
    return _affine_pieces(x_hat, g, tuple(range(x.dim() - k, x.dim())), wanted)


def group_norm_pieces(m: nn.GroupNorm, x: torch.Tensor, g: torch.Tensor, wanted: set) -> dict:
    x_hat = F.group_norm(x, m.num_groups, None, None, m.eps)
    return _affine_pieces(x_hat, g, (1,), wanted)


def batch_norm_pieces(m: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, g: torch.Tensor, wanted: set) -> dict:
    """Eval mode: x̂ = (x − μ)·r with the running μ and r = 1/sqrt(var + eps), so the scale's gradient
    is r·(Σ g·x − μ·Σ g) per channel — two reductions in the accumulation dtype, no normalised copy
    of the input (``grad_norms`` has refused a BatchNorm using batch statistics before the pass)."""
    B, C = g.shape[:2]
    g3 = g.reshape(B, C, -1).to(_acc(g.dtype))
    shift = g3.sum(2)
    out = {}
    if "weight" in wanted:
        rstd = torch.rsqrt(m.running_var.to(shift.dtype) + m.eps)
        gx = torch.linalg.vecdot(g3, x.reshape(B, C, -1).to(g3.dtype))
        out["weight"] = Vector(rstd * (gx - m.running_mean.to(shift.dtype) * shift))
    if "bias" in wanted:
        out["bias"] = Vector(shift)
    return out


def check_batch_norm(m: nn.Module, name: str) -> None:
    """Refuses a BatchNorm that normalises with the batch's own statistics."""
    if m.training or m.running_mean is None or m.running_var is None:
        where = f" {name!r}" if name else ""
        why = ("is in training mode" if m.training else "has track_running_stats=False, so it uses batch "
               "statistics even in eval mode")
        raise ValueError(f"grad_norms: BatchNorm{where} {why}: its output for one sample depends on the whole batch, "
                         "so a per-sample gradient is not defined. Score in eval mode (the default, "
                         "train_mode=False), with running statistics")


# Layer type -> rule. A subclass uses its base's rule only when it keeps the base's forward.
# A rule maps (layer, its input, the gradient at its output, the names of the parameters to cover)
# to {parameter name: piece}.
RULES: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor, set], dict]] = {
    nn.Linear: linear_pieces,
    nn.Conv1d: conv_pieces,
    nn.Conv2d: conv_pieces,
    nn.Embedding: embedding_pieces,
    nn.LayerNorm: layer_norm_pieces,
    nn.GroupNorm: group_norm_pieces,
    nn.modules.batchnorm._BatchNorm: batch_norm_pieces,
}


def rule_for(module: nn.Module) -> Optional[Callable]:
    for base in type(module).__mro__:
        if base in RULES:
            return RULES[base] if type(module).forward is base.forward else None
    return None


def merge(pieces: list):
    """One piece from the same parameter's pieces of several calls."""
    first = pieces[0]
    if len(pieces) == 1:
        return first
    if isinstance(first, Vector):
        return Vector(sum(p.V for p in pieces))
    if isinstance(first, Rows):
        return Rows(torch.cat([p.ids for p in pieces], 1), torch.cat([p.G for p in pieces], 1), first.num_rows)
    pieces = [p.pair() if isinstance(p, Patches) else p for p in pieces]
    return Pair(torch.cat([p.A for p in pieces], 1), torch.cat([p.G for p in pieces], 1), first.groups)


def sqnorm(piece, mode: str, backend: str) -> torch.Tensor:
    """``[B]`` squared norm of a piece's per-sample gradient, in float32 (float64 for float64)."""
    if isinstance(piece, Vector):
        V = piece.V
        return V.to(_acc(V.dtype)).square().sum(1)
    if isinstance(piece, Rows):
        return _rows_sqnorm(piece)
    if isinstance(piece, Patches):
        return _patches_sqnorm(piece, mode, backend)
    return _pair_sqnorm(piece, mode, backend)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pair_sqnorm(piece: Pair, mode: str, backend: str) -> torch.Tensor:
    dtype = torch.promote_types(piece.A.dtype, piece.G.dtype)
    A, G, k = piece.A.to(dtype), piece.G.to(dtype), piece.groups
    B, T, d = A.shape
    p = G.shape[2]
    acc = _acc(dtype)
    if T == 1:
        a2 = A.reshape(B, k, d // k).to(acc).square().sum(2)
        g2 = G.reshape(B, k, p // k).to(acc).square().sum(2)
        return (a2 * g2).sum(1)
    if mode == "ghost" or (mode == "auto" and 2 * T * T <= (p // k) * (d // k)):
        Ak = A.to(acc).reshape(B, T, k, d // k).transpose(1, 2)
        Gk = G.to(acc).reshape(B, T, k, p // k).transpose(1, 2)
        return (Ak @ Ak.mT).mul_(Gk @ Gk.mT).sum((1, 2, 3))
    return per_sample_grad_sqnorm(A, G, groups=k, backend=backend)


def _patches_sqnorm(piece: Patches, mode: str, backend: str) -> torch.Tensor:
    x, g, k = piece.x, piece.g, piece.groups
    T = g.shape[2] * g.shape[3]
    dg = x.shape[1] * piece.kernel_size[0] * piece.kernel_size[1] // k
    pg = g.shape[1] // k
    if T == 1 or mode == "ghost" or (mode == "auto" and 2 * T * T <= pg * dg):
        return _pair_sqnorm(piece.pair(), mode, backend)
    dtype = torch.promote_types(x.dtype, g.dtype)
    if g.stride(2) != g.shape[3] * g.stride(3):
        g = g.contiguous()
    return per_sample_conv_grad_sqnorm(x.to(dtype), g.to(dtype), piece.kernel_size, stride=piece.stride,
                                       padding=piece.padding, dilation=piece.dilation, groups=k, backend=backend)


def _rows_sqnorm(piece: Rows) -> torch.Tensor:
    """Σ over each sample's unique tokens of ‖Σ_t g_t‖²: the sample's positions sorted by token
    (stable), each token's sum a difference of float64 prefix sums within the sample —
    deterministic on every device (an ``index_add_`` would use float atomics on CUDA), and no sum
    runs across samples, so a sample's small norm is not lost against its neighbours'."""
    ids, G = piece.ids, piece.G
    B, T = ids.shape
    acc = _acc(G.dtype)
    if T == 0:
        return torch.zeros(B, dtype=acc, device=G.device)
    ids, order = torch.sort(ids, dim=1, stable=True)  # padding (-1) first
    prefix = torch.gather(G, 1, order.unsqueeze(2).expand_as(G)).to(torch.float64).cumsum(1)
    last = torch.ones_like(ids, dtype=torch.bool)
    last[:, :-1] = ids[:, 1:] != ids[:, :-1]  # the last position of each token's run
    b, t = last.nonzero(as_tuple=True)  # sample-major, positions ascending
    rows = prefix[b, t]
    same = b[1:] == b[:-1]
    rows[1:] -= torch.where(same.unsqueeze(1), prefix[b[:-1], t[:-1]], 0.0)
    squared = torch.zeros(B, T, dtype=torch.float64, device=G.device)
    squared[b, t] = torch.where(ids[b, t] >= 0, rows.square().sum(1), 0.0)  # padding sends no gradient
    return squared.sum(1).to(acc)
