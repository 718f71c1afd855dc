"""Timing, tables and JSON for every op's benchmark.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> list[dict]``;
rows carry ``case``, ``method``, ``seconds`` and optionally ``bytes`` (for GB/s),
``baselines`` (methods to report a speed-up against) and ``floor`` (a method whose time
this one is expressed as a multiple of, such as a plain read pass).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch

# Peak DRAM bandwidth of GPUs people run this on (bytes/s), to report % of peak.
GPU_PEAK_BYTES_PER_S = {
    "H200": 4.8e12,
    "H100": 3.35e12,
    "A100": 2.0e12,
    "L40S": 0.864e12,
    "V100": 0.9e12,
}


def gpu_peak(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_BYTES_PER_S.items() if k in name), None)


def timeit(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeat: int = 7,
           min_seconds: float = 0.2) -> float:
    """Median wall time of ``fn`` in seconds (device-synchronised); repeats until
    ``repeat`` runs and ``min_seconds`` in total are reached."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    while len(times) < repeat or (sum(times) < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Rows(list):
    """Rows of one benchmark run: ``rows.add(case, method, fn, ...)`` times ``fn`` and appends.
    ``heavy`` cases (seconds per call) run once to warm up and three times timed."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def add(self, case: str, method: str, fn: Callable[[], object], nbytes: Optional[int] = None,
            baselines=(), floor: Optional[str] = None, heavy: bool = False, note: str = "") -> dict:
        seconds = (timeit(fn, self.device, warmup=1, repeat=3, min_seconds=0) if heavy
                   else timeit(fn, self.device))
        row = {"case": case, "method": method, "seconds": seconds, "bytes": nbytes,
               "baselines": list(baselines), "floor": floor, "note": note}
        self.append(row)
        return row


def environment(device: torch.device) -> dict:
    import datadiet

    env = {
        "torch": torch.__version__,
        "datadiet": datadiet.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def finish_rows(rows: list[dict], device: torch.device) -> list[dict]:
    """Adds GB/s, % of GPU peak, ``speedups`` (baseline time / this time, for each method
    named in ``baselines``) and ``x_floor`` (this time / the ``floor`` method's time, e.g. a
    plain read pass) to each row; ratios compare rows of the same case."""
    peak = gpu_peak(device)
    by_key = {(r["case"], r["method"]): r for r in rows}
    for r in rows:
        if r.get("bytes"):
            r["gb_per_s"] = r["bytes"] / r["seconds"] / 1e9
            if peak:
                r["pct_of_peak"] = 100.0 * r["bytes"] / r["seconds"] / peak
        r["speedups"] = {b: by_key[(r["case"], b)]["seconds"] / r["seconds"]
                         for b in r.get("baselines", ()) if (r["case"], b) in by_key}
        floor = by_key.get((r["case"], r.get("floor")))
        if floor is not None:
            r["x_floor"] = r["seconds"] / floor["seconds"]
    return rows


def print_table(rows: list[dict]) -> None:
    header = ["case", "method", "ms", "GB/s", "% peak", "speed-up", "time / floor", "note"]
    table = []
    for r in rows:
        table.append([
            r["case"],
            r["method"],
            f"{r['seconds'] * 1e3:.2f}",
            f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else "",
            f"{r['pct_of_peak']:.0f}%" if "pct_of_peak" in r else "",
            ", ".join(f"{v:.1f}x vs {k}" for k, v in r["speedups"].items()),
            f"{r['x_floor']:.2f}x {r['floor']}" if "x_floor" in r else "",
            r.get("note", ""),
        ])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def write_json(path: str, op: str, rows: list[dict], device: torch.device) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"op": op, "environment": environment(device), "rows": rows}, f, indent=1)
    os.replace(tmp, path)
