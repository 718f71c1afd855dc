"""Backend choice shared by every op: ``"auto" | "cpu" | "cuda" | "triton" | "torch"``.

- ``cpu`` / ``cuda``: the compiled kernels (``torch.ops.datadiet.*``), on tensors of that device.
- ``triton``: the Triton kernel in ``datadiet.kernels``, on CUDA tensors, or on CPU tensors
  when ``TRITON_INTERPRET=1`` was set before the kernels were first imported.
- ``torch``: the plain-PyTorch reference (any device, slow, the tests' oracle).
- ``auto``: the compiled kernel of the tensor's device, else Triton on CUDA, else ``torch``.
"""

from __future__ import annotations

import warnings

import torch

from datadiet import _extension as ext

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")


def available(device: torch.device) -> list[str]:
    """Backends that can run an op on tensors of ``device``, fastest first."""
    return list(_available(device.type))


_AVAILABLE: dict[str, tuple[str, ...]] = {}


def _available(device_type: str) -> tuple[str, ...]:
    # Fixed for the process (the compiled modules, triton and TRITON_INTERPRET are read at
    # import), so computed once per device type.
    if device_type not in _AVAILABLE:
        _AVAILABLE[device_type] = _compute_available(torch.device(device_type))
    return _AVAILABLE[device_type]


def _compute_available(device: torch.device) -> tuple[str, ...]:
    out = []
    if device.type == "cpu" and ext.compiled_cpu():
        out.append("cpu")
    if device.type == "cuda" and ext.compiled_cuda():
        out.append("cuda")
    elif device.type == "cuda":  # once per process: CUDA tensors, slower kernels, and why
        warnings.warn(f"datadiet: the CUDA kernels are not loaded ({ext.CUDA_ERROR}); ops on CUDA tensors run on "
                      "Triton or plain torch, slower and with Triton's limits", RuntimeWarning, stacklevel=3)
    if ext.TRITON_AVAILABLE and (device.type == "cuda" or (device.type == "cpu" and ext.triton_interpret())):
        out.append("triton")
    out.append("torch")
    return tuple(out)


def resolve(backend: str, device: torch.device, op: str, implemented: tuple[str, ...] = BACKENDS) -> str:
    """The backend to run ``op`` with; ``implemented`` narrows it for ops that lack some backends."""
    if backend not in BACKENDS:
        raise ValueError(f"datadiet.{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in implemented and backend != "auto":
        raise ValueError(f"datadiet.{op}: backend={backend!r} is not implemented for this op yet; it has "
                         f"{[b for b in implemented if b != 'auto']}")
    choices = tuple(b for b in _available(device.type) if b in implemented)
    if backend == "auto":
        # On CPU tensors the interpreter is never the fast choice.
        return next(b for b in choices if not (b == "triton" and device.type == "cpu"))
    if backend not in choices:
        why = {
            "cpu": ext.CPU_ERROR or f"tensors are on {device}",
            "cuda": ext.CUDA_ERROR or f"tensors are on {device}",
            "triton": "triton is not installed" if not ext.TRITON_AVAILABLE
            else f"tensors are on {device} (set TRITON_INTERPRET=1 to run Triton on CPU)",
        }[backend]
        raise ValueError(f"datadiet.{op}: backend={backend!r} is unavailable: {why}; available: {list(choices)}")
    return backend
