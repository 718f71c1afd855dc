"""Registers, shared memory, stack and spills of datadiet's GPU kernels, from ``ptxas -v``,
without a GPU: the Triton kernels through ``datadiet.kernels.aot`` and the compiled CUDA module
(``_C_cuda.so``) here, from the PTX embedded in it, assembled with the options the build gave.

    python -m datadiet.ptxas [--module PATH] [--json PATH]

prints one row per CUDA kernel and architecture and exits 1 when a kernel spills more than
``SPILL_BUDGET`` bytes. The CUDA module's PTX goes through the toolkit's ``ptxas`` (the build's
PTX version; ``CUDA_HOME``, ``/usr/local/cuda`` or ``PATH``) with the options the build embedded,
Triton's (``datadiet.kernels.aot``) through the ptxas Triton compiles with; ``cuobjdump`` is
Triton's. Rows cover every function ptxas reports properties for: the kernels and any callee
it did not inline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SPILL_BUDGET = 256  # bytes of spill stores, and of spill loads, a kernel may have per thread on any target


def tool(name: str) -> str:
    """Triton's bundled NVIDIA tool (cuobjdump): present wherever triton is installed."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"datadiet.ptxas: {path} is missing (triton's bundled CUDA tools)")
    return path


def toolkit_ptxas() -> str:
    """The CUDA toolkit's ptxas, looked up where the build looks for nvcc."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "ptxas")):
            return os.path.join(root, "bin", "ptxas")
    found = shutil.which("ptxas")
    if found is None:
        raise FileNotFoundError("datadiet.ptxas: no CUDA toolkit ptxas (set CUDA_HOME)")
    return found


def usage(ptx_path: str, options: list[str], assembler: str) -> list[dict]:
    """``assembler -v`` (a ptxas) over one PTX file: a row per function with properties, entry
    functions (kernels, ``entry`` True) and any non-inlined callee."""
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([assembler, "-v", *options, ptx_path, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"datadiet.ptxas: ptxas failed on {ptx_path}: {run.stderr[-2000:]}")
    log = run.stderr
    entries = {}  # kernel -> (registers, static shared memory)
    for block in log.split("Compiling entry function '")[1:]:
        name = block.split("'")[0]
        used = re.search(r"Used (\d+) registers(?:[^\n]*?(\d+) bytes smem)?", block)
        entries[name] = (int(used.group(1)), int(used.group(2) or 0)) if used else (0, 0)
    rows = []
    for name, stack, stores, loads in re.findall(
            r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
            r"(\d+) bytes spill loads", log):
        registers, shared = entries.get(name, (0, 0))
        rows.append({"function": name, "entry": name in entries, "registers": registers, "shared": shared,
                     "stack": int(stack), "spill_stores": int(stores), "spill_loads": int(loads)})
    missing = set(entries) - {r["function"] for r in rows}
    if missing:
        raise RuntimeError(f"datadiet.ptxas: no properties in the ptxas log for {sorted(missing)}")
    return rows


def cuda_module_rows(module: str) -> list[dict]:
    """Every kernel of a compiled CUDA module, per architecture whose PTX it embeds."""
    rows = []
    assembler = toolkit_ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        listing = subprocess.run([tool("cuobjdump"), "-xptx", "all", os.path.abspath(module)], cwd=tmp,
                                 capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            found = re.search(r":\s*(\S+\.ptx)\s*(.*)$", line)
            if not found:
                continue
            name, flags = found.groups()  # the options the build handed ptxas, e.g. -arch=sm_90 --fmad false
            arch = int(re.search(r"-arch=sm_(\d+)", flags).group(1))
            for row in usage(os.path.join(tmp, name), flags.split(), assembler):
                rows.append({"kernel": row.pop("function"), "arch": arch, **row})
    for row, name in zip(rows, _readable([r["kernel"] for r in rows])):
        row["kernel"] = name
    return rows


def _readable(mangled: list[str]) -> list[str]:
    """Demangled names (one c++filt call) without parameter lists and anonymous-namespace noise."""
    try:
        names = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return mangled
    if len(names) != len(mangled):
        return mangled
    out = []
    for name in names:
        name = re.sub(r"\(anonymous namespace\)::", "", name)
        out.append(name[5:].split("(")[0] if name.startswith("void ") else name.split("(")[0])
    return out


def problems(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"{r['kernel']} sm_{r['arch']}: {r['error']}")
        elif max(r["spill_stores"], r["spill_loads"]) > SPILL_BUDGET:
            out.append(f"{r['kernel']} sm_{r['arch']}: spills {r['spill_stores']} B stores / {r['spill_loads']} B "
                       f"loads, budget {SPILL_BUDGET} B")
    return out


def table(rows: list[dict], width: int = 72) -> str:
    lines = [f"{'kernel':<{width}} {'arch':>5} {'regs':>5} {'smem':>7} {'stack':>6} {'spill st/ld':>12}"]
    for r in rows:
        arch, name = f"sm_{r['arch']}", r["kernel"][:width]
        if "error" in r:
            lines.append(f"{name:<{width}} {arch:>5}  COMPILE ERROR: {r['error'][:200]}")
        else:
            spills = f"{r['spill_stores']}/{r['spill_loads']}"
            lines.append(f"{name:<{width}} {arch:>5} {r['registers']:>5} {r['shared']:>7} {r['stack']:>6} "
                         f"{spills:>12}")
    return "\n".join(lines)


def report(rows: list[dict], json_path: str | None, width: int = 72) -> int:
    """Prints the table, writes the JSON, returns the exit status (1 on any problem)."""
    print(table(rows, width))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"spill_budget": SPILL_BUDGET, "rows": rows}, f, indent=1)
    bad = problems(rows)
    for line in bad:
        print("FAIL", line, file=sys.stderr)
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datadiet.ptxas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", help="the CUDA module (default: the installed datadiet/_C_cuda.so)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    module = args.module or os.path.join(os.path.dirname(__file__), "_C_cuda.so")
    if not os.path.exists(module):
        parser.error(f"{module} does not exist (datadiet built without CUDA?)")
    return report(cuda_module_rows(module), args.json, width=90)


if __name__ == "__main__":
    sys.exit(main())
