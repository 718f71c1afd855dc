"""The GPU paths most likely to break, in one short stage (``scripts/gpu_check.sh smoke``, about
eight minutes on one H100 after the build); ``--device cpu --small`` runs the same code at toy
sizes on the CPU (the test suite does, so the script cannot rot between GPU loans).

1. ops at ImageNet's sizes on the device's compiled backends (CUDA, Triton) against the CPU
   kernel: top-k over 1.28M scores and per class, seeded sampling (the same draws), OMP per
   class (1,000 problems: the same objective), cross-entropy scores, per-sample convolution
   gradient norms in NCHW and channels-last (on the CPU: the plain-torch references);
2. a one-rank process group (NCCL on CUDA) through ``gather_rows``, ``route_rows``, the exact
   reductions of the sharded GLISTER and the selection broadcast;
3. the command line on the device with fp16 and bf16: GradMatch killed after a mid-epoch
   checkpoint and resumed, EL2N from an fp16 proxy with ``datadiet select`` and a run on its
   subset, whole-model GraNd, Selective-Backprop, InfoBatch and AdaSelection — every accuracy
   finite; each run's time split printed.

Exit status 1 when a check fails; every check runs and is reported first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

import torch

FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(name)


def ops(device: torch.device, small: bool) -> None:
    from datadiet import ops as datadiet

    print(f"ops on {device} against the CPU kernel", flush=True)
    backends = ["cuda", "triton"] if device.type == "cuda" else ["torch"]
    g = torch.Generator().manual_seed(0)
    n, classes = (5_000, 20) if small else (1_281_167, 1_000)
    scores = torch.rand(n, generator=g)
    labels = torch.sort(torch.randint(0, classes, (n,), generator=g)).values
    offsets = [0] + torch.bincount(labels, minlength=classes).cumsum(0).tolist()
    ks = [math.ceil(0.1 * (b - a)) for a, b in zip(offsets[:-1], offsets[1:])]
    want = {"topk": datadiet.topk_select(scores, n // 10, backend="cpu"),
            "topk per class": datadiet.topk_select(scores, ks, offsets=offsets, backend="cpu"),
            "weighted_sample": datadiet.weighted_sample(scores, n // 10, seed=7, backend="cpu")}
    c = 100 if small else 1_000
    logits, targets = torch.randn(4_096, c, generator=g) * 3, torch.randint(0, c, (4_096,), generator=g)
    ce = datadiet.ce_scores(logits, targets, backend="cpu")
    atoms, omp_offsets, budgets = _omp_problems(g, small)
    targets_omp = torch.stack([atoms[a:b].sum(0) for a, b in zip(omp_offsets[:-1], omp_offsets[1:])])
    omp_cpu = datadiet.omp(atoms, targets_omp, offsets=omp_offsets, budgets=budgets, lam=0.5, backend="cpu")
    x = torch.randn(8 if small else 64, 16 if small else 64, 28 if small else 56, 28 if small else 56, generator=g)
    gy = torch.randn(x.shape[0], 32 if small else 128, x.shape[2] // 2, x.shape[3] // 2, generator=g)
    conv = datadiet.per_sample_conv_grad_sqnorm(x, gy, 3, stride=2, padding=1, backend="cpu")
    for backend in backends:
        def on(t):
            return t.to(device)
        started = time.perf_counter()
        got = datadiet.topk_select(on(scores), n // 10, backend=backend).cpu()
        check(f"{backend} topk_select over {n}", torch.equal(torch.sort(got).values, torch.sort(want["topk"]).values))
        got = datadiet.topk_select(on(scores), ks, offsets=offsets, backend=backend).cpu()
        check(f"{backend} topk_select per class ({classes})", torch.equal(got, want["topk per class"]))
        got = datadiet.weighted_sample(on(scores), n // 10, seed=7, backend=backend).cpu()
        check(f"{backend} weighted_sample over {n} (the same draws)", torch.equal(got, want["weighted_sample"]))
        out = datadiet.ce_scores(on(logits), on(targets), backend=backend)
        close = all(torch.allclose(getattr(out, f).cpu().float(), getattr(ce, f).float(), rtol=1e-4, atol=1e-5)
                    for f in ("loss", "el2n", "confidence", "margin", "entropy"))
        check(f"{backend} ce_scores 4096 x {c}", close and torch.equal(out.correct.cpu(), ce.correct))
        if backend != "triton" or max(budgets) <= 2048:
            res = datadiet.omp(on(atoms), on(targets_omp), offsets=omp_offsets, budgets=budgets, lam=0.5,
                               backend=backend)
            worst = float(((res.residual.cpu() - omp_cpu.residual) / omp_cpu.target_norm.clamp_min(1e-12)).max())
            check(f"{backend} omp per class ({len(budgets)} problems)", worst <= 1e-3,
                  f"largest residual excess {worst:.2e} of the target norm")
        for layout in (torch.contiguous_format, torch.channels_last):
            norms = datadiet.per_sample_conv_grad_sqnorm(on(x).contiguous(memory_format=layout),
                                                         on(gy).contiguous(memory_format=layout), 3, stride=2,
                                                         padding=1, backend=backend).cpu()
            check(f"{backend} per_sample_conv_grad_sqnorm {tuple(x.shape)} {str(layout).split('.')[-1]}",
                  torch.allclose(norms, conv, rtol=1e-3, atol=1e-3))
        print(f"  {backend}: {time.perf_counter() - started:.1f} s", flush=True)


def _omp_problems(g: torch.Generator, small: bool):
    """Per-class OMP problems shaped like GradMatch's per-class embedding at 10%."""
    problems, rows, dim, budget = (20, 60, 17, 6) if small else (1_000, 1_281, 129, 128)
    atoms = torch.randn(problems * rows, dim, generator=g) * 0.1 + torch.randn(dim, generator=g)
    return atoms, [p * rows for p in range(problems + 1)], [budget] * problems


