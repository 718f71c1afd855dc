"""Sphinx configuration of datadiet's API reference (``scripts/build_docs.sh``: warnings are
errors). It documents the installed package, and writes ``torch_ops.rst`` from the schemas the
compiled core registers, so the page always matches the binary."""

import os

import torch

import datadiet

project = "datadiet"
release = version = datadiet.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False


def _torch_ops_page() -> str:
    schemas = sorted((s for s in torch._C._jit_get_all_schemas() if s.name.startswith("datadiet::")),
                     key=lambda s: (s.name, s.overload_name))
    info = datadiet.build_info()
    lines = ["``torch.ops.datadiet``", "======================", "",
             "The raw ops the compiled core registers (one schema each; CPU kernels from the",
             "``_cpu_<capability>`` module loaded at import, CUDA kernels from ``_C_cuda``). Libraries",
             "that want no Python wrapper call these directly, e.g.",
             "``torch.ops.datadiet.topk_select(scores, [0, n], [k], True)``; the wrappers in",
             ":mod:`datadiet.ops` add argument checks, backend choice and defaults.", "",
             f"Generated from this build: datadiet {info['version']}, compiled backends "
             f"{', '.join(info['compiled_backends'])}, CPU capabilities {', '.join(info['cpu_capabilities_built'])}.",
             ""]
    for s in schemas:
        name = s.name.split("::", 1)[1] + (f".{s.overload_name}" if s.overload_name else "")
        lines += [f"``{name}``", "-" * (len(name) + 4), "", ".. code-block:: text", "", f"   {s}", ""]
    return "\n".join(lines)


_page = os.path.join(os.path.dirname(__file__), "torch_ops.rst")
with open(_page + ".tmp", "w") as f:
    f.write(_torch_ops_page())
os.replace(_page + ".tmp", _page)
