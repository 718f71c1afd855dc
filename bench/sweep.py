"""``--sweep``: one op over a range of sizes, on each of its backends, plotted as time and
achieved bandwidth (or arithmetic rate) against the bytes (or FLOPs) a call moves, with the
roofline drawn in — where the curve leaves the roofline is where the kernel stops being
memory-bound (launch and scheduling overheads at the left, caches in the middle).

Each entry of ``SWEEPS`` builds one call of the op at a size and says what it moves.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch

import datadiet

from .harness import Rows, finish_rows, peaks


class Point(NamedTuple):
    label: str  # the shape and dtype, e.g. "4096x1000 float32"
    nbytes: int
    flops: float  # 0 for memory-bound ops
    calls: dict  # method -> zero-argument callable


def _backends(device: torch.device) -> list[str]:
    return [b for b in datadiet.backends.available(device) if b in ("cpu", "cuda", "triton")]


def ce_scores_point(n: int, device: torch.device) -> Point:
    c = 1000
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(n, c, generator=g, device=device) * 3
    targets = torch.randint(0, c, (n,), generator=g, device=device)
    calls = {"read pass (logits.sum)": lambda: logits.sum()}
    for b in _backends(device):
        calls[f"datadiet {b}"] = lambda b=b: datadiet.ce_scores(logits, targets, check_values=False, backend=b)
    return Point(f"{n}x{c} float32", logits.numel() * 4, 0.0, calls)


def topk_select_point(n: int, device: torch.device) -> Point:
    s = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(device)
    k = max(1, n // 10)
    calls = {"torch.topk": lambda: torch.topk(s, k)}
    for b in _backends(device):
        calls[f"datadiet {b}"] = lambda b=b: datadiet.topk_select(s, k, backend=b)
    return Point(f"{n} float32, k={k}", 4 * n, 0.0, calls)


def weighted_sample_point(n: int, device: torch.device) -> Point:
    w = torch.rand(n, generator=torch.Generator().manual_seed(0)).to(device)
    k = max(1, n // 10)
    calls = {}
    for b in _backends(device):
        calls[f"datadiet {b}"] = lambda b=b: datadiet.weighted_sample(w, k, seed=0, backend=b)
    return Point(f"{n} float32, k={k}", 4 * n, 0.0, calls)


def average_point(n: int, device: torch.device) -> Point:
    """A running soup's update: dst ← average of 3 sources (one tensor of n floats each)."""
    g = torch.Generator().manual_seed(0)
    dst = torch.zeros(n, device=device)
    sources = [torch.randn(n, generator=g).to(device) for _ in range(3)]
    calls = {"torch (sum of scaled sources)": lambda: dst.copy_(sum(s * (1 / 3) for s in sources))}
    for b in _backends(device):
        calls[f"datadiet {b}"] = lambda b=b: datadiet.ops.average_([dst], [[s] for s in sources],
                                                                  [1 / 3] * 3, backend=b)
    return Point(f"3 x {n} float32", 4 * n * 4, 0.0, calls)


def per_sample_grad_sqnorm_point(t: int, device: torch.device) -> Point:
    """A 256→256 linear layer over T tokens, batch 16: Σ_i ‖G_iᵀ A_i‖²."""
    b, d, p = 16, 256, 256
    g = torch.Generator().manual_seed(0)
    a, gr = torch.randn(b, t, d, generator=g).to(device), torch.randn(b, t, p, generator=g).to(device)
    calls = {}
    for be in _backends(device):
        calls[f"datadiet {be}"] = lambda be=be: datadiet.ops.per_sample_grad_sqnorm(a, gr, backend=be)
    return Point(f"B={b}, T={t}, {d}->{p} float32", 4 * b * t * (d + p), 2.0 * b * t * d * p, calls)


class Sweep(NamedTuple):
    point: Callable[[int, torch.device], Point]
    sizes: dict  # device type -> sizes
    axis: str


SWEEPS = {
    "ce_scores": Sweep(ce_scores_point, {"cpu": [2**i for i in range(4, 17, 2)], "cuda": [2**i for i in range(4, 21)]},
                       "bytes of logits"),
    "topk_select": Sweep(topk_select_point, {"cpu": [4**i for i in range(4, 13)], "cuda": [4**i for i in range(4, 14)]},
                         "bytes of scores"),
    "weighted_sample": Sweep(weighted_sample_point, {"cpu": [4**i for i in range(4, 13)],
                                                     "cuda": [4**i for i in range(4, 14)]}, "bytes of weights"),
    "merge": Sweep(average_point, {"cpu": [4**i for i in range(4, 13)], "cuda": [4**i for i in range(4, 14)]},
                   "bytes read and written"),
    "per_sample_grad_sqnorm": Sweep(per_sample_grad_sqnorm_point, {"cpu": [1, 4, 16, 64, 256, 1024],
                                                                    "cuda": [1, 4, 16, 64, 256, 1024, 4096]},
                                    "bytes of activations and gradients"),
}


def run(op: str, device: torch.device, max_size: int = 0) -> list[dict]:
    """The sweep's rows (one per size and method), finished (GB/s, roofline)."""
    sweep = SWEEPS[op]
    rows = Rows(device)
    for size in sweep.sizes["cuda" if device.type == "cuda" else "cpu"]:
        if max_size and size > max_size:
            break
        point = sweep.point(size, device)
        rows.inputs(point.label, "float32")  # every sweep's inputs are float32
        for method, fn in point.calls.items():
            rows.add(point.label, method, fn, point.nbytes, flops=point.flops or None)
            rows[-1]["size"] = size
    return finish_rows(rows, device)


def plot(op: str, rows: list[dict], device: torch.device, path: str) -> None:
    """Time and GB/s (GFLOP/s for FLOP-bound ops) against the bytes moved, one line per method,
    with the roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak = peaks(device.type)
    flops_bound = any(r.get("flops") for r in rows)
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        x = [r["bytes"] for r in mine]
        ax_t.plot(x, [r["seconds"] * 1e3 for r in mine], marker="o", label=method)
        rate = [r["gflop_per_s"] if flops_bound else r["gb_per_s"] for r in mine]
        ax_r.plot(x, rate, marker="o", label=method)
    roof = {r["bytes"]: r["roofline_s"] for r in rows if "roofline_s" in r}
    if roof:
        ax_t.plot(sorted(roof), [roof[b] * 1e3 for b in sorted(roof)], "k--", label="roofline")
    limit = (peak["flops"] if flops_bound else peak["bytes_per_s"]) or 0.0
    limit /= 1e9
    if limit:
        ax_r.axhline(limit, color="k", linestyle="--", label=f"peak ({peak['source']})")
    ax_t.set(xscale="log", yscale="log", xlabel=SWEEPS[op].axis, ylabel="median ms", title=f"{op} on {device.type}")
    ax_r.set(xscale="log", yscale="log", xlabel=SWEEPS[op].axis, ylabel="GFLOP/s" if flops_bound else "GB/s",
             title="achieved rate vs roofline")
    ax_t.legend(fontsize=7)
    ax_r.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
