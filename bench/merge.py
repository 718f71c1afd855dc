"""Model merging on resnet18- and resnet50-sized parameter lists (torchvision, random init):

- ``magnitude_prune_`` (global, density 0.9, the conv/linear weights) vs
  ``torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=0.1)`` — what the ensembles' and LiPT's
  code runs — on fresh copies of the model each time, and the extra peak memory of each: on CPU
  measured in a child process as the rise of its peak RSS over the model's own footprint, on
  CUDA (``--device cuda``) as the rise of allocated GPU memory;
- a 10-model uniform soup: ``average_`` vs chained ``torch._foreach_mul`` / ``_foreach_add_`` and vs a
  Python loop over the parameters;
- one fold of a streaming soup, ``lerp_`` vs ``torch._foreach_lerp_``.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import time

import torch
import torchvision
from torch.nn.utils import prune as torch_prune

import datadiet
from .harness import Rows

ARCHS = ("resnet18", "resnet50")


def add_arguments(p) -> None:
    p.add_argument("--models", type=int, default=10, help="models in the soup")
    p.add_argument("--density", type=float, default=0.9)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)


def make(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)()


def torch_global_unstructured(model: torch.nn.Module, density: float) -> None:
    modules = dict(model.named_modules())
    pairs = [(modules[n.rsplit(".", 1)[0]], "weight") for n in datadiet.prune.prunable(model)]
    torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=1 - density)


def datadiet_prune(model: torch.nn.Module, density: float, masks: bool = True) -> None:
    datadiet.ops.magnitude_prune_(list(datadiet.prune.prunable(model).values()), density, return_masks=masks)


METHODS = {
    "prune.global_unstructured": torch_global_unstructured,
    "datadiet magnitude_prune_": datadiet_prune,
    "datadiet magnitude_prune_ (no masks)": lambda m, d: datadiet_prune(m, d, masks=False),
}


def fresh_timing(base: torch.nn.Module, fn, device: torch.device, repeat: int = 3) -> float:
    """Median time of fn on a fresh copy of base (the copy is not timed: pruning mutates it)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeat + 1):
        model = copy.deepcopy(base)
        sync()
        start = time.perf_counter()
        fn(model)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def extra_gpu_bytes(base: torch.nn.Module, fn) -> int:
    model = copy.deepcopy(base)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(model)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def peak_rss_bytes() -> int:
    """This process image's peak RSS (VmHWM; unlike ru_maxrss it does not inherit the parent's)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def extra_peak_bytes(arch: str, method: str, density: float) -> int:
    """The method's rise of the peak RSS above the model's, in a fresh child process."""
    code = ("import importlib, json; b = importlib.import_module(%r); m = b.make(%r); before = b.peak_rss_bytes(); "
            "b.METHODS[%r](m, %r); print(json.dumps(b.peak_rss_bytes() - before))" % (__name__, arch, method, density))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def run(args) -> list[dict]:
    device = args.device
    rows = Rows(device)
    for arch in args.archs:
        base = make(arch).to(device)
        params = datadiet.prune.prunable(base)
        nbytes = sum(p.numel() * p.element_size() for p in params.values())
        case = f"{arch} global prune to {args.density}: {len(params)} tensors, {nbytes / 2**20:.0f} MiB"
        for method, fn in METHODS.items():
            call = lambda m, fn=fn: fn(m, args.density)  # noqa: E731
            seconds = fresh_timing(base, call, device)
            gpu = device.type == "cuda"
            extra = extra_gpu_bytes(base, call) if gpu else extra_peak_bytes(arch, method, args.density)
            note = (f"extra peak {'GPU memory' if gpu else 'RSS'} {extra / 2**20:.1f} MiB "
                    f"({100 * extra / nbytes:.1f}% of weights)")
            rows.append({"case": case, "method": method, "seconds": seconds, "bytes": nbytes,
                         "baselines": [] if method.startswith("prune") else ["prune.global_unstructured"],
                         "floor": None, "note": note})
        soup(rows, arch, args.models, device)
    return rows


def soup(rows: Rows, arch: str, count: int, device: torch.device) -> None:
    models = [[p.detach() for p in make(arch, seed).to(device).parameters()] for seed in range(count)]
    dst = [torch.empty_like(p) for p in models[0]]
    w = [1.0 / count] * count
    nbytes = (count + 1) * sum(p.numel() * p.element_size() for p in dst)
    case = f"{arch} uniform soup of {count} models ({len(dst)} tensors, {nbytes / (count + 1) / 2**20:.0f} MiB each)"

    def chained_foreach():
        out = torch._foreach_mul(models[0], w[0])
        for m in range(1, count):
            torch._foreach_add_(out, models[m], alpha=w[m])
        return out

    def python_loop():
        return [sum(w[m] * models[m][t] for m in range(count)) for t in range(len(dst))]

    rows.add(case, "python loop over parameters", python_loop, nbytes)
    rows.add(case, "chained torch._foreach", chained_foreach, nbytes)
    rows.add(case, "datadiet average_", lambda: datadiet.ops.average_(dst, models, w), nbytes,
             baselines=["chained torch._foreach", "python loop over parameters"])
    fold = f"{arch} lerp_: fold one model into a running soup"
    nbytes = 3 * sum(p.numel() * p.element_size() for p in dst)
    rows.add(fold, "torch._foreach_lerp_", lambda: torch._foreach_lerp_(dst, models[1], 0.1), nbytes)
    rows.add(fold, "datadiet lerp_", lambda: datadiet.ops.lerp_(dst, models[1], 0.1), nbytes,
             baselines=["torch._foreach_lerp_"])
