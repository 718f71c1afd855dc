"""The build reports what it contains, and backend choice follows it."""

import torch

import datadiet
from datadiet import backends


def test_build_info_reports_the_build():
    info = datadiet.build_info()
    assert info["version"] == datadiet.__version__
    assert "cpu" in info["compiled_backends"]
    assert info["openmp_threads"] >= 1
    assert info["compiler"].startswith(("gcc", "clang"))
    if "cuda" in info["compiled_backends"]:
        assert info["cuda_archs"], info
    assert info["cuda_kernels_loaded"] == bool(torch.version.cuda and "cuda" in info["compiled_backends"])
    assert torch._C._dispatch_has_kernel_for_dispatch_key("datadiet::ce_scores", "CPU")


def test_auto_backend_prefers_compiled_kernels():
    assert backends.resolve("auto", torch.device("cpu"), "op") == "cpu"
    assert "torch" in backends.available(torch.device("cpu"))
    if torch.cuda.is_available() and datadiet._extension.compiled_cuda():
        assert backends.resolve("auto", torch.device("cuda"), "op") == "cuda"


# ---- CPU capability dispatch -------------------------------------------------------------------

_KERNELS_SCRIPT = r"""
import json, sys, torch, datadiet
g = torch.Generator().manual_seed(0)
logits, labels = torch.randn(257, 33, generator=g), torch.randint(0, 33, (257,), generator=g)
ce = datadiet.ce_scores(logits, labels, backend="cpu")
scores = torch.rand(1000, generator=g)
top = datadiet.topk_select(scores, 37, backend="cpu")
drawn = datadiet.weighted_sample(scores, 37, seed=3, backend="cpu")
atoms = torch.randn(300, 70, generator=g)
sol = datadiet.ops.omp(atoms, atoms[:40].sum(0), 20, lam=0.5, backend="cpu")
a, gr = torch.randn(4, 9, 21, generator=g), torch.randn(4, 9, 19, generator=g)
norms = datadiet.ops.per_sample_grad_sqnorm(a, gr, backend="cpu")
json.dump({"capability": datadiet.build_info()["cpu_capability"], "loss": ce.loss.tolist(),
           "el2n": ce.el2n.tolist(), "top": top.tolist(), "drawn": drawn.tolist(),
           "omp": sol.indices.tolist(), "omp_w": sol.weights.tolist(), "norms": norms.tolist()}, sys.stdout)
"""


def _run_with_capability(capability):
    import json
    import os
    import subprocess
    import sys

    from subprocesses import env

    child_env = env()
    child_env.pop("DATADIET_CPU_CAPABILITY", None)
    if capability:
        child_env["DATADIET_CPU_CAPABILITY"] = capability
    proc = subprocess.run([sys.executable, "-c", _KERNELS_SCRIPT], env=child_env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(__file__))
    return proc, (json.loads(proc.stdout) if proc.returncode == 0 else None)


def test_the_best_capability_this_cpu_runs_is_loaded():
    import os

    info = datadiet.build_info()
    usable = [c for c in info["cpu_capabilities_supported"] if c in info["cpu_capabilities_built"]]
    assert usable, info
    forced = os.environ.get("DATADIET_CPU_CAPABILITY")
    assert info["cpu_capability"] == (forced or usable[-1])


def test_every_capability_computes_the_same_results():
    """Each kernel module this CPU runs, loaded on its own: sampling and top-k selection bit for
    bit (no fused multiply-add in the random keys), float results to rounding."""
    info = datadiet.build_info()
    usable = [c for c in info["cpu_capabilities_supported"] if c in info["cpu_capabilities_built"]]
    results = {}
    for cap in usable:
        proc, out = _run_with_capability(cap)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert out["capability"] == cap
        results[cap] = out
    base = results[usable[0]]
    for cap, out in results.items():
        assert out["top"] == base["top"] and out["drawn"] == base["drawn"], cap
        # OMP's picks follow float comparisons that contracted multiply-adds may round differently
        # per instruction set: the solution is compared by its weights' total, not atom by atom.
        assert abs(sum(out["omp_w"]) - sum(base["omp_w"])) <= 1e-4 * abs(sum(base["omp_w"])), cap
        for key in ("loss", "el2n", "norms"):
            torch.testing.assert_close(torch.tensor(out[key]), torch.tensor(base[key]), rtol=1e-5, atol=1e-5,
                                       msg=f"{key} under {cap}")


def test_a_capability_not_built_or_not_runnable_is_refused_by_name():
    proc, _ = _run_with_capability("sse9")
    assert proc.returncode != 0
    assert "DATADIET_CPU_CAPABILITY='sse9' was not built" in proc.stderr, proc.stderr[-2000:]
    info = datadiet.build_info()
    missing = [c for c in info["cpu_capabilities_built"] if c not in info["cpu_capabilities_supported"]]
    for cap in missing:  # only on a CPU without some level (e.g. no AVX-512)
        proc, _ = _run_with_capability(cap)
        assert proc.returncode != 0 and "needs instructions this CPU lacks" in proc.stderr


def test_cpu_kernels_fall_back_to_torch_unless_a_capability_was_forced(monkeypatch):
    """_load_cpu's choices, with a stand-in core: nothing built runs here -> the torch backend
    (import still works); otherwise the best built one; a load failure -> the torch backend,
    unless DATADIET_CPU_CAPABILITY asked for that module."""
    import pytest

    from datadiet import _extension

    class Core:
        def __init__(self, built, runs):
            self.built, self.runs = built, runs

        def build_info(self):
            return {"cpu_capabilities_built": self.built}

        def cpu_capabilities(self):
            return self.runs

    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.delenv("DATADIET_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(_extension, "_C", Core(["avx512"], ["default", "avx2"]))
    capability, why = _extension._load_cpu()
    assert capability is None and "runs none of the built kernel capabilities (avx512" in why and not loaded
    monkeypatch.setattr(_extension, "_C", Core(["default", "avx2"], ["default", "avx2", "avx512"]))
    assert _extension._load_cpu() == ("avx2", None) and loaded[-1].endswith("_cpu_avx2.so")

    def broken(path):
        raise OSError("cannot open shared object file")

    monkeypatch.setattr(torch.ops, "load_library", broken)
    capability, why = _extension._load_cpu()
    assert capability is None and "loading the avx2 CPU kernels failed (cannot open" in why
    monkeypatch.setenv("DATADIET_CPU_CAPABILITY", "default")
    with pytest.raises(OSError, match="cannot open"):
        _extension._load_cpu()
