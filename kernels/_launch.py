"""The one way datadiet launches a Triton kernel, and the compile table behind it.

``launch(kernel, grid, *args, num_warps=..., **constexprs)``

- runs under a device guard for the tensors' device, so Triton takes that device and its
  current stream (as the CUDA ops do), whatever the current device is; refuses tensors on
  several devices with an error naming them;
- with ``DATADIET_CHECK_LAUNCHES=1`` (the test suite sets it) refuses a configuration that is
  not in its module's compile table: argument types, constexpr values and launch options must
  match a ``Variant`` of the module's ``variants()``.

Every kernel module lists in ``variants()`` every compilation its launchers can ask for;
``datadiet.kernels.aot`` compiles them all ahead of time for sm_80 and sm_90 without a GPU.
The check runs on every launch of the test suite, so a launcher choosing a dtype, block size or
flag nobody listed fails there; integer widths are not part of the check (Triton picks i32 or
i64 from the value), the AOT build compiles an all-int64 twin of each kernel instead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch

POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
           torch.int64: "*i64", torch.int32: "*i32", torch.int8: "*i8", torch.uint8: "*u8"}
_INTS = ("i32", "i64")  # Triton picks the width from the value at launch


@dataclass(frozen=True)
class Variant:
    """One compilation of ``kernel``: the Triton type of each runtime argument (in parameter
    order), the constexpr values, and the launch options."""

    kernel: Any
    types: tuple[str, ...]
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int = 4
    enable_fp_fusion: bool = True

    @property
    def name(self) -> str:
        return _name(self.kernel)

    def signature(self) -> dict[str, str]:
        """The ``ASTSource`` signature: runtime parameters typed, constexpr ones marked."""
        types = iter(self.types)
        return {p: "constexpr" if p in dict(self.constexprs) else next(types) for p in _parameters(self.kernel)}

    def key(self) -> tuple:
        return _key(self.name, self.types, self.constexprs, self.num_warps, self.enable_fp_fusion)

    def label(self) -> str:
        consts = " ".join(f"{k}={_show(v)}" for k, v in self.constexprs)
        fusion = "" if self.enable_fp_fusion else " no-fma"
        runtime = [p for p in _parameters(self.kernel) if p not in dict(self.constexprs)]
        wide = [p for p, t in zip(runtime, self.types) if t == "i64"]
        ints = "" if not wide else " i64:" + ("all" if len(wide) == sum(t in _INTS for t in self.types) > 1
                                             else ",".join(wide))
        halves = "".join(f" {p}={t[1:]}" for p, t in zip(runtime, self.types) if t in ("*fp16", "*bf16"))
        return f"{self.name} {consts} w{self.num_warps}{fusion}{halves}{ints}"


def variant(kernel, types: str, *, num_warps: int = 4, enable_fp_fusion: bool = True, **constexprs) -> Variant:
    """A ``Variant`` from space-separated runtime argument types, e.g. ``"*fp32 *i64 i32"``."""
    runtime = [p for p in _parameters(kernel) if p not in constexprs]
    typed = tuple(types.split())
    if len(typed) != len(runtime):
        raise ValueError(f"{_name(kernel)}: {len(typed)} types for the runtime parameters {runtime}")
    return Variant(kernel, typed, _ordered(kernel, constexprs), num_warps, enable_fp_fusion)


def launch(kernel, grid, *args, num_warps: int = 4, enable_fp_fusion: bool = True, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)`` on the tensors' device (see the module docstring)."""
    device = _device_of(kernel, args)
    if _CHECK:
        _check_in_table(kernel, args, num_warps, enable_fp_fusion, constexprs)
    guard = torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
    with guard:
        kernel[grid](*args, num_warps=num_warps, enable_fp_fusion=enable_fp_fusion, **constexprs)


def upload(rows, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A launch table (nested lists of numbers) on ``device`` without blocking the host: a pinned
    staging copy and a non-blocking transfer on the device's current stream."""
    table = torch.tensor(rows, dtype=dtype)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def _device_of(kernel, args) -> torch.device | None:
    devices = {a.device for a in args if isinstance(a, torch.Tensor)}
    if len(devices) > 1:
        named = ", ".join(f"{p} on {a.device}" for p, a in zip(_parameters(kernel), args) if isinstance(a, torch.Tensor))
        raise ValueError(f"datadiet Triton kernel {_name(kernel)}: tensors on several devices ({named})")
    return next(iter(devices), None)


_CHECK = os.environ.get("DATADIET_CHECK_LAUNCHES", "0") not in ("", "0")
_TABLE: set[tuple] = set()


def _check_in_table(kernel, args, num_warps, enable_fp_fusion, constexprs) -> None:
    from triton.runtime.jit import mangle_type

    types = tuple(mangle_type(a) for a in args)
    ordered = _ordered(kernel, constexprs)
    if not _TABLE:
        _TABLE.update(v.key() for v in all_variants())
    if _key(_name(kernel), types, ordered, num_warps, enable_fp_fusion) not in _TABLE:
        raise AssertionError(f"{_name(kernel)} launched with types {types}, constexprs "
                             f"{dict(ordered)}, num_warps={num_warps}, enable_fp_fusion={enable_fp_fusion}: not in "
                             "its module's variants(), so never compiled ahead of time; add it there")


def _key(name: str, types, constexprs: tuple, num_warps: int, enable_fp_fusion: bool) -> tuple:
    """What the check compares: integer widths are left out (Triton picks them from the value)."""
    return name, tuple("int" if t in _INTS else t for t in types), constexprs, num_warps, enable_fp_fusion


def _ordered(kernel, constexprs: dict) -> tuple:
    """Constexpr (name, value) pairs in parameter order."""
    return tuple((p, constexprs[p]) for p in _parameters(kernel) if p in constexprs)


def _name(kernel) -> str:
    """``module.kernel``: two modules may each have a ``_keys_kernel``."""
    return f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}"


def _parameters(kernel) -> list[str]:
    return list(kernel.arg_names)


def _show(v) -> str:
    return getattr(v, "name", None) or str(v)


def kernel_modules() -> list:
    """Every module of ``datadiet.kernels`` that launches kernels (it defines ``variants``)."""
    import importlib
    import pkgutil

    import datadiet.kernels as package

    modules = [importlib.import_module(f"datadiet.kernels.{m.name}") for m in pkgutil.iter_modules(package.__path__)
               if not m.name.startswith("_") and m.name != "aot"]
    return [m for m in modules if hasattr(m, "variants")]


def all_variants() -> Iterable[Variant]:
    for module in kernel_modules():
        yield from module.variants()
