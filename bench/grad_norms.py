"""Exact whole-model per-sample gradient norms: ``datadiet.scores.grad_norms`` against the ways
peers get them, on torchvision ResNet-18 and ResNet-50, one batch, in one run:

- ``torch.func.vmap(grad)`` (the original GraNd code's approach; B × P gradients in memory,
  ``--vmap-chunk`` samples at a time),
- a loop of per-sample forward + backward passes (B passes of batch 1),
- a plain forward + backward of the batch (the floor: what training costs; no per-sample norm).

Times come from one child process running the methods in interleaved rounds (median per method;
this machine's speed drifts, interleaving keeps the ratios fair). Peak memory comes from one
child process per method (spawned): its VmHWM (resident high-water mark) after a warm-up and a
call, less the VmHWM of a child that only built the model and the batch (on CUDA: peak allocated).
All methods use eval mode (per-sample gradients are undefined under train-mode BatchNorm); the
norms of every method are checked against ours in the note column.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import torch

from .harness import stats


def add_arguments(p) -> None:
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--vmap-chunk", type=int, default=8, help="samples per vmap(grad) chunk (0: the whole batch)")


METHODS = ("setup only", "datadiet grad_norms", "torch.func vmap(grad)", "per-sample loop", "forward + backward")


def run(args) -> list[dict]:
    rows = []
    ctx = mp.get_context("spawn")
    for name in args.models.split(","):
        case = f"{name}, batch {args.batch}, {args.size}px, {args.classes} classes, {args.device.type}"
        setting = (name, args.batch, args.size, args.classes, args.vmap_chunk, str(args.device), torch.get_num_threads())
        with ctx.Pool(1) as pool:
            timed = pool.apply(_child, (*setting, METHODS[1:], args.repeat))
        peaks = {}
        for method in METHODS:
            with ctx.Pool(1) as pool:
                peaks[method] = pool.apply(_child, (*setting, (method,), 1))["peak_kib"]
        base = peaks["setup only"]
        floor_mem = peaks["forward + backward"] - base
        ours = timed["norms"]["datadiet grad_norms"]
        for method in METHODS[1:]:
            extra = (peaks[method] - base) / 1024
            note = f"peak +{extra:.0f} MiB ({(peaks[method] - base) / max(floor_mem, 1):.2f}x fwd+bwd's)"
            norms = timed["norms"].get(method)
            if norms is not None and method != METHODS[1]:
                note += f", max rel diff to ours {float(((norms - ours).abs() / ours).max()):.1e}"
            rows.append({"case": case, "method": method, **timed["timings"][method], "bytes": None,
                         "baselines": ["torch.func vmap(grad)", "per-sample loop"] if method == METHODS[1] else [],
                         "floor": "forward + backward" if method == METHODS[1] else None, "note": note,
                         "peak_mib": extra})
    return rows


def _child(name, batch, size, classes, chunk, device, threads, methods, repeat):
    """Runs ``methods`` (one warm-up each, then ``repeat`` interleaved rounds); returns the median
    seconds and the norms of each, and this process's peak memory."""
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

    fns = {"setup only": None, "datadiet grad_norms": ours, "torch.func vmap(grad)": vmapped,
           "per-sample loop": loop, "forward + backward": plain}
    times: dict = {m: [] for m in methods}
    norms = {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for m in methods:
        if fns[m] is not None:
            fns[m]()  # warm-up
    for _ in range(repeat):
        for m in methods:
            if fns[m] is None:
                continue
            sync()
            start = time.perf_counter()
            out = fns[m]()
            sync()
            times[m].append(time.perf_counter() - start)
            if isinstance(out, torch.Tensor):
                norms[m] = out.detach().double().cpu()
    peak = torch.cuda.max_memory_allocated(device) // 1024 if device.type == "cuda" else _vmhwm_kib()
    return {"timings": {m: stats(t) for m, t in times.items() if t}, "norms": norms, "peak_kib": peak}


def _vmhwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
