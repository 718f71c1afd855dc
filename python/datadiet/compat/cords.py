"""CORDS' OMP solvers (``cords/selectionstrategies/helpers/omp_solvers.py``) on ``datadiet.ops.omp``.

Same names, signatures, argument conventions and return types as CORDS:

- ``OrthogonalMP_REG_Parallel(A, b, tol=1e-4, nnz=None, positive=False, lam=1, device="cpu")``,
  ``OrthogonalMP_REG_Parallel_V1`` (the same, plus CORDS' later ``dtype`` argument) and
  ``OrthogonalMP_REG_NNLS_Parallel``: torch ``A`` ``(d, n)`` with the atoms as **columns**, ``b``
  ``(d,)``; return a dense float32 tensor of ``n`` weights on ``device``.
- ``OrthogonalMP_REG(A, b, tol=1e-4, nnz=None, positive=False, lam=1)`` and
  ``OrthogonalMP_REG_NNLS``: the numpy versions, returning a float64 ``np.ndarray`` of ``n``.

``patch()`` swaps them into an imported ``cords`` (every loaded ``cords.*`` module that holds
one of these names, so ``GradMatchStrategy``'s ``ompwrapper`` calls ours without other changes);
``patch().undo()`` or ``with patch():`` puts CORDS' back.

Where results differ from CORDS', and why:

- **Non-negativity** (``positive=True``): CORDS re-solves the ridge system and, while a
  coefficient is negative, drops the most negative atom and re-solves — a heuristic that can
  drop an atom it just picked, stop early when the drop empties the support, or leave a worse
  fit. ``datadiet.ops.omp`` solves the non-negative ridge problem on the support exactly
  (active-set NNLS), so its objective ``‖A x − b‖² + lam‖x‖²`` is never above the
  unconstrained-then-clipped answer's, and the support it returns is the one the weights use.
- **Fewer random-filled atoms**: CORDS stops at the first repeated pick (``index in indices``),
  which happens as soon as the best correlation belongs to an atom already chosen — typically
  well before ``nnz`` (one CIFAR-10 class: ~450 of 500 atoms); GradMatch then fills the rest at
  random. ``omp`` never re-picks a chosen atom, rejects numerically dependent ones instead of
  stopping, and returns up to ``nnz`` atoms until the tolerance is met or no atom correlates.
- **First coefficient**: CORDS' first iteration uses ``proj / ‖a‖²`` (no λ); ``omp`` applies the
  same ridge λ at every size.
- **Precision**: CORDS works in the input dtype (float32 on the GPU path, float64 with numpy);
  ``omp`` keeps the atoms in float32 (float32 inner products), factors and solves in float64,
  and checks in float64 that no pick raises the objective (the residual alone may rise with
  ``lam > 0``: a pick can trade residual for smaller weights; CORDS keeps every pick).
- A zero ``b`` returns zeros (CORDS divides by ``‖b‖ = 0``); ``OrthogonalMP_REG_NNLS_Parallel``
  ignores ``tol`` as CORDS' does (its tolerance test is commented out); ``tol > 1`` returns
  zeros, as CORDS' first tolerance test stops it.

The GradMatch input CORDS builds (per-class last-layer gradients) can also go straight to
``datadiet.select.gradmatch``, which batches every class in one call.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from datadiet.compat._omp import dense_weights
from datadiet.compat._patching import Patch, import_peer, swap_functions

# The modules patch() imports first: CORDS' solver module and the package re-exporting it (the
# strategy modules bind the names when imported; later imports read the patched package).
_CORDS_MODULES = ("cords.selectionstrategies.helpers", "cords.selectionstrategies.helpers.omp_solvers")


def OrthogonalMP_REG_Parallel(A: torch.Tensor, b: torch.Tensor, tol: float = 1e-4, nnz: Optional[int] = None,
                              positive: bool = False, lam: float = 1, device: Any = "cpu") -> torch.Tensor:
    """``min ‖A x − b‖² + lam‖x‖²`` over at most ``nnz`` non-zeros (``x >= 0`` with ``positive``),
    greedily; stops once ``‖A x − b‖ < tol·‖b‖``. ``A`` ``(d, n)``: atoms as columns. Returns the
    dense ``[n]`` float32 weights on ``device``."""
    return _solve_tensor("OrthogonalMP_REG_Parallel", A, b, tol, nnz, positive, lam, device)


def OrthogonalMP_REG_Parallel_V1(A: torch.Tensor, b: torch.Tensor, tol: float = 1e-4, nnz: Optional[int] = None,
                                 positive: bool = False, lam: float = 1, device: Any = "cpu",
                                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """CORDS' ``_V1`` variant (the one ``GradMatchStrategy`` calls by default): as
    ``OrthogonalMP_REG_Parallel``; ``dtype`` (CORDS' storage dtype for ``A``) is accepted and
    not needed — the atoms are read as float32 either way."""
    return _solve_tensor("OrthogonalMP_REG_Parallel_V1", A, b, tol, nnz, positive, lam, device)


def OrthogonalMP_REG_NNLS_Parallel(A: torch.Tensor, b: torch.Tensor, tol: float = 1e-4,
                                   nnz: Optional[int] = None, positive: bool = False, lam: float = 1,
                                   device: Any = "cpu") -> torch.Tensor:
    """CORDS' NNLS variant: as ``OrthogonalMP_REG_Parallel`` without the tolerance stop (CORDS
    ignores ``tol`` here)."""
    return _solve_tensor("OrthogonalMP_REG_NNLS_Parallel", A, b, 0.0, nnz, positive, lam, device)


def OrthogonalMP_REG(A: np.ndarray, b: np.ndarray, tol: float = 1e-4, nnz: Optional[int] = None,
                     positive: bool = False, lam: float = 1) -> np.ndarray:
    """The numpy solver (CORDS' CPU path): ``A`` ``(d, n)`` array, returns float64 ``[n]``."""
    return _solve_array("OrthogonalMP_REG", A, b, tol, nnz, positive, lam)


def OrthogonalMP_REG_NNLS(A: np.ndarray, b: np.ndarray, tol: float = 1e-4, nnz: Optional[int] = None,
                          positive: bool = False, lam: float = 1) -> np.ndarray:
    """CORDS' numpy NNLS variant: as ``OrthogonalMP_REG``."""
    return _solve_array("OrthogonalMP_REG_NNLS", A, b, tol, nnz, positive, lam)


DROP_INS = {f.__name__: f for f in (OrthogonalMP_REG_Parallel, OrthogonalMP_REG_Parallel_V1,
                                     OrthogonalMP_REG_NNLS_Parallel, OrthogonalMP_REG, OrthogonalMP_REG_NNLS)}


def patch() -> Patch:
    """Imports ``cords`` and replaces its OMP solvers (``DROP_INS``' names) in every loaded
    ``cords.*`` module with ours. Returns a ``Patch``: ``undo()`` restores CORDS' functions."""
    import_peer("cords", _CORDS_MODULES, "pip install cords, or put a CORDS checkout on sys.path")
    swaps = swap_functions("cords", DROP_INS)
    if not swaps:
        raise RuntimeError(f"datadiet.compat.cords.patch: no CORDS function named {', '.join(DROP_INS)} was found in "
                           "the loaded cords modules (already patched, or this CORDS version names them otherwise)")
    return Patch(swaps, "cords")


def load_original(source: Optional[str] = None) -> Optional[Any]:
    """CORDS' own ``omp_solvers`` module, for comparing against it: from ``source`` (a CORDS
    checkout or its ``omp_solvers.py``), else from an installed ``cords``; None when neither is
    found. Loaded under a private name (no ``cords`` package import, nothing patched), with
    numpy's error state restored after it (the module sets ``np.seterr(all='raise')``)."""
    import importlib.util
    import os

    path = None
    if source:
        path = source if source.endswith(".py") else os.path.join(
            source, "cords", "selectionstrategies", "helpers", "omp_solvers.py")
    elif importlib.util.find_spec("cords") is not None:
        spec = importlib.util.find_spec("cords.selectionstrategies.helpers.omp_solvers")
        path = spec.origin if spec else None
    if not path or not os.path.exists(path):
        return None
    saved = np.geterr()
    try:
        spec = importlib.util.spec_from_file_location("_datadiet_cords_omp_solvers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        np.seterr(**saved)
    return module


def _solve_tensor(name, A, b, tol, nnz, positive, lam, device) -> torch.Tensor:
    if not isinstance(A, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"datadiet.compat.cords.{name}: A and b must be torch tensors, got "
                        f"{type(A).__name__} and {type(b).__name__} (the numpy solver is OrthogonalMP_REG)")
    atoms, target, k, tol = _problem(name, A.detach(), b.detach().to(A.device), tol, nnz, lam)
    return dense_weights(atoms, target, k, lam=lam, positive=positive, tol=tol).to(device)


def _solve_array(name, A, b, tol, nnz, positive, lam) -> np.ndarray:
    A, b = np.asarray(A), np.asarray(b)
    atoms, target, k, tol = _problem(name, torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)),
                                     torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)), tol, nnz, lam)
    return dense_weights(atoms, target, k, lam=lam, positive=positive, tol=tol).double().numpy()


