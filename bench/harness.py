"""Timing, rooflines, tables, JSON and comparisons for every op's benchmark.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> list[dict]``; rows
carry ``case``, ``method``, the inputs' ``shape`` and ``dtype``, the timing statistics (``seconds`` = the median, ``min_s``, ``q1_s``,
``q3_s``, ``iqr_s``, ``runs``) and optionally ``bytes`` (for GB/s), ``flops`` (for GFLOP/s),
``baselines`` (methods to report a speed-up against) and ``floor`` (a method whose time this one
is expressed as a multiple of, such as a plain read pass).

How time is taken: on CUDA, each run between two CUDA events, after writing a 256 MiB buffer
so no input stays in L2; on CPU, wall time with the thread count pinned (``--threads``; stated
in the environment block). Every row is judged against a roofline: the time the bytes take at
the device's peak bandwidth and the FLOPs at its peak arithmetic rate, whichever is longer
(GPU: datasheet peaks; CPU: this machine's measured ``copy_`` bandwidth and float32 ``mm`` rate).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from functools import lru_cache
from typing import Callable, Optional

import torch

# Datasheet peaks of GPUs people run this on, matched against torch.cuda.get_device_name in this
# order (the more specific names first): DRAM bytes/s and dense float32 FLOP/s (no tensor cores).
GPU_PEAKS = [("H200", 4.8e12, 67e12), ("H100 PCIe", 2.0e12, 51e12), ("H100", 3.35e12, 67e12),
             ("A100-PCIE-40GB", 1.555e12, 19.5e12), ("A100-SXM4-40GB", 1.555e12, 19.5e12),
             ("A100 80GB PCIe", 1.935e12, 19.5e12), ("A100", 2.039e12, 19.5e12), ("L40S", 0.864e12, 91.6e12),
             ("V100", 0.9e12, 15.7e12)]
L2_FLUSH_BYTES = 256 * 2**20


def peaks(device_type: str) -> dict:
    """``{"bytes_per_s", "flops", "source"}`` the rooflines use for this device type (on CPU, at
    the current thread count). Unknown GPUs get ``None`` peaks (no roofline)."""
    return _peaks(device_type, torch.get_num_threads())


@lru_cache(maxsize=None)
def _peaks(device_type: str, threads: int) -> dict:
    device = torch.device(device_type)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        entry = next((e for e in GPU_PEAKS if e[0] in name), None)
        return {"bytes_per_s": entry[1] if entry else None, "flops": entry[2] if entry else None,
                "source": f"datasheet ({entry[0]})" if entry else f"{name}: not in the datasheet table"}
    src = torch.empty(64 * 2**20, dtype=torch.float32).normal_()  # 256 MiB: far past any cache
    dst = torch.empty_like(src)
    copy = stats(_cpu_runs(lambda: dst.copy_(src), warmup=1, repeat=5, min_seconds=0))["min_s"]
    a = torch.randn(2048, 2048)
    mm = stats(_cpu_runs(lambda: a @ a, warmup=1, repeat=5, min_seconds=0))["min_s"]
    return {"bytes_per_s": 2 * src.numel() * 4 / copy, "flops": 2 * 2048**3 / mm,  # copy: read + write, as STREAM
            "source": f"measured: copy_ of 256 MiB, 2048^2 float32 mm, {threads} threads"}


def _cpu_runs(fn, warmup, repeat, min_seconds) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeat or (sum(times) < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _cuda_runs(fn, warmup, repeat, min_seconds) -> list[float]:
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    while len(times) < repeat or (sum(times) < min_seconds and len(times) < 200):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def stats(times: list[float]) -> dict:
    """Median (``seconds``), min, quartiles and IQR of run times in seconds."""
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {"seconds": statistics.median(times), "min_s": min(times), "q1_s": q[0], "q3_s": q[2],
            "iqr_s": q[2] - q[0], "runs": len(times)}


def measure(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeat: int = 7,
            min_seconds: float = 0.2) -> dict:
    """Timing statistics of ``fn``: runs until ``repeat`` runs and ``min_seconds`` in total."""
    runs = _cuda_runs if device.type == "cuda" else _cpu_runs
    return stats(runs(fn, warmup, repeat, min_seconds))


def timeit(fn: Callable[[], object], device: torch.device, **kw) -> float:
    """The median seconds of ``measure``."""
    return measure(fn, device, **kw)["seconds"]


class Rows(list):
    """Rows of one benchmark run: ``rows.add(case, method, fn, ...)`` times ``fn`` and appends.
    ``heavy`` cases (seconds per call) run once to warm up and three times timed.
    ``rows.inputs(shape, dtype)`` states the inputs of the rows added after it (their ``shape``
    and ``dtype`` fields)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self._inputs: dict = {}

    def inputs(self, shape, dtype) -> None:
        self._inputs = {"shape": str(shape), "dtype": str(dtype).replace("torch.", "")}

    def add(self, case: str, method: str, fn: Callable[[], object], nbytes: Optional[int] = None,
            baselines=(), floor: Optional[str] = None, heavy: bool = False, note: str = "",
            flops: Optional[float] = None) -> dict:
        timing = (measure(fn, self.device, warmup=1, repeat=3, min_seconds=0) if heavy
                  else measure(fn, self.device))
        row = {"case": case, "method": method, **self._inputs, **timing, "bytes": nbytes, "flops": flops,
               "baselines": list(baselines), "floor": floor, "note": note}
        self.append(row)
        return row


