"""Loads the compiled core: ``_C`` (schemas, build info, the CPU's capabilities), one
``_cpu_<capability>`` module with the CPU kernels, and, under a CUDA build of torch, ``_C_cuda``.
A CPU-only torch never loads ``_C_cuda`` (it links libtorch_cuda), so datadiet imports and runs
its CPU and torch paths there.

The CPU kernels are built once per capability (x86-64: ``default`` = x86-64-v2, ``avx2`` =
x86-64-v3, ``avx512`` = x86-64-v4); the best one this CPU runs is loaded, or the one
``DATADIET_CPU_CAPABILITY`` names (for tests and comparisons; a capability this CPU lacks or this
build did not compile is refused at import, naming the choices)."""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

_HERE = os.path.dirname(__file__)

try:
    from datadiet import _C  # noqa: F401  (defines the op schemas)

    CPU_ERROR: Optional[str] = None
except ImportError as exc:  # a source checkout without a build
    _C = None
    CPU_ERROR = f"{type(exc).__name__}: {exc}"

CAPABILITY_ENV = "DATADIET_CPU_CAPABILITY"


def _load_cpu() -> tuple[Optional[str], Optional[str]]:
    """Registers the CPU kernels of the chosen capability: ``(capability, None)``, or ``(None, why
    not)`` — datadiet then imports with its torch backend on CPU. Only a capability forced through
    ``DATADIET_CPU_CAPABILITY`` that cannot be loaded fails the import (the user asked for it)."""
    if _C is None:
        return None, CPU_ERROR
    built = _C.build_info()["cpu_capabilities_built"]
    runs = _C.cpu_capabilities()
    wanted = os.environ.get(CAPABILITY_ENV, "").strip().lower()
    if wanted:
        if wanted not in built:
            raise ImportError(f"datadiet: {CAPABILITY_ENV}={wanted!r} was not built; this build has "
                              f"{', '.join(built)} (DATADIET_CPU_CAPABILITIES at build time)")
        if wanted not in runs:
            raise ImportError(f"datadiet: {CAPABILITY_ENV}={wanted!r} needs instructions this CPU lacks; "
                              f"it runs {', '.join(runs) or 'none of the built ones'}")
        torch.ops.load_library(os.path.join(_HERE, f"_cpu_{wanted}.so"))
        return wanted, None
    usable = [c for c in runs if c in built]
    if not usable:
        return None, (f"this CPU runs none of the built kernel capabilities ({', '.join(built)}; it runs "
                      f"{', '.join(runs) or 'none'}): the CPU ops use their torch backend")
    try:
        torch.ops.load_library(os.path.join(_HERE, f"_cpu_{usable[-1]}.so"))
    except OSError as exc:
        return None, f"loading the {usable[-1]} CPU kernels failed ({exc}): the CPU ops use their torch backend"
    return usable[-1], None


CPU_CAPABILITY, CPU_KERNELS_ERROR = _load_cpu()


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


def schemas_defined() -> bool:
    """Whether ``torch.ops.datadiet`` has its schemas (fake registrations need them)."""
    return _C is not None


def compiled_cpu() -> bool:
    """Whether the compiled CPU kernels are registered."""
    return CPU_CAPABILITY is not None


def compiled_cuda() -> bool:
    return CUDA_ERROR is None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