def _problem(name, A: torch.Tensor, b: torch.Tensor, tol, nnz, lam):
    """Checks CORDS' conventions; returns the atoms as rows, the target, the budget (0 when CORDS
    would stop before its first pick: ``tol > 1``) and the tolerance for ``omp`` (below 1)."""
    if A.dim() != 2:
        raise ValueError(f"datadiet.compat.cords.{name}: A must be (d, n) with the atoms as columns, got shape "
                         f"{tuple(A.shape)}")
    if b.dim() != 1 or b.shape[0] != A.shape[0]:
        raise ValueError(f"datadiet.compat.cords.{name}: b must be ({A.shape[0]},) to match A {tuple(A.shape)}, got "
                         f"shape {tuple(b.shape)}")
    n = A.shape[1]
    if nnz is not None and int(nnz) < 0:
        raise ValueError(f"datadiet.compat.cords.{name}: nnz must be >= 0 or None, got {nnz}")
    if not float(lam) >= 0:
        raise ValueError(f"datadiet.compat.cords.{name}: lam must be >= 0, got {lam}")
    if not float(tol) >= 0:
        raise ValueError(f"datadiet.compat.cords.{name}: tol must be >= 0, got {tol}")
    k = n if nnz is None else min(int(nnz), n)
    if float(tol) > 1:  # CORDS' first test, ‖b‖/‖b‖ < tol, already stops it
        k = 0
    return A.T.float(), b.float(), k, min(float(tol), 1 - 2**-24)