def environment(device: torch.device) -> dict:
    import datadiet

    info = datadiet.build_info()
    env = {"torch": torch.__version__, "datadiet": datadiet.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cpu_capability": info.get("cpu_capability"),
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def finish_rows(rows: list[dict], device: torch.device) -> list[dict]:
    """Adds GB/s, GFLOP/s, the roofline time and ``pct_of_roofline``, ``speedups`` (baseline time /
    this time, for each method named in ``baselines``) and ``x_floor`` (this time / the ``floor``
    method's time) to each row; ratios compare rows of the same case."""
    peak = peaks(device.type)
    by_key = {(r["case"], r["method"]): r for r in rows}
    for r in rows:
        bound = []
        if r.get("bytes"):
            r["gb_per_s"] = r["bytes"] / r["seconds"] / 1e9
            if peak["bytes_per_s"]:
                bound.append(r["bytes"] / peak["bytes_per_s"])
        if r.get("flops"):
            r["gflop_per_s"] = r["flops"] / r["seconds"] / 1e9
            if peak["flops"]:
                bound.append(r["flops"] / peak["flops"])
        if bound:
            r["roofline_s"] = max(bound)
            r["pct_of_roofline"] = 100.0 * r["roofline_s"] / r["seconds"]
        r["speedups"] = {b: by_key[(r["case"], b)]["seconds"] / r["seconds"]
                         for b in r.get("baselines", ()) if (r["case"], b) in by_key}
        floor = by_key.get((r["case"], r.get("floor")))
        if floor is not None:
            r["x_floor"] = r["seconds"] / floor["seconds"]
    return rows


def _table(header: list[str], table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _ms(seconds: Optional[float]) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}"


def print_table(rows: list[dict]) -> None:
    header = ["case", "method", "median ms", "min ms", "IQR ms", "GB/s", "GFLOP/s", "% roofline", "speed-up",
              "time / floor", "note"]
    _table(header, [[
        r["case"], r["method"], f"{r['seconds'] * 1e3:.3f}", _ms(r.get("min_s")), _ms(r.get("iqr_s")),
        f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else "",
        f"{r['gflop_per_s']:.1f}" if "gflop_per_s" in r else "",
        f"{r['pct_of_roofline']:.0f}%" if "pct_of_roofline" in r else "",
        ", ".join(f"{v:.1f}x vs {k}" for k, v in r["speedups"].items()),
        f"{r['x_floor']:.2f}x {r['floor']}" if "x_floor" in r else "",
        r.get("note", "")] for r in rows])


def write_json(path: str, op: str, rows: list[dict], device: torch.device) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"op": op, "environment": environment(device), "peaks": peaks(device.type), "rows": rows}, f,
                  indent=1)
    os.replace(tmp, path)


def load_rows(path: str) -> list[dict]:
    """The rows of an earlier run's JSON."""
    with open(path) as f:
        return list(json.load(f)["rows"])


def compare(rows: list[dict], earlier: list[dict]) -> list[dict]:
    """Each row's median against the same (case, method) in an earlier run's rows: ``change`` =
    new / old − 1, flagged ``regression`` / ``faster`` when it moves past the noise band — the
    larger of either run's IQR and 5% of the old median — and ``within noise`` otherwise."""
    old = {(r["case"], r["method"]): r for r in earlier}
    out = []
    for r in rows:
        before = old.get((r["case"], r["method"]))
        if before is None:
            continue
        band = max(before.get("iqr_s", 0.0), r.get("iqr_s", 0.0), 0.05 * before["seconds"])
        delta = r["seconds"] - before["seconds"]
        verdict = "regression" if delta > band else "faster" if -delta > band else "within noise"
        out.append({"case": r["case"], "method": r["method"], "old_s": before["seconds"], "new_s": r["seconds"],
                    "change": r["seconds"] / before["seconds"] - 1, "band_s": band, "verdict": verdict})
    return out


def print_comparison(changes: list[dict], path: str) -> None:
    print(f"against {path}:")
    _table(["case", "method", "old ms", "new ms", "change", "noise band ms", "verdict"], [[
        c["case"], c["method"], f"{c['old_s'] * 1e3:.3f}", f"{c['new_s'] * 1e3:.3f}", f"{100 * c['change']:+.1f}%",
        f"{c['band_s'] * 1e3:.3f}", c["verdict"].upper() if c["verdict"] == "regression" else c["verdict"]]
        for c in changes])
