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
