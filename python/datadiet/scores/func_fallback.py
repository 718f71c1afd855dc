"""``grad_norms``' fallback for parameters no layer rule covers: the exact per-sample gradient of
a module's own parameters by ``torch.func`` — ``vmap`` over the batch of the ``vjp`` of the
module's forward w.r.t. only those parameters (the rest of the module, its submodules included,
is held fixed), with the inputs and output gradients the forward / tensor hooks recorded.

A module called once has its per-sample squared norm taken inside the ``vmap``; one called
several times has its per-sample gradients (of the covered parameters only: a class token, a
position embedding, an attention projection) summed over the calls before squaring.

Which tensors are per-sample (split along dim 0): floating-point ones on the batch's gradient path
(``grad_norms`` makes the float inputs roots and freezes every parameter, so exactly the tensors
computed from the batch require grad — one computed under ``no_grad`` or detached inside the model
counts as shared), and integer / boolean ones with B entries in dim 0 (token ids, masks).
``nn.MultiheadAttention``'s query / key / value and output go along dim 1 when
``batch_first=False``; its ``key_padding_mask`` along dim 0 and its ``attn_mask`` whole. Every
other tensor is passed whole to each sample.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten


def fallback_sqnorm(module: nn.Module, names: tuple[str, ...], calls: list, B: int, acc: torch.dtype) -> torch.Tensor:
    """``[B]`` squared norm of the per-sample gradient of ``module``'s parameters ``names`` over its
    recorded calls (``grad_norms``' ``_Call``s)."""
    params = {n: module.get_parameter(n) for n in names}
    if len(calls) == 1:
        return _per_sample(module, params, calls[0], B, acc, squared=True)
    grads = [_per_sample(module, params, c, B, acc, squared=False) for c in calls]
    return sum(sum(g[n] for g in grads).flatten(1).square().sum(1) for n in names)


def _per_sample(module, params, call, B, acc, squared):
    flat, spec = tree_flatten((call.args, call.kwargs))
    in_dims = _input_dims(module, call, flat, B)
    batched = [k for k, d in enumerate(in_dims) if d is not None]
    wanted = sorted(call.grads)  # output leaves that received a gradient
    out_dims = [_output_dim(module, k, call.shapes[k], B) for k in wanted]
    cotangents = [call.grads[k] for k in wanted]

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
        if squared:
            return sum(g.to(acc).square().sum() for g in grads.values())
        return {n: g.to(acc) for n, g in grads.items()}

    try:
        return vmap(one_sample, in_dims=([in_dims[k] for k in batched], out_dims))(
            [flat[k] for k in batched], cotangents)
    except Exception as exc:
        raise RuntimeError(f"grad_norms: the torch.func fallback for the parameters {list(params)} of a "
                           f"{type(module).__name__} failed ({type(exc).__name__}: {exc}); its forward must be "
                           "vmap-able over batch-first inputs (no in-place updates of buffers, no random ops in "
                           "train mode). Freeze those parameters or pass fallback=False to see every uncovered "
                           "parameter") from exc


def _input_dims(module: nn.Module, call, flat: list, B: int) -> list:
    """The batch dim of each flattened argument, or None for one passed whole to every sample."""
    named = _argument_names(module, call)
    mha = isinstance(module, nn.MultiheadAttention)
    dims = []
    for k, t in enumerate(flat):
        name = named.get(k)
        if not isinstance(t, torch.Tensor):
            dims.append(None)
        elif mha and name in ("query", "key", "value"):
            dims.append(0 if module.batch_first else 1)
        elif mha and name == "attn_mask":
            if t.dim() == 3:
                raise ValueError("grad_norms: the torch.func fallback of nn.MultiheadAttention takes a 2-D attn_mask "
                                 "(shared by the batch); a 3-D per-sample-and-head mask is not supported")
            dims.append(None)
        elif mha and name == "key_padding_mask":
            dims.append(0)
        elif t.is_floating_point() or t.is_complex():
            dims.append(0 if call.on_path[k] else None)
        else:
            dims.append(0 if t.dim() > 0 and t.shape[0] == B else None)
    return dims


def _argument_names(module: nn.Module, call) -> dict:
    """Flattened argument index -> parameter name, for the positional arguments of an
    ``nn.MultiheadAttention`` (query, key, value, key_padding_mask, need_weights, attn_mask) and
    every keyword argument that is a single tensor."""
    names = {}
    positional = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    k = 0
    for i, a in enumerate(call.args):
        size = len(tree_flatten(a)[0])
        if size == 1 and isinstance(module, nn.MultiheadAttention) and i < len(positional):
            names[k] = positional[i]
        k += size
    for name, value in call.kwargs.items():
        size = len(tree_flatten(value)[0])
        if size == 1:
            names[k] = name
        k += size
    return names


def _output_dim(module: nn.Module, k: int, shape: torch.Size, B: int) -> int:
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first and k == 0:
        return 1
    if len(shape) == 0 or shape[0] != B:
        raise ValueError(f"grad_norms: the output of a {type(module).__name__} has shape {tuple(shape)}, "
                         f"without a batch dim of {B} first; the torch.func fallback cannot split it per sample")
    return 0
