"""Compiles every Triton kernel variant ahead of time for GPU targets, no GPU needed.

    python -m datadiet.kernels.aot [--arch 80 90] [--json PATH] [--jobs N]

The variants are the kernel modules' own tables (``variants()``, see ``_launch.py``), so a new
kernel, dtype or block size a launcher can choose is compiled here too, plus, per kernel, one
"wide" twin with every integer argument int64 (Triton types an int by its value, so a size past
2³¹ compiles another kernel). Each goes through ``triton.compile`` for ``GPUTarget("cuda", arch,
32)`` with the specialisation a launch gives fresh torch tensors (pointers 16-byte aligned), and
its PTX through the ``ptxas -v`` Triton compiles with, which reports registers, stack frame and
spill traffic (kept in Triton's cache beside the kernel, so a warm rerun takes seconds).

Not compiled separately: the runtime's other specialisations, integer arguments equal to 1
(folded to constants) or divisible by 16 (an alignment hint), and pointers into views that are
not 16-byte aligned; they differ from the compiled ones in hints and folded constants only.

Prints one row per variant and target; exits 1 when a variant fails to compile or spills more
than ``datadiet.ptxas.SPILL_BUDGET`` bytes (stores or loads). Needs ``TRITON_INTERPRET`` unset
(the interpreter replaces the kernels by Python functions).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

from datadiet import ptxas

ARCHS = (80, 90)
_USAGE_FILE = "datadiet_ptxas_usage.v2.json"  # the version changes with what ptxas.usage returns


@functools.lru_cache(maxsize=None)
def compiled_variants() -> tuple:
    """Every variant of every module, then one wide (all-int64) twin per kernel (built once per
    process: each compile worker indexes it)."""
    from datadiet.kernels._launch import all_variants

    variants = tuple(all_variants())
    listed = set(variants)
    wide, seen = [], set()
    for v in variants:
        twin = dataclasses.replace(v, types=tuple("i64" if t == "i32" else t for t in v.types))
        if v.name not in seen and "i32" in v.types and twin not in listed:
            seen.add(v.name)
            wide.append(twin)
    return variants + tuple(wide)


def compile_variant(index: int, arch: int) -> dict:
    """Compiles variant ``index`` of ``compiled_variants()`` for sm_``arch``; its resource row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    v = compiled_variants()[index]
    row = {"kernel": v.label(), "arch": arch}
    try:
        target = GPUTarget("cuda", arch, 32)
        aligned = make_backend(target).parse_attr("D")
        signature = v.signature()
        attrs = {(i,): aligned for i, t in enumerate(signature.values()) if t.startswith("*")}
        source = ASTSource(fn=v.kernel, signature=signature, constexprs=dict(v.constexprs), attrs=attrs)
        compiled = triton.compile(source, target=target,
                                  options={"num_warps": v.num_warps, "enable_fp_fusion": v.enable_fp_fusion})
        row["shared"] = compiled.metadata.shared
        row.update(_cached_usage(compiled, arch, v.enable_fp_fusion))
    except Exception as exc:  # noqa: BLE001 (any compile or ptxas failure is reported, not raised)
        return {"kernel": row["kernel"], "arch": arch, "error": f"{type(exc).__name__}: {exc}"}
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


def _ptxas_usage(ptx: str, arch: int, fp_fusion: bool) -> dict:
    """Registers, stack frame and spill bytes from ``ptxas -v``: the binary and flags Triton uses."""
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    options = ["--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
               *([] if fp_fusion else ["--fmad=false"]), *(knobs.nvidia.ptxas_options or "").split()]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        rows = ptxas.usage(src, options, get_ptxas(arch).path)
    entry = next(r for r in rows if r["entry"])
    worst = {k: max(r[k] for r in rows) for k in ("stack", "spill_stores", "spill_loads")}
    return {"registers": entry["registers"], **worst}  # shared memory: Triton's is dynamic, in the metadata


def compile_all(archs=ARCHS, jobs: int | None = None) -> list[dict]:
    count = len(compiled_variants())
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
    return ptxas.report(compile_all(args.arch, args.jobs), args.json, width=96)


if __name__ == "__main__":
    sys.exit(main())
