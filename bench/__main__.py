"""Command line: ``python -m bench ce_scores [--device cuda] [--imagenet] [--json out.json]``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from bench import harness

BENCHMARKS = ("ce_scores", "compat_cords", "ensemble", "grad_norms", "lipt", "merge", "omp", "per_sample_grad_sqnorm", "selective_backprop",
              "topk_select", "train", "weighted_sample")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("op", nargs="?", choices=BENCHMARKS, help="the op to benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads on CPU")
    parser.add_argument("--json", default=None, help="where to write results (default bench/results/<op>-<device>.json)")
    known, rest = parser.parse_known_args(argv)
    if known.list or not known.op:
        print("\n".join(BENCHMARKS))
        return 0
    module = importlib.import_module(f"bench.{known.op}")
    sub = argparse.ArgumentParser(prog=f"python -m bench {known.op}")
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    args.device = torch.device(known.device)
    if known.threads:
        torch.set_num_threads(known.threads)
    rows = harness.finish_rows(module.run(args), args.device)
    print(harness.environment(args.device))
    harness.print_table(rows)
    path = known.json or os.path.join(os.path.dirname(__file__), "results", f"{known.op}-{args.device.type}.json")
    harness.write_json(path, known.op, rows, args.device)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
