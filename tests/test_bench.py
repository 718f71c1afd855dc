"""The benchmark harness as installed users run it (``datadiet bench``, the repository's
``bench/`` shipped as ``datadiet.bench``): statistics, rooflines, ``--compare`` verdicts and a
small ``--sweep`` with its plot. Speed itself is never asserted here."""

import json
import os
import subprocess
import sys

import pytest
import torch

from datadiet.bench import harness
from datadiet.bench.__main__ import main as bench_main
from train_fixtures import requires_torchvision


def test_stats_are_the_median_min_and_quartiles():
    s = harness.stats([0.5, 0.1, 0.3, 0.2, 0.4])
    assert s["seconds"] == 0.3 and s["min_s"] == 0.1 and s["runs"] == 5
    assert s["q1_s"] == pytest.approx(0.2) and s["q3_s"] == pytest.approx(0.4) and s["iqr_s"] == pytest.approx(0.2)
    one = harness.stats([0.25])
    assert one["seconds"] == one["min_s"] == 0.25 and one["iqr_s"] == 0


def test_rows_carry_rates_and_the_roofline():
    rows = [{"case": "c", "method": "m", "seconds": 2.0, "bytes": 4e9, "flops": 1e12, "baselines": ["b"]},
            {"case": "c", "method": "b", "seconds": 4.0, "bytes": None, "flops": None, "baselines": []}]
    harness.finish_rows(rows, torch.device("cpu"))
    peak = harness.peaks("cpu")
    assert peak["bytes_per_s"] > 1e8 and peak["flops"] > 1e8 and "measured" in peak["source"]
    assert rows[0]["gb_per_s"] == 2.0 and rows[0]["gflop_per_s"] == 500.0
    assert rows[0]["roofline_s"] == max(4e9 / peak["bytes_per_s"], 1e12 / peak["flops"])
    assert rows[0]["pct_of_roofline"] == pytest.approx(100 * rows[0]["roofline_s"] / 2.0)
    assert rows[0]["speedups"] == {"b": 2.0} and "pct_of_roofline" not in rows[1]


def test_compare_flags_moves_past_the_noise_band(tmp_path):
    old = tmp_path / "old.json"
    base = {"seconds": 1.0, "iqr_s": 0.02}
    old.write_text(json.dumps({"rows": [{"case": "c", "method": m, **base} for m in ("slow", "fast", "same", "wide")]}))
    new = [{"case": "c", "method": "slow", "seconds": 1.2, "iqr_s": 0.01},
           {"case": "c", "method": "fast", "seconds": 0.7, "iqr_s": 0.01},
           {"case": "c", "method": "same", "seconds": 1.04, "iqr_s": 0.01},
           {"case": "c", "method": "wide", "seconds": 1.2, "iqr_s": 0.3},  # noisy: 20% inside its IQR
           {"case": "c", "method": "unmatched", "seconds": 9.0, "iqr_s": 0.0}]
    verdicts = {c["method"]: c["verdict"] for c in harness.compare(new, harness.load_rows(str(old)))}
    assert verdicts == {"slow": "regression", "fast": "faster", "same": "within noise", "wide": "within noise"}


