"""Test setup. Without a GPU, Triton kernels run through the interpreter on CPU tensors:
TRITON_INTERPRET must be set before any kernel module is imported, so it is set here.
With a GPU the same tests run the compiled Triton kernels on CUDA tensors instead.
Every Triton launch of the suite is checked against its module's compile table
(``DATADIET_CHECK_LAUNCHES``, ``datadiet/kernels/_launch.py``), which test_triton_aot.py
compiles for sm_80 and sm_90."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DATADIET_CHECK_LAUNCHES", "1")

import pytest  # noqa: E402

import datadiet  # noqa: E402

@pytest.fixture(autouse=True)
def _auto_device_is_cpu_in_process(monkeypatch):
    """The suite's in-process runs keep to the CPU when no device is named (``device="auto"``, the
    default, would take a GPU where there is one): tests that want CUDA say so."""
    import datadiet._dist as dist

    resolve = dist.resolve
    monkeypatch.setattr(dist, "resolve", lambda device: "cpu" if device == "auto" else resolve(device))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and datadiet._extension.compiled_cuda()),
    reason="needs a CUDA device and datadiet's CUDA kernels",
)

# The device engines a test compares with the CPU kernels: Triton (the interpreter without a
# GPU) and the compiled CUDA kernels (GPU only).
DEVICE_BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(not datadiet._extension.TRITON_AVAILABLE,
                                                    reason="triton is not installed")),
    pytest.param("cuda", marks=requires_cuda_kernels),
]
