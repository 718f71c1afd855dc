"""datadiet: train on a well-chosen subset of the data, fast.

``datadiet.ops`` holds the accelerated ops (CPU, CUDA, Triton and plain-torch backends),
``datadiet.select`` selection strategies built on them, ``datadiet.soup`` / ``datadiet.prune``
model merging and pruning,
``datadiet.reference`` their plain-PyTorch references, ``datadiet.build_info()`` what
this build contains.
"""

from __future__ import annotations

import torch

from datadiet import _extension, backends, ops, prune, reference, select, soup
from datadiet.ops import CEScores, ce_scores, stratified_select, topk_select, weighted_sample

__version__ = "0.1.0"


def build_info() -> dict:
    """Version, compiled backends, CUDA architectures, compiler, OpenMP threads, the CPU kernel
    capability loaded (``cpu_capability``: ``default``, ``avx2`` or ``avx512`` on x86-64; the ones
    built and the ones this CPU runs beside it), and what this process can actually run
    (``runnable_backends``)."""
    if _extension._C is None:
        info = {"version": __version__, "compiled_backends": [], "error": _extension.CPU_ERROR}
    else:
        info = dict(_extension._C.build_info())
        info["cpu_capability"] = _extension.CPU_CAPABILITY
        if _extension.CPU_KERNELS_ERROR:
            info["cpu_kernels_missing_because"] = _extension.CPU_KERNELS_ERROR
        info["cpu_capabilities_supported"] = _extension._C.cpu_capabilities()
    info["torch"] = torch.__version__
    info["cuda_kernels_loaded"] = _extension.compiled_cuda()
    if not _extension.compiled_cuda():
        info["cuda_kernels_missing_because"] = _extension.CUDA_ERROR
    info["triton"] = _extension.TRITON_AVAILABLE
    info["runnable_backends"] = {
        "cpu": backends.available(torch.device("cpu")),
        "cuda": backends.available(torch.device("cuda")) if torch.cuda.is_available() else [],
    }
    return info


__all__ = ["CEScores", "__version__", "backends", "build_info", "ce_scores", "ops", "prune", "reference", "select",
           "soup", "stratified_select", "topk_select", "weighted_sample"]