def test_sweep_writes_json_and_a_plot_and_compares(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert bench_main(["topk_select", "--sweep", "--max-size", "1024", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {r["size"] for r in data["rows"]} == {256, 1024}
    assert {"datadiet cpu", "torch.topk"} <= {r["method"] for r in data["rows"]}
    for r in data["rows"]:
        assert r["min_s"] <= r["seconds"] and r["bytes"] == 4 * r["size"] and r["pct_of_roofline"] > 0
        assert r["dtype"] == "float32" and str(r["size"]) in r["shape"]
    assert os.path.getsize(out.with_suffix(".png")) > 10_000
    assert data["environment"]["cpu_capability"] == __import__("datadiet").build_info()["cpu_capability"]
    # Against itself with a 10x slower history: everything is faster, nothing fails.
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"rows": [dict(r, seconds=10 * r["seconds"]) for r in data["rows"]]}))
    capsys.readouterr()
    assert bench_main(["topk_select", "--sweep", "--max-size", "256", "--json", str(tmp_path / "again.json"),
                       "--compare", str(slow), "--fail-on-regression"]) == 0
    assert "faster" in capsys.readouterr().out
    # and a 10x faster history is a regression
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps({"rows": [dict(r, seconds=r["seconds"] / 10, iqr_s=0) for r in data["rows"]]}))
    assert bench_main(["topk_select", "--sweep", "--max-size", "256", "--json", str(tmp_path / "third.json"),
                       "--compare", str(fast), "--fail-on-regression"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    # --compare with the file this run writes: compared with the earlier contents, then replaced
    same = tmp_path / "same.json"
    same.write_text(fast.read_text())
    assert bench_main(["topk_select", "--sweep", "--max-size", "256", "--json", str(same),
                       "--compare", str(same), "--fail-on-regression"]) == 1
    assert json.loads(same.read_text())["rows"][0]["seconds"] != json.loads(fast.read_text())["rows"][0]["seconds"]


def test_sweep_refuses_an_op_without_one(capsys):
    with pytest.raises(SystemExit):
        bench_main(["omp", "--sweep"])
    assert "omp has no sweep" in capsys.readouterr().err


def test_datadiet_bench_command_runs_an_op_benchmark(tmp_path):
    """The installed command: no repository checkout on the path (run from an empty folder)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "datadiet", "bench", "--list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "topk_select  (--sweep)" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "datadiet", "bench", "weighted_sample", "--sweep", "--max-size", "256"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "datadiet-bench" / "weighted_sample-sweep-cpu.json").exists()
    assert (tmp_path / "datadiet-bench" / "weighted_sample-sweep-cpu.png").exists()


def test_omp_benchmark_runs_at_tiny_scale(tmp_path):
    """``bench omp``'s code path (baseline, both floors, datadiet at λ and at 0) on a small class."""
    out = tmp_path / "omp.json"
    assert bench_main(["omp", "--n", "120", "--features", "8", "--k", "12", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"].split(":")[0] for r in rows} == {"one class, trained-like errors", "one class, softmax errors"}
    ours = [r for r in rows if r["method"] == "datadiet cpu"]
    assert len(ours) == 2 and all(r["x_floor"] > 0 and len(r["speedups"]) == 1 for r in ours)
    assert all("objective" in r["note"] and "rejected" in r["note"] for r in ours)
    assert {r["method"] for r in rows} >= {"k x torch.mv", "k reads of the atoms", "datadiet cpu, lam=0"}


@requires_torchvision
def test_select_benchmark_runs_at_tiny_scale(tmp_path):
    """``bench select``'s three stages: JPEG scoring against the bare loop, selection from a features
    file in child processes with their peak memory, and 2 gloo ranks equal to one process."""
    out = tmp_path / "select.json"
    assert bench_main(["select", "--images", "12", "--model", "mobilenet_v3_small", "--image-size", "64",
                       "--small-size", "32", "--batch-size", "8", "--workers", "0", "--repeats", "1", "--rows", "800",
                       "--dim", "8", "--classes", "4", "--glister-rows", "300", "--keep", str(tmp_path / "data"),
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    by = {r["method"]: r for r in rows}
    assert by["datadiet select scoring stage at 64"]["x_floor"] > 0
    assert by["datadiet select --score-image-size 32"]["speedups"]
    for method in ("el2n per class", "gradmatch per class"):
        assert by[method]["peak_rss_bytes"] > by[method]["file_bytes"] > 0
    assert "identical to 1 process" in by["el2n, torchrun 2 gloo ranks"]["note"]


def test_scale_benchmark_runs_at_tiny_scale(tmp_path):
    """``bench scale``: GradMatch and GLISTER's first selection in one process and under 2 gloo
    ranks, each process's peak memory above its start, the ranks' selection equal to one
    process's."""
    out = tmp_path / "scale.json"
    assert bench_main(["scale", "--rows", "3000", "--dim", "16", "--classes", "20", "--keep", str(tmp_path / "data"),
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["case"].split(":")[0], r["method"]) for r in rows} == {
        (s, m) for s in ("gradmatch", "glister") for m in ("1 process", "torchrun 2 gloo ranks")}
    for r in rows:
        assert r["same_selection"] and all(peak > 0 for peak in r["peak_above_bytes"])
        assert len(r["peak_above_bytes"]) == (2 if "torchrun" in r["method"] else 1)


@requires_torchvision
def test_value_benchmark_runs_at_tiny_scale(tmp_path):
    """``bench value``: both tasks (the generated CIFAR-shaped folder read by the cifar10 loader),
    every variant against full and full@f, compare's reading in each row."""
    out = tmp_path / "value.json"
    assert bench_main(["value", "--digits", "digits", "--cifar-images", "100", "--epochs", "2", "--seeds", "0",
                       "--fraction", "0.5", "--every", "1", "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    for task in ("digits", "cifar"):
        mine = {r["method"]: r for r in rows if r["case"] == task}
        assert set(mine) == {"full", "full@0.5", "random_online", "gradmatch (no guard)", "gradmatch",
                             "gradmatch pool=2", "el2n", "loss (scoring pass)", "loss (training losses)"}
        assert mine["gradmatch (no guard)"]["rounds"] == 2 and mine["gradmatch"]["baselines"] == ["full@0.5"]
        assert mine["full"]["rounds"] == 0 and mine["loss (training losses)"]["rounds"] == 1  # after a warm epoch
        assert 0 <= mine["gradmatch"]["acc_mean"] <= 1
        assert "vs full@0.5 at its wall" in mine["el2n"]["note"]
    assert os.path.isfile(tmp_path / "runs" / "cifar-like" / "cifar-10-batches-py" / "test_batch")
