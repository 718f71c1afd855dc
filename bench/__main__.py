"""Command line: ``python -m bench OP [--device cuda] [--threads N] [--json out.json]
[--compare earlier.json [--fail-on-regression]] [--sweep [--max-size N]] [op options]``; installed
users run the same as ``datadiet bench ...`` (results then default to ``./datadiet-bench/``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional

import torch

from . import harness

BENCHMARKS = ("ce_scores", "compat_cords", "ensemble", "grad_norms", "lipt", "merge", "omp", "per_sample_grad_sqnorm",
              "scale", "select", "selective_backprop", "topk_select", "train", "value", "weighted_sample")


def main(argv=None, prog: str = "python -m bench", results_dir: Optional[str] = None) -> int:
    from . import sweep

    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("op", nargs="?", choices=BENCHMARKS, help="the op to benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks (and which have --sweep)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads on CPU (default: torch's)")
    parser.add_argument("--json", default=None, help="where to write results (default <results>/<op>-<device>.json)")
    parser.add_argument("--compare", default=None, metavar="FILE.json",
                        help="print each row's change against an earlier run's JSON, flagging moves past the noise")
    parser.add_argument("--fail-on-regression", action="store_true", help="with --compare: exit 1 on a regression")
    parser.add_argument("--sweep", action="store_true", help="time the op over a range of sizes and plot it (PNG)")
    parser.add_argument("--max-size", type=int, default=0, help="with --sweep: the largest size to run")
    known, rest = parser.parse_known_args(argv)
    if known.list or not known.op:
        print("\n".join(f"{op}{'  (--sweep)' if op in sweep.SWEEPS else ''}" for op in BENCHMARKS))
        return 0
    device = torch.device(known.device)
    earlier = harness.load_rows(known.compare) if known.compare else None  # before this run may overwrite it
    if known.threads:
        torch.set_num_threads(known.threads)
    results_dir = results_dir or os.path.join(os.path.dirname(__file__), "results")
    if known.sweep:
        if known.op not in sweep.SWEEPS:
            parser.error(f"--sweep: {known.op} has no sweep; these do: {', '.join(sweep.SWEEPS)}")
        if rest:
            parser.error(f"--sweep takes no op options, got {' '.join(rest)}")
        rows = sweep.run(known.op, device, known.max_size)
        name = f"{known.op}-sweep-{device.type}"
    else:
        module = importlib.import_module(f".{known.op}", __package__)
        sub = argparse.ArgumentParser(prog=f"{prog} {known.op}")
        module.add_arguments(sub)
        args = sub.parse_args(rest)
        args.device = device
        rows = harness.finish_rows(module.run(args), device)
        name = f"{known.op}-{device.type}"
    print(harness.environment(device))
    harness.print_table(rows)
    path = known.json or os.path.join(results_dir, f"{name}.json")
    harness.write_json(path, known.op, rows, device)
    print(f"wrote {path}")
    if known.sweep:
        png = os.path.splitext(path)[0] + ".png"
        sweep.plot(known.op, rows, device, png)
        print(f"wrote {png}")
    if earlier is not None:
        changes = harness.compare(rows, earlier)
        harness.print_comparison(changes, known.compare)
        if known.fail_on_regression and any(c["verdict"] == "regression" for c in changes):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
