"""The training loop's periodic selection at a reduced ImageNet shape, one process against
torchrun's gloo ranks on this machine's CPU, in one run.

A features table (``--rows`` × ``--dim``, ``--classes`` classes, class means plus noise; a linear
scorer, the nearest-mean classifier) is the training pool of a ``Driver``; each strategy of
``--strategies`` (GradMatch per class, GLISTER with ``--val-fraction`` held out) makes its first
selection (``begin_epoch(0)``: the scoring pass and the solve), in one process and under
``torchrun --nproc-per-node --ranks``. Each process measures the resident memory the selection
added above what it held before (the pool and the model: every rank loads the dataset, as a
training pipeline does), from Linux's peak counter reset just before (``/proc/self/clear_refs``).

Reported per strategy: the time split (scoring, selection), each rank's peak above its start
against the single process's (target: every rank ≤ 0.6× with 2 ranks), and whether the ranks'
selection equals the single process's. The single process runs with as many threads as there
are ranks, each rank with one: both use the same cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from .select import features_in_child

STRATEGIES = ("gradmatch", "glister")


def add_arguments(p) -> None:
    p.add_argument("--rows", type=int, default=200_000, help="samples in the pool")
    p.add_argument("--dim", type=int, default=512, help="feature dimension")
    p.add_argument("--classes", type=int, default=1000, help="classes")
    p.add_argument("--fraction", type=float, default=0.1, help="the fraction selected")
    p.add_argument("--ranks", type=int, default=2, help="gloo ranks under torchrun")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"any of {', '.join(STRATEGIES)}")
    p.add_argument("--val-fraction", type=float, default=0.1, help="GLISTER's held-out share of the rows")
    p.add_argument("--keep", default=None, help="a folder to keep the generated features in (default: temporary)")


def run(args) -> list[dict]:
    wanted = [s for s in args.strategies.split(",") if s]
    unknown = set(wanted) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"bench scale: --strategies: unknown {', '.join(sorted(unknown))}")
    scratch = tempfile.TemporaryDirectory(prefix="datadiet-bench-scale-")
    root = args.keep or scratch.name
    os.makedirs(root, exist_ok=True)
    path, weights = features_in_child(root, args.rows, args.dim, args.classes)
    case = f"selecting {args.fraction:g} of {args.rows} x {args.dim} features, {args.classes} classes"
    rows = []
    for strategy in wanted:
        out = os.path.join(root, strategy)
        setting = [path, weights, strategy, str(args.fraction), str(args.val_fraction)]
        one = _child(setting, os.path.join(out, "one"), ranks=1)
        many = _child(setting, os.path.join(out, "many"), ranks=args.ranks)
        same = all(_same(one[0]["selection"], r["selection"]) for r in many)
        worst = max(r["peak_above"] for r in many)
        ratio = worst / max(one[0]["peak_above"], 1)
        for method, results in (("1 process", one), (f"torchrun {args.ranks} gloo ranks", many)):
            t = results[0]["times"]
            peaks = ", ".join(f"{r['peak_above'] / 2**20:.0f}" for r in results)
            note = (f"scoring {t['scoring']:.1f} s, selection {t['selection']:.1f} s; peak above the start per rank "
                    f"{peaks} MiB")
            if len(results) > 1:
                note += (f" = {ratio:.2f}x one process's (target <= 0.6); selection "
                         f"{'identical to' if same else 'DIFFERS from'} one process's")
            rows.append({"case": f"{strategy}: {case}", "method": method, "seconds": results[0]["wall"],
                         "bytes": None, "floor": None, "baselines": [] if len(results) == 1 else ["1 process"],
                         "peak_above_bytes": [r["peak_above"] for r in results],
                         "peak_ratio": None if len(results) == 1 else ratio, "same_selection": same, "note": note})
        if not same:
            raise RuntimeError(f"bench scale: {strategy} under {args.ranks} ranks selected another subset than one "
                               "process")
    scratch.cleanup()
    return rows


def _child(setting: list[str], out: str, ranks: int) -> list[dict]:
    """``child`` in one process (``ranks`` threads) or under torchrun (one thread per rank): each
    rank's measurements."""
    os.makedirs(out, exist_ok=True)
    module = f"{__package__}.scale"
    if ranks == 1:
        command = [sys.executable, "-m", module, "child", *setting, out]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                   "-m", module, "child", *setting, out]
    top = os.path.dirname(os.path.abspath(__file__))
    for _ in __package__.split("."):  # the folder holding the top-level package (bench, or datadiet)
        top = os.path.dirname(top)
    env = dict(os.environ, OMP_NUM_THREADS="1" if ranks > 1 else str(max(1, torch.get_num_threads())))
    done = subprocess.run(command, cwd=top, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench scale: {' '.join(command[-7:])} failed: {done.stderr.strip()[-2000:]}")
    results = []
    for rank in range(ranks):
        with open(os.path.join(out, f"rank{rank}.json"), encoding="utf-8") as f:
            results.append(json.load(f))
    return results


def _same(a: str, b: str) -> bool:
    """Two saved selections: the same samples in the same order, weights equal up to float rounding
    (the ranks' scoring passes sum in other orders)."""
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if not torch.equal(x["indices"], y["indices"]) or (x["weights"] is None) != (y["weights"] is None):
        return False
    return x["weights"] is None or torch.allclose(x["weights"], y["weights"], rtol=1e-4, atol=1e-6)


def _memory(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(path: str, weights: str, strategy: str, fraction: str, val_fraction: str, out: str) -> None:
    """One rank (or the single process): the pool from the features file, a Driver with the
    strategy, its first selection measured."""
    import time

    from datadiet import _dist, strategies
    from datadiet.train import models
    from datadiet.train.driver import Driver

    _dist.init("cpu", timeout=3600)
    size, rank = _dist.world()
    with np.load(path) as data:
        features, labels = torch.from_numpy(data["features"]), torch.from_numpy(data["labels"])
    classes = int(labels.max()) + 1
    model = models.build("linear", classes, (features.shape[1],))
    model.load_state_dict({k: v for k, v in torch.load(weights, weights_only=True).items()})
    held = int(len(labels) * float(val_fraction)) if strategy == "glister" else 0
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    pool, val = order[held:], order[:held]
    dataset = torch.utils.data.TensorDataset(features, labels)
    chosen = strategies.make(strategy, fraction=float(fraction), every=1)
    driver = Driver(chosen, model, torch.utils.data.Subset(dataset, pool.tolist()), labels[pool],
                    num_classes=classes, epochs=1, batch_size=256, seed=0, score_batch_size=4096,
                    val_set=torch.utils.data.Subset(dataset, val.tolist()) if held else None)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM, the peak resident set, to the current one
    start = _memory("VmRSS")
    began = time.perf_counter()
    driver.begin_epoch(0)
    wall = time.perf_counter() - began
    peak = _memory("VmHWM") - start
    selection = driver.sampler.selection
    saved = os.path.join(out, f"selection{rank}.pt")
    torch.save({"indices": selection.indices, "weights": selection.weights}, saved)
    result = {"rank": rank, "world": size, "wall": wall, "times": driver.times, "start_rss": start,
              "peak_above": peak, "selection": saved}
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if sys.argv[1:2] != ["child"]:
        raise SystemExit("usage: python -m bench scale [options] (this module's main is its child process)")
    child(*sys.argv[2:])
