"""weighted_sample vs torch.multinomial(replacement=False), numpy's Generator.choice(replace=False,
p=...), and exponential keys + torch.topk written in torch (eager and torch.compile), on one
run's data.

Cases: 1.28M weights (k = 10%), a minibatch (256, keep 50%: Composer's selective-backprop draw,
which samples with numpy on the host), per-class draws (1000 ragged classes, 10% each, vs a
Python loop of multinomial), and 5·10^7 weights (k = 10%), where torch.multinomial refuses
(over 2^24 categories; ``--no-large`` skips it). Every datadiet sample is checked (k distinct
indices of positive weight) before timing.
"""

from __future__ import annotations

import numpy as np
import torch

import datadiet
from .harness import Rows
from .topk_select import imagenet_classes, size_cases


def add_arguments(p) -> None:
    p.add_argument("--no-large", action="store_true", help="skip the 5e7 case")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")


def exp_keys_topk(w: torch.Tensor, k: int) -> torch.Tensor:
    """The same algorithm in stock torch: Exp(1) / w, k smallest."""
    return torch.topk(torch.empty_like(w).exponential_() / w, k, largest=False).indices


def check(w: torch.Tensor, idx: torch.Tensor, k: int, label: str) -> None:
    assert idx.numel() == k and torch.unique(idx).numel() == k, f"{label}: not {k} distinct indices"
    assert bool((w[idx] > 0).all()), f"{label}: drew a zero weight"


def run(args) -> list[dict]:
    device = args.device
    backends = ["cuda", "triton"] if device.type == "cuda" else ["cpu"]
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    rows = Rows(device)
    add = rows.add
    large = device.type == "cuda" or not args.no_large

    for n, frac, label in size_cases(large):
        heavy = n >= 10_000_000
        w = (torch.rand(n, generator=g) + 1e-3).to(device)
        k = int(frac * n)
        rows.inputs(f"[{n}], k={k}", w.dtype)
        check(w, datadiet.weighted_sample(w, k, seed=0, backend=backends[0]), k, label)
        base = []
        if n <= 2**24:
            add(label, "torch.multinomial", lambda: torch.multinomial(w, k, replacement=False), 4 * n)
            base.append("torch.multinomial")
        if not heavy:
            p = (w / w.sum()).double().cpu().numpy()
            p /= p.sum()
            add(label, "numpy choice", lambda: rng.choice(n, size=k, replace=False, p=p), 4 * n)
            base.append("numpy choice")
        add(label, "torch exp-keys + topk", lambda: exp_keys_topk(w, k), 4 * n, heavy=heavy)
        base.append("torch exp-keys + topk")
        if not args.no_compile and not heavy:
            compiled = torch.compile(lambda x: exp_keys_topk(x, k), dynamic=False)
            add(label, "torch.compile exp-keys + topk", lambda: compiled(w), 4 * n)
            base.append("torch.compile exp-keys + topk")
        for b in backends:
            add(label, f"datadiet {b}", lambda b=b: datadiet.weighted_sample(w, k, seed=1, check_values=False,
                                                                             backend=b), 4 * n, base, heavy=heavy)

    sizes, offsets = imagenet_classes(g)
    w = (torch.rand(offsets[-1], generator=g) + 1e-3).to(device)
    ks = [size // 10 for size in sizes]
    label = "per class: 1000 ragged classes, 10%"
    rows.inputs(f"[{w.numel()}] in 1000 segments, k={sum(ks)}", w.dtype)
    check(w, datadiet.weighted_sample(w, ks, offsets=offsets, seed=0, backend=backends[0]), sum(ks), label)
    add(label, "python loop of torch.multinomial",
        lambda: [torch.multinomial(w[a:b], kk) for a, b, kk in zip(offsets[:-1], offsets[1:], ks)], 4 * w.numel())
    for b in backends:
        add(label, f"datadiet {b}", lambda b=b: datadiet.weighted_sample(w, ks, offsets=offsets, seed=1,
                                                                         check_values=False, backend=b),
            4 * w.numel(), ["python loop of torch.multinomial"])
    return rows
