"""Compiles every Triton kernel variant ahead of time for GPU targets, no GPU needed.

    python -m datadiet.kernels.aot [--arch 80 90] [--json PATH] [--jobs N]

The variants are the kernel modules' own tables (``variants()``, see ``_launch.py``), so a new
kernel, dtype or block size a launcher can choose is compiled here too. Each one goes through
``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` and its PTX through the bundled
``ptxas -v``, which reports registers, stack frame and spill traffic per kernel (kept in
Triton's cache beside the kernel, so a warm rerun takes seconds). Prints one row
per variant and target; exits 1 when a variant fails to compile or spills more than
``datadiet.ptxas.SPILL_BUDGET`` bytes (stores or loads). Needs ``TRITON_INTERPRET`` unset (the interpreter
replaces the kernels by Python functions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

from datadiet import ptxas

ARCHS = (80, 90)


def compile_variant(index: int, arch: int) -> dict:
    """Compiles variant ``index`` of ``_launch.all_variants()`` for sm_``arch``; its resource row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from datadiet.kernels._launch import all_variants

    v = list(all_variants())[index]
    row = {"kernel": v.label(), "arch": arch}
    try:
        source = ASTSource(fn=v.kernel, signature=v.signature(), constexprs=dict(v.constexprs))
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": v.num_warps, "enable_fp_fusion": v.enable_fp_fusion})
    except Exception as exc:  # noqa: BLE001 (any compile failure is reported, not raised)
        return {**row, "error": f"{type(exc).__name__}: {exc}"}
    row["shared"] = compiled.metadata.shared
    row.update(_cached_usage(compiled, arch, v.enable_fp_fusion))
    return row


def _cached_usage(compiled, arch: int, fp_fusion: bool) -> dict:
    """``_ptxas_usage``, kept beside the kernel in Triton's cache (a warm rerun runs no ptxas)."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.metadata.hash)
    path = cache.get_file(_USAGE_FILE)
    if path is not None:
        with open(path) as f:
            return json.load(f)
    usage = _ptxas_usage(compiled.asm["ptx"], arch, fp_fusion)
    cache.put(json.dumps(usage), _USAGE_FILE, binary=False)
    return usage


_USAGE_FILE = "datadiet_ptxas_usage.json"


def _ptxas_usage(ptx: str, arch: int, fp_fusion: bool) -> dict:
    """Registers, stack frame and spill bytes from ``ptxas -v`` (the flags Triton itself uses)."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        (row,) = ptxas.usage(src, ["--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
                                   *([] if fp_fusion else ["--fmad=false"])])
    row.pop("function")
    row.pop("shared")  # Triton's shared memory is dynamic: the compiled metadata has it
    return row


def compile_all(archs=ARCHS, jobs: int | None = None) -> list[dict]:
    from datadiet.kernels._launch import all_variants

    count = len(list(all_variants()))
    work = [(i, a) for a in archs for i in range(count)]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        return list(pool.map(compile_variant, *zip(*work)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datadiet.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (80 90)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--jobs", type=int, help="parallel compiles (default: every core)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: under the interpreter the kernels are Python functions")
    return ptxas.report(compile_all(args.arch, args.jobs), args.json)


if __name__ == "__main__":
    sys.exit(main())
