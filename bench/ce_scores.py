"""ce_scores: the fused op vs the eager PyTorch composite computing the same outputs, vs
``torch.compile`` of that composite, and vs a plain read pass over the logits (the
memory floor). On CUDA also the Triton kernel and % of the GPU's DRAM peak.

ImageNet scale (1.28M x 1000, 5.1 GB of fp32 logits) is behind ``--imagenet``; there
only the fused kernels and the read pass run (the composite needs ~6 copies of the logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import datadiet
from .harness import Rows

DEFAULT_SIZES = ["256x1000", "4096x1000", "65536x1000"]
IMAGENET = "1281167x1000"


def add_arguments(p) -> None:
    p.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="comma-separated NxC")
    p.add_argument("--imagenet", action="store_true", help=f"add {IMAGENET} (fused kernels and read pass only)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--embedding", action="store_true", help="also time writing the p - onehot embedding")


def composite(logits, targets, feature_sqnorm):
    """What users write today: the same seven outputs from stock PyTorch ops."""
    z = logits.float()
    loss = F.cross_entropy(z, targets, reduction="none")
    logp = z.log_softmax(dim=1)
    p = logp.exp()
    e = p - F.one_hot(targets, z.shape[1]).to(p.dtype)
    el2n = torch.linalg.vector_norm(e, dim=1)
    grad_norm = el2n * torch.sqrt(feature_sqnorm + 1)
    top2 = p.topk(2, dim=1).values
    confidence, margin = top2[:, 0], top2[:, 0] - top2[:, 1]
    entropy = -(p * logp).sum(dim=1)
    correct = z.argmax(dim=1) == targets
    return loss, el2n, grad_norm, confidence, margin, entropy, correct


def run(args) -> list[dict]:
    device, dtype = args.device, getattr(torch, args.dtype)
    sizes = [s for s in args.sizes.split(",") if s] + ([IMAGENET] if args.imagenet else [])
    compiled = None if args.no_compile else torch.compile(composite, dynamic=False)
    backends = ["cuda", "triton"] if device.type == "cuda" else ["cpu"]
    rows = Rows(device)
    for size in sizes:
        n, c = (int(v) for v in size.split("x"))
        case = f"{n}x{c} {args.dtype}"
        g = torch.Generator(device=device).manual_seed(0)
        logits = torch.randn(n, c, generator=g, device=device, dtype=torch.float32).mul_(3).to(dtype)
        targets = torch.randint(0, c, (n,), generator=g, device=device)
        hsq = torch.rand(n, generator=g, device=device) * 100
        nbytes = logits.numel() * logits.element_size()
        small = n * c <= 65536 * 1000
        rows.inputs(f"logits [{n}, {c}], targets [{n}]", dtype)

        def add(method, fn, baselines=(), floor=None):
            rows.add(case, method, fn, nbytes, baselines, floor)

        read = "read pass (logits.sum)"
        add(read, lambda: logits.sum())
        baselines = []
        if small:
            add("eager composite", lambda: composite(logits, targets, hsq))
            baselines.append("eager composite")
            if compiled is not None:
                add("torch.compile composite", lambda: compiled(logits, targets, hsq), baselines)
                baselines.append("torch.compile composite")
        for b in backends:
            add(f"datadiet {b}", lambda b=b: datadiet.ce_scores(
                logits, targets, feature_sqnorm=hsq, check_values=False, backend=b), baselines, read)
            if args.embedding:
                add(f"datadiet {b} + embedding", lambda b=b: datadiet.ce_scores(
                    logits, targets, feature_sqnorm=hsq, return_embedding=True, check_values=False, backend=b),
                    (), read)
        del logits
    return rows