def process_group(device: torch.device) -> None:
    """In a child process (a fresh group): world 1, NCCL on CUDA, gloo on the CPU."""
    print(f"one-rank process group on {device}", flush=True)
    code = f"""
import os, torch
from datadiet import _dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1")
device = torch.device({str(device)!r})
torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
rows = torch.arange(10, device=device)
got = _dist.gather_rows({{"id": rows, "flag": rows % 2 == 0}}, device)
assert torch.equal(got["id"], rows) and torch.equal(got["flag"], rows % 2 == 0)
placed = _dist.route_rows({{"id": rows.float()}}, torch.zeros(10, dtype=torch.int64), device,
                          place=torch.arange(10).flip(0))
assert torch.equal(placed["id"].cpu(), torch.arange(10).flip(0).float())
value = torch.tensor([1.5, -2.0], device=device)
_dist.all_reduce_(value, "max")
_dist.all_reduce_(value, "sum")
assert value.tolist() == [1.5, -2.0]
box = [{{"indices": torch.arange(3)}}]
torch.distributed.broadcast_object_list(box, src=0)
assert torch.equal(box[0]["indices"], torch.arange(3))
torch.distributed.destroy_process_group()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    check("gather_rows, route_rows, all_reduce_, broadcast", done.returncode == 0, done.stderr.strip()[-800:])


def cli(device: torch.device, root: str) -> None:
    print(f"the command line on {device}", flush=True)
    gpu = device.type == "cuda"
    fp16, bf16 = ("fp16", "bf16") if gpu else ("none", "none")
    base = ["--device", device.type, "--no-progress", "--overwrite"]
    runs = {
        "gradmatch fp16": ["train", "--strategy", "gradmatch", "--fraction", "0.3", "--every", "2", "--epochs", "20",
                           "--amp", fp16, "--checkpoint-every", "5"],
        "grand full bf16": ["train", "--strategy", "grand", "--fraction", "0.3", "--param", "scope=full",
                            "--epochs", "4", "--amp", bf16],
        "selective_backprop bf16": ["train", "--strategy", "selective_backprop", "--epochs", "4", "--amp", bf16],
        "infobatch fp16": ["train", "--strategy", "infobatch", "--epochs", "4", "--amp", fp16],
        "adaselection bf16": ["train", "--strategy", "adaselection", "--epochs", "4", "--amp", bf16],
    }
    for name, args in runs.items():
        _summary(name, _run([*args, *base, "--out", os.path.join(root, name.split()[0])]))
    _killed_and_resumed(runs["gradmatch fp16"], base, os.path.join(root, "gradmatch-killed"))
    selected = os.path.join(root, "el2n-select")
    done = _run(["select", "--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "2", "--amp", fp16, *base,
                 "--out", selected])
    check("select el2n, fp16 proxy", done.returncode == 0 and os.path.exists(os.path.join(selected, "subset.csv")),
          done.stderr.strip()[-400:])
    _summary("train --subset bf16", _run(["train", "--subset", selected, "--epochs", "3", "--amp", bf16, *base,
                                          "--out", os.path.join(root, "on-subset")]))


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datadiet", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


def _summary(name: str, done: subprocess.CompletedProcess) -> None:
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    acc = summary.get("test_acc")
    ok = isinstance(acc, float) and math.isfinite(acc)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in summary.get("time", {}).items())
    check(name, ok, f"test_acc {acc}; {times}" if ok else done.stderr.strip()[-600:])


def _killed_and_resumed(args: list[str], base: list[str], out: str) -> None:
    """SIGKILL once a mid-epoch checkpoint is on disk, then ``--resume``."""
    proc = subprocess.Popen([sys.executable, "-m", "datadiet", *args, *base, "--out", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(out, "checkpoint.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _summary(f"gradmatch killed {'mid-run' if killed else '(finished first)'} and resumed",
             _run(["train", "--resume", out, "--no-progress"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the same code)")
    parser.add_argument("--small", action="store_true", help="toy sizes (the CPU dry run)")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device", file=sys.stderr)
        return 2
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="datadiet-smoke-") as scratch:
        root = args.out or scratch
        os.makedirs(root, exist_ok=True)
        for stage, run in (("ops", lambda: ops(device, args.small)), ("process group", lambda: process_group(device)),
                           ("command line", lambda: cli(device, root))):
            started = time.perf_counter()
            try:
                run()
            except Exception as exc:  # noqa: BLE001 (a stage that raises is a failed check; the others still run)
                check(f"{stage} (raised)", False, f"{type(exc).__name__}: {exc}")
            print(f"{stage}: {time.perf_counter() - started:.1f} s", flush=True)
    print(f"gpu_smoke: {time.perf_counter() - began:.0f} s, {len(FAILURES)} failed"
          + (f": {', '.join(FAILURES)}" if FAILURES else ""), flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
