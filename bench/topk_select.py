"""topk_select vs torch.topk (sorted and unsorted), torch.sort, and — per class — a Python loop of
torch.topk and a padded-rows torch.topk, on one run's data.

Cases: ImageNet-sized scores (1.28M, k = 10%), ImageNet-shaped per-class budgets (1000 ragged
classes of 732-1300 samples, 10% each), one minibatch (256, keep 50%), and 5·10^7 scores
(k = 10%; ``--no-large`` skips it). Every datadiet result is checked against torch before timing.
"""

from __future__ import annotations

import torch

import datadiet
from .harness import Rows


def add_arguments(p) -> None:
    p.add_argument("--no-large", action="store_true", help="skip the 5e7 case")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")


def imagenet_classes(gen: torch.Generator) -> tuple[list[int], list[int]]:
    """1000 ragged ImageNet-like class sizes (732-1300) and their offsets."""
    sizes = torch.randint(732, 1301, (1000,), generator=gen).tolist()
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return sizes, offsets


def size_cases(large: bool) -> list[tuple[int, float, str]]:
    """(n, fraction kept, label) of the whole-vector cases shared by the selection benchmarks."""
    cases = [(1_281_167, 0.1, "1.28M, k=10%"), (256, 0.5, "batch 256, keep 50%")]
    return cases + ([(50_000_000, 0.1, "5e7, k=10%")] if large else [])


def run(args) -> list[dict]:
    device = args.device
    backends = ["cuda", "triton"] if device.type == "cuda" else ["cpu"]
    g = torch.Generator().manual_seed(0)
    rows = Rows(device)
    add = rows.add
    large = device.type == "cuda" or not args.no_large

    for n, frac, label in size_cases(large):
        heavy = n >= 10_000_000
        s = torch.randn(n, generator=g).to(device)
        k = int(frac * n)
        rows.inputs(f"[{n}], k={k}", s.dtype)
        got = datadiet.topk_select(s, k, backend=backends[0])
        assert torch.equal(s[got], torch.topk(s, k).values), f"{label}: topk_select disagrees with torch.topk"
        base = ["torch.topk sorted", "torch.topk unsorted", "torch.sort"]
        add(label, "torch.topk sorted", lambda: torch.topk(s, k, sorted=True), 4 * n, heavy=heavy)
        add(label, "torch.topk unsorted", lambda: torch.topk(s, k, sorted=False), 4 * n, heavy=heavy)
        add(label, "torch.sort", lambda: torch.sort(s, descending=True), 4 * n, heavy=heavy)
        if not args.no_compile and not heavy:
            compiled = torch.compile(lambda x: torch.topk(x, k, sorted=True), dynamic=False)
            add(label, "torch.compile topk", lambda: compiled(s), 4 * n)
            base.append("torch.compile topk")
        for b in backends:
            add(label, f"datadiet {b}", lambda b=b: datadiet.topk_select(s, k, backend=b), 4 * n, base, heavy=heavy)

    sizes, offsets = imagenet_classes(g)
    s = torch.randn(offsets[-1], generator=g).to(device)
    ks = [size // 10 for size in sizes]
    label = "per class: 1000 ragged classes, 10%"
    rows.inputs(f"[{s.numel()}] in 1000 segments, k={sum(ks)}", s.dtype)
    got = datadiet.topk_select(s, ks, offsets=offsets, backend=backends[0])
    loop = [torch.topk(s[a:b], kk).indices + a for a, b, kk in zip(offsets[:-1], offsets[1:], ks)]
    assert torch.equal(s[got], s[torch.cat(loop)]), "per-class topk_select disagrees with torch.topk"
    width = max(sizes)
    padded = torch.full((1000, width), float("-inf"), device=device)
    cols = torch.arange(width, device=device)
    lengths = torch.tensor(sizes, device=device)
    mask = cols.unsqueeze(0) < lengths.unsqueeze(1)

    def padded_topk():
        padded[mask] = s  # scatter into rows, then one batched topk at the largest k
        return torch.topk(padded, max(ks), dim=1)

    add(label, "python loop of torch.topk",
        lambda: [torch.topk(s[a:b], kk) for a, b, kk in zip(offsets[:-1], offsets[1:], ks)], 4 * s.numel())
    add(label, "padded rows + torch.topk", padded_topk, 4 * s.numel())
    for b in backends:
        add(label, f"datadiet {b}", lambda b=b: datadiet.topk_select(s, ks, offsets=offsets, backend=b),
            4 * s.numel(), ["python loop of torch.topk", "padded rows + torch.topk"])
    return rows
