"""Loads the compiled core: ``_C`` (CPU kernels, schemas, build info) and, under a CUDA
build of torch, ``_C_cuda``. A CPU-only torch never loads ``_C_cuda`` (it links
libtorch_cuda), so datadiet imports and runs its CPU and torch paths there."""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

_HERE = os.path.dirname(__file__)

try:
    from datadiet import _C  # noqa: F401  (registers the schemas and CPU kernels)

    CPU_ERROR: Optional[str] = None
except ImportError as exc:  # a source checkout without a build
    _C = None
    CPU_ERROR = f"{type(exc).__name__}: {exc}"


def _load_cuda() -> Optional[str]:
    """Returns None when the CUDA kernels are registered, else why not."""
    if _C is None:
        return "the compiled core (_C) is not built"
    if not torch.version.cuda:
        return "this torch is a CPU-only build"
    path = os.path.join(_HERE, "_C_cuda.so")
    if not os.path.exists(path):
        return "datadiet was built without CUDA (DATADIET_CUDA=OFF or no CUDA compiler)"
    try:
        torch.ops.load_library(path)
    except OSError as exc:
        return f"loading {path} failed: {exc}"
    return None


CUDA_ERROR = _load_cuda()
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def compiled_cpu() -> bool:
    return _C is not None


def compiled_cuda() -> bool:
    return CUDA_ERROR is None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
