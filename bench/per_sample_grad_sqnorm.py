"""``per_sample_grad_sqnorm`` at the layer shapes where ``grad_norms`` instantiates the per-sample
gradient (2T² > p·d): ResNet-50's first stage (T = 16² at 64 px, 56² at 224 px; the 1×1 and 3×3
convolutions' unfolded inputs) and a depthwise convolution, batch 32. Against what a user would
write: ``torch.bmm`` forming the B × p × d gradients then squaring and summing them (the bytes of
that buffer are in the note), and the ghost form ``⟨AAᵀ, GGᵀ⟩`` through two bmm Gram matrices.
GFLOP/s count the 2·B·T·p·d multiply-adds of the gradient. The convolution cases also run
``per_sample_conv_grad_sqnorm``, which gathers the patches itself, against ``F.unfold`` followed by
the same two methods (the unfold is timed with them: it is what they need)."""

from __future__ import annotations

import torch

from .harness import Rows
import torch.nn.functional as F

from datadiet.ops import per_sample_conv_grad_sqnorm, per_sample_grad_sqnorm
from datadiet.reference.grad_norm import per_sample_grad_sqnorm_reference  # bmm + square-sum


def add_arguments(p) -> None:
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sizes", default="64,224", help="image sides whose first-stage shapes are run")


def _ghost(a, g, groups):
    B, T, d = a.shape
    p = g.shape[2]
    ak = a.view(B, T, groups, d // groups).transpose(1, 2)
    gk = g.view(B, T, groups, p // groups).transpose(1, 2)
    return ((ak @ ak.mT) * (gk @ gk.mT)).sum((1, 2, 3))


def run(args) -> list[dict]:
    device = args.device
    rows = Rows(device)
    backend = "cuda" if device.type == "cuda" else "cpu"
    B = args.batch
    cases = []
    for size in (int(s) for s in args.sizes.split(",")):
        side = size // 4
        T = side * side
        cases += [(f"{size}px layer1 3x3 conv 64->64 (T={T}, d=576, p=64)", T, 576, 64, 1),
                  (f"{size}px layer1 1x1 conv 64->256 (T={T}, d=64, p=256)", T, 64, 256, 1),
                  (f"{size}px layer1 1x1 conv 256->64 (T={T}, d=256, p=64)", T, 256, 64, 1),
                  (f"{size}px depthwise 3x3, 96 ch (T={T}, d=864, p=96, groups=96)", T, 864, 96, 96)]
    g = torch.Generator().manual_seed(0)
    for label, T, d, p, groups in cases:
        a = torch.randn(B, T, d, generator=g).to(device)
        grad = torch.randn(B, T, p, generator=g).to(device)
        flops = 2 * B * T * p * d // groups
        nbytes = 4 * B * T * (d + p)  # the inputs, read once
        buffer_mib = B * p * d // groups * 4 / 2**20
        case = f"{label}, batch {B}"
        rows.inputs(f"a [{B}, {T}, {d}], g [{B}, {T}, {p}], groups={groups}", a.dtype)
        ours = rows.add(case, "datadiet fused", lambda: per_sample_grad_sqnorm(a, grad, groups=groups, backend=backend),
                        baselines=("torch.bmm + square-sum", "ghost (bmm Grams)"),
                        note="no B x p x d buffer", nbytes=nbytes, flops=flops)
        base = rows.add(case, "torch.bmm + square-sum", lambda: per_sample_grad_sqnorm_reference(a, grad, groups),
                        note=f"{buffer_mib:.1f} MiB B x p x d buffer", nbytes=nbytes, flops=flops)
        gram_mib = B * groups * T * T * 8 / 2**20
        if gram_mib <= 1024:  # the ghost form's two Gram batches must fit
            rows.add(case, "ghost (bmm Grams)", lambda: _ghost(a, grad, groups),
                     note=f"{gram_mib:.0f} MiB of Gram matrices")
        want = per_sample_grad_sqnorm_reference(a.double(), grad.double(), groups)
        err = float(((per_sample_grad_sqnorm(a, grad, groups=groups, backend=backend).double() - want).abs()
                     / want).max())
        ours["note"] += f", max rel err vs float64 {err:.1e}"
    for size in (int(s) for s in args.sizes.split(",")):
        side = size // 4
        for label, C, O, k, stride, hw in ((f"{size}px layer1 3x3 conv 64->64 from the input", 64, 64, 3, 1, side),
                                           (f"{size}px conv1 7x7/2 3->64 from the image", 3, 64, 7, 2, size)):
            x = torch.randn(B, C, hw, hw, generator=g).to(device)
            out = (hw + 2 * (k // 2) - k) // stride + 1
            grad = torch.randn(B, O, out, out, generator=g).to(device)
            case = f"{label}, batch {B}"
            rows.inputs(f"x [{B}, {C}, {hw}, {hw}], g [{B}, {O}, {out}, {out}], kernel {k}, stride {stride}", x.dtype)
            flops = 2 * B * out * out * O * C * k * k
            nbytes = 4 * (x.numel() + grad.numel())

            def unfolded(x=x, grad=grad, k=k, stride=stride):
                cols = F.unfold(x, k, padding=k // 2, stride=stride).transpose(1, 2)
                return per_sample_grad_sqnorm_reference(cols, grad.flatten(2).transpose(1, 2), 1)

            ours = rows.add(case, "datadiet conv (patches gathered)",
                            lambda: per_sample_conv_grad_sqnorm(x, grad, k, stride=stride, padding=k // 2,
                                                                backend=backend),
                            baselines=("F.unfold + torch.bmm + square-sum",), note="no unfold, no B x p x d buffer",
                            nbytes=nbytes, flops=flops)
            base = rows.add(case, "F.unfold + torch.bmm + square-sum", unfolded,
                            note=f"{B * out * out * C * k * k * 4 / 2**20:.0f} MiB unfold", nbytes=nbytes, flops=flops)
    return rows
