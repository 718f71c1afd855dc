"""Plain-PyTorch reference of ``per_sample_grad_sqnorm`` (``backend="torch"`` and the tests'
oracle): the per-sample, per-group gradients ``G_{i,k}ᵀ A_{i,k}`` formed with ``torch.bmm`` in the
accumulation dtype (float64 for float64 inputs, float32 otherwise), squared and summed — the
``B × p × d`` buffer the fused kernels avoid."""

from __future__ import annotations

import torch


def per_sample_grad_sqnorm_reference(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    B, T, d = a.shape
    p = g.shape[2]
    if B == 0 or T == 0 or d == 0 or p == 0:
        return torch.zeros(B, dtype=acc, device=a.device)
    a_k = a.to(acc).reshape(B, T, groups, d // groups).permute(0, 2, 1, 3).reshape(B * groups, T, d // groups)
    g_k = g.to(acc).reshape(B, T, groups, p // groups).permute(0, 2, 3, 1).reshape(B * groups, p // groups, T)
    return torch.bmm(g_k, a_k).square().sum((1, 2)).view(B, groups).sum(1)


def per_sample_conv_grad_sqnorm_reference(x: torch.Tensor, g: torch.Tensor, kernel_size, stride, padding, dilation,
                                          groups: int) -> torch.Tensor:
    """The convolution form: A = ``F.unfold(x)`` materialised (``[B, Ho·Wo, C·kh·kw]``), G = g's
    spatial dims flattened, then ``per_sample_grad_sqnorm_reference``."""
    import torch.nn.functional as F

    B = x.shape[0]
    if B == 0:
        return torch.zeros(0, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return per_sample_grad_sqnorm_reference(cols.transpose(1, 2), g.reshape(B, g.shape[1], -1).transpose(1, 2),
                                            groups)
