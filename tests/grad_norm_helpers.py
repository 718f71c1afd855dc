"""The oracle of the full-model per-sample gradient norm tests: ``torch.func.vmap(grad)`` over the
whole model (exact, B × P memory), in eval mode, over the trainable parameters only."""

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def vmap_grad_norms(model, inputs, targets, loss_fn=None, per_param=False):
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="none"))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(ps, x, y):
        out = functional_call(model, (ps, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0)).sum()

    try:
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, inputs, targets)
    finally:
        for m, t in modes:
            m.training = t
    sq = {n: g.flatten(1).square().sum(1) for n, g in grads.items()}
    total = sum(sq.values()).sqrt() if sq else torch.zeros(len(targets))
    return (total, sq) if per_param else total
