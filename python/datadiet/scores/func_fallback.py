"""``grad_norms``' fallback for parameters no layer rule covers: the exact per-sample gradient of
a module's own parameters by ``torch.func`` — ``vmap`` over the batch of the ``vjp`` of the
module's forward w.r.t. only those parameters (the rest of the module, its submodules included,
is held fixed), with the inputs and output gradients the forward / tensor hooks recorded.

The per-sample gradients held are those of the covered parameters only (a class token, a
position embedding, an attention in-projection), never the whole model's. Tensors are batched
along dim 0 — except ``nn.MultiheadAttention``'s query / key / value and attention output when
``batch_first=False`` (dim 1); a tensor whose batch dim does not have B entries (a shared
attention mask) is passed to every sample whole.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten


def fallback_sqnorm(module: nn.Module, names: tuple[str, ...], call, B: int, acc: torch.dtype) -> torch.Tensor:
    """``[B]`` squared norm of the per-sample gradient of ``module``'s parameters ``names`` for one
    recorded call (``grad_norms``' ``_Call``)."""
    flat, spec = tree_flatten((call.args, call.kwargs))
    in_dims = _input_dims(module, call, flat, B)
    batched = [k for k, d in enumerate(in_dims) if d is not None]
    wanted = sorted(call.grads)  # output leaves that received a gradient
    out_dims = [_output_dim(module, k, call.shapes[k], B) for k in wanted]
    cotangents = [call.grads[k] for k in wanted]
    params = {n: module.get_parameter(n) for n in names}

    def one_sample(values, cots):
        def forward(ps):
            args = list(flat)
            for k, v in zip(batched, values):
                args[k] = v.unsqueeze(in_dims[k])
            a, kw = tree_unflatten(args, spec)
            leaves = tree_flatten(functional_call(module, ps, tuple(a), kw))[0]
            return tuple(leaves[k] for k in wanted)

        _, pullback = vjp(forward, params)
        (grads,) = pullback(tuple(c.unsqueeze(d) for c, d in zip(cots, out_dims)))
        return sum(g.to(acc).square().sum() for g in grads.values())

    try:
        return vmap(one_sample, in_dims=([in_dims[k] for k in batched], out_dims))(
            [flat[k] for k in batched], cotangents)
    except Exception as exc:
        raise RuntimeError(f"grad_norms: the torch.func fallback for the parameters {list(names)} of a "
                           f"{type(module).__name__} failed ({type(exc).__name__}: {exc}); its forward must be "
                           "vmap-able over batch-first inputs (no in-place updates of buffers, no random ops in "
                           "train mode). Freeze those parameters or pass fallback=False to see every uncovered "
                           "parameter") from exc


def _input_dims(module: nn.Module, call, flat: list, B: int) -> list:
    mha_seq_first = isinstance(module, nn.MultiheadAttention) and not module.batch_first
    sequence = set()
    if mha_seq_first:  # query, key, value: positional or by name
        positional = len(tree_flatten(call.args)[0])
        sequence = {k for k in range(min(3, positional))}
        names = list(call.kwargs)
        offset = positional
        for name in names:
            size = len(tree_flatten(call.kwargs[name])[0])
            if name in ("query", "key", "value"):
                sequence.add(offset)
            offset += size
    dims = []
    for k, t in enumerate(flat):
        d = 1 if k in sequence else 0
        batched = isinstance(t, torch.Tensor) and t.dim() > d and t.shape[d] == B
        dims.append(d if batched else None)
    return dims


def _output_dim(module: nn.Module, k: int, shape: torch.Size, B: int) -> int:
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first and k == 0:
        return 1
    if len(shape) == 0 or shape[0] != B:
        raise ValueError(f"grad_norms: the output of a {type(module).__name__} has shape {tuple(shape)}, "
                         f"without a batch dim of {B} first; the torch.func fallback cannot split it per sample")
    return 0
