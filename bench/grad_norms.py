"""Exact whole-model per-sample gradient norms: ``datadiet.scores.grad_norms`` against the ways
peers get them, on torchvision ResNet-18 and ResNet-50, one batch, in one run:

- ``torch.func.vmap(grad)`` (the original GraNd code's approach; B × P gradients in memory,
  ``--vmap-chunk`` samples at a time),
- a loop of per-sample forward + backward passes (B passes of batch 1),
- a plain forward + backward of the batch (the floor: what training costs; no per-sample norm).

Each method runs in its own child process (spawned), so its peak memory is that process's VmHWM
(resident high-water mark) less the VmHWM of a child that only built the model and the batch.
All methods use eval mode (per-sample gradients are undefined under train-mode BatchNorm); the
norms of every method are checked against ours in the note column.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import torch


def add_arguments(p) -> None:
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--vmap-chunk", type=int, default=8, help="samples per vmap(grad) chunk (0: the whole batch)")


METHODS = ("setup only", "datadiet grad_norms", "torch.func vmap(grad)", "per-sample loop", "forward + backward")


def run(args) -> list[dict]:
    rows = []
    ctx = mp.get_context("spawn")
    for name in args.models.split(","):
        case = f"{name}, batch {args.batch}, {args.size}px, {args.classes} classes, {args.device.type}"
        results = {}
        for method in METHODS:
            with ctx.Pool(1) as pool:
                results[method] = pool.apply(_child, (name, method, args.batch, args.size, args.classes,
                                                      args.repeat, args.vmap_chunk, str(args.device),
                                                      torch.get_num_threads()))
        base = results["setup only"]["peak_kib"]
        ours = results["datadiet grad_norms"]
        floor_mem = results["forward + backward"]["peak_kib"] - base
        for method in METHODS[1:]:
            r = results[method]
            extra = (r["peak_kib"] - base) / 1024
            note = f"peak +{extra:.0f} MiB ({(r['peak_kib'] - base) / max(floor_mem, 1):.2f}x fwd+bwd's)"
            if r.get("norms") is not None and method != "datadiet grad_norms":
                rel = ((r["norms"] - ours["norms"]).abs() / ours["norms"]).max()
                note += f", max rel diff to ours {float(rel):.1e}"
            rows.append({"case": case, "method": method, "seconds": r["seconds"], "bytes": None,
                         "baselines": ["torch.func vmap(grad)", "per-sample loop"] if method == METHODS[1] else [],
                         "floor": "forward + backward" if method == METHODS[1] else None, "note": note,
                         "peak_mib": extra})
    return rows


def _child(name, method, batch, size, classes, repeat, chunk, device, threads):
    import torchvision
    from torch.func import functional_call, grad, vmap

    from datadiet.scores import grad_norms

    torch.set_num_threads(threads)
    device = torch.device(device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=classes).to(device).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    ce = torch.nn.functional.cross_entropy

    def ours():
        return grad_norms(model, x, y)

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(ps, xi, yi):
        return ce(functional_call(model, (ps, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    def vmapped():
        per = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk or None)(params, x, y)
        return sum(v.flatten(1).square().sum(1) for v in per.values()).sqrt()

    def loop():
        out = []
        for i in range(batch):
            model.zero_grad(set_to_none=True)
            ce(model(x[i:i + 1]), y[i:i + 1]).backward()
            out.append(sum(p.grad.square().sum() for p in model.parameters()).sqrt())
        return torch.stack(out)

    def plain():
        model.zero_grad(set_to_none=True)
        ce(model(x), y, reduction="sum").backward()

    fn = {"setup only": None, "datadiet grad_norms": ours, "torch.func vmap(grad)": vmapped,
          "per-sample loop": loop, "forward + backward": plain}[method]
    times, norms = [], None
    if fn is not None:
        fn()  # warm-up
        for _ in range(repeat):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        norms = out.detach().double().cpu() if isinstance(out, torch.Tensor) else None
    peak = torch.cuda.max_memory_allocated(device) // 1024 if device.type == "cuda" else _vmhwm_kib()
    return {"seconds": statistics.median(times) if times else 0.0, "peak_kib": peak, "norms": norms}


def _vmhwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
