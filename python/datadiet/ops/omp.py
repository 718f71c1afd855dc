"""``omp``: orthogonal matching pursuit — the GradMatch solver — over one or many problems.

Wrapper, argument checks and fake registration for ``torch.ops.datadiet.omp``. The algorithm
(growing Cholesky factor, active-set NNLS, residual-based correlations) is described in
``csrc/ops/omp/omp_engine_cpu.h``; ``datadiet.reference.omp`` is the float64 rebuild-and-solve
reference with the same rules.

Backends: ``cpu`` and ``cuda`` (compiled), ``triton`` (``datadiet.kernels.omp``: the same steps as
the CUDA engine, budgets up to 2048) and ``torch`` (the reference).

The CUDA engine solves each problem in one thread block (many problems run side by side, one per
block): fine for GradMatch's per-class problems, but one huge problem would run its O(k²) steps
on a single multiprocessor, with a 2·k²·8-byte factor. Budgets above ``CUDA_MAX_BUDGET`` per
problem are refused with that advice rather than left to run for hours.
"""

from __future__ import annotations

from typing import NamedTuple, NoReturn, Optional, Sequence, Union, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.ops._args import IntSeqLike, int_list
# PIVOT_EPS: an atom enters the support only if the squared sine of its angle to the span of the
# support (its squared Cholesky pivot relative to ‖a‖² + lam) exceeds it; the Gram entries are
# float32 dot products, so a smaller pivot is mostly rounding (csrc/ops/omp/omp_rules.h).
# STOP_REASONS: why a problem's solve stopped, by OMPResult.stop code: "budget" — the support
# reached the budget; "tolerance" — ‖r‖ <= tol·‖target‖ (a zero target stops here at once);
# "no_correlation" — no unpicked atom correlates (positive: positively) above 1e-6 of the largest
# initial correlation, so no admissible atom is left; "rank" — lam = 0 and the support has as
# many atoms as the atoms have dimensions, so every other atom is dependent.
from datadiet.reference.omp import PIVOT_EPS as PIVOT_EPS, STOP_REASONS as STOP_REASONS, omp_reference

# omp_factored's target: (errors_t, features_t) or (errors_t, features_t, offsets_t)
FactoredTarget = Union[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, IntSeqLike]]


class OMPResult(NamedTuple):
    """``indices`` int64 and ``weights`` float32 of the selected atoms in the order they entered
    the final support, padded with -1 / 0 up to the budget. ``residual``: ``‖target − Σ w_s a_s‖``,
    never above ``‖target‖``. The objective the solver minimises, ``residual² + lam·‖weights‖²``,
    never rises from one pick to the next, so a larger budget never ends higher (with ``lam = 0``
    that is the residual; with ``lam > 0`` a pick may trade residual for smaller weights).
    ``iterations``: atoms picked; ``target_norm``: ``‖target‖`` (``residual / target_norm`` is the
    relative residual); ``stop``: why the solve ended, an index into ``STOP_REASONS`` (fewer atoms
    than the budget come with ``tolerance``, ``no_correlation`` or ``rank``); ``rejected``: picks
    refused because the atom was numerically dependent on the support (``PIVOT_EPS``) or its solve
    would have raised the objective (only rounding can, near a dependent atom) — they count as
    iterations, not atoms. ``iterations − rejected − found`` atoms were dropped by the
    non-negative solve. Batched calls concatenate problems (``[Σ budgets]``) and give ``[P]``
    residuals, iterations, norms, stops and rejections; single calls give ``[k]`` and scalars."""

    indices: torch.Tensor
    weights: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    target_norm: torch.Tensor
    stop: torch.Tensor
    rejected: torch.Tensor


def omp(
    atoms: torch.Tensor,
    target: torch.Tensor,
    k: Optional[int] = None,
    *,
    lam: float = 0.0,
    positive: bool = True,
    tol: float = 0.0,
    offsets: Optional[IntSeqLike] = None,
    budgets: Optional[IntSeqLike] = None,
    check_values: bool = True,
    backend: str = "auto",
) -> OMPResult:
    """Greedy sparse approximation ``min ‖Σ_{s∈S} w_s a_s − b‖² + lam·‖w‖²`` with ``|S| ≤ k``.

    Args:
        atoms: ``[N, d]`` rows are the atoms (e.g. per-sample gradients); computed in float32.
        target: ``[d]`` the vector to match (GradMatch: the sum of the training — or validation —
            gradients), or ``[P, d]`` one per problem with ``offsets``.
        k: the budget (single problem), or one budget for every problem.
        offsets: ``P + 1`` row offsets: problem g owns atoms ``offsets[g]:offsets[g+1]`` (e.g. one
            class each); its indices are returned as rows of ``atoms``.
        budgets: one budget per problem (instead of ``k``).
        lam: ridge λ >= 0. positive: weights >= 0 (exact active-set NNLS on the support).
        tol: stop once ``‖residual‖ <= tol·‖target‖``.
        check_values: reject non-finite atoms / targets (the CPU kernel always does; elsewhere the
            check costs one host synchronisation).
    """
    atoms_, targets, offs, ks = _check(atoms, target, k, offsets, budgets, lam, tol)
    chosen = resolve(backend, atoms.device, "omp")
    check_engine_budget("omp", chosen, ks)
    if chosen != "cpu" and check_values and not torch.compiler.is_compiling():
        for name, t in (("atoms", atoms_), ("target", targets)):
            _check_finite("omp", name, t)
    args = (offs, ks, float(lam), bool(positive), float(tol))
    if chosen == "torch":
        out = omp_reference(atoms_, targets, *args)
    elif chosen == "triton":
        out = torch.ops.datadiet.omp_triton(atoms_, targets, *args)
    else:
        out = torch.ops.datadiet.omp(atoms_, targets, *args)
    return _result(out, targets.double().norm(dim=1).float(), single=offsets is None)


CUDA_MAX_BUDGET = 8192


def check_engine_budget(op: str, chosen: str, budgets: Sequence[int]) -> None:
    """Refuses a problem budget the chosen engine cannot serve well (module docstring)."""
    largest = max(budgets, default=0)
    if chosen == "triton":
        from datadiet.kernels.omp import _check_budget  # Triton is importable once chosen

        _check_budget(list(budgets))
    if chosen == "cuda" and largest > CUDA_MAX_BUDGET:
        raise ValueError(f"datadiet.{op}: the CUDA backend solves each problem in one thread block and takes budgets "
                         f"up to {CUDA_MAX_BUDGET} per problem, got {largest} (one block would run for hours); split "
                         "the problem (GradMatch: mode='per_class'), lower the budget, or use backend='cpu'")


def _check_finite(op: str, name: str, t: torch.Tensor) -> None:
    # A finite sum (one read pass, no temporaries) proves every entry finite; only a non-finite
    # sum (a NaN/inf entry, or an overflow) pays for locating the culprit.
    if bool(torch.isfinite(t.sum())):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        r, c = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"datadiet.{op}: {name} must be finite, got {float(t[r, c])} at row {r}, column {c}")


def _result(out: Sequence[torch.Tensor], target_norm: torch.Tensor, single: bool) -> OMPResult:
    indices, weights, residual, iterations, stop, rejected = out
    if single:
        return OMPResult(indices, weights, residual[0], iterations[0], target_norm[0], stop[0], rejected[0])
    return OMPResult(indices, weights, residual, iterations, target_norm, stop, rejected)


def omp_factored(
    errors: torch.Tensor,
    features: torch.Tensor,
    k: Optional[int] = None,
    *,
    bias: bool = True,
    target: Optional[FactoredTarget] = None,
    lam: float = 0.0,
    positive: bool = True,
    tol: float = 0.0,
    offsets: Optional[IntSeqLike] = None,
    budgets: Optional[IntSeqLike] = None,
    check_values: bool = True,
    backend: str = "auto",
) -> OMPResult:
    """``omp`` over last-layer gradients ``g_i = e_i ⊗ h̃_i`` given as factors, never forming the
    ``N × C·(D+1)`` matrix (10 TB for ImageNet at D = 2048).

    Args:
        errors: ``[N, C]`` ``e_i = p_i − y_i`` (``ce_scores(..., return_embedding=True).embedding``).
        features: ``[N, D]`` inputs of the final linear layer; ``bias=True`` treats them as having
            a 1 appended (never copied), so the atoms are the gradients w.r.t. weight and bias.
        target: what to match. ``None``: each problem's own gradient sum ``Σ_i e_i h̃_iᵀ`` (GradMatch
            on the training set). ``(errors_t, features_t)`` or ``(errors_t, features_t, offsets_t)``:
            the summed gradient of another set (a validation set), per problem with ``offsets_t``.
        k, offsets, budgets, lam, positive, tol, check_values, backend: as in ``omp``.

    Costs: an iteration computes one Gram column, ``(E e_j) ⊙ (H h_j + bias)``: O(n·(C + D)); the target
    correlations are two matmuls per problem. The residual is ``sqrt(‖b‖² − 2wᵀp + wᵀG_SS w)`` over the
    stored float32 Gram columns (float64 sums; no ``C × D`` residual is formed): its error is
    ~1e-4·‖b‖, so a residual far below that is reported with less relative accuracy than ``omp``'s,
    and one at that rounding level can read 0 (``stop`` is then ``tolerance`` even with ``tol = 0``).
    The correlations are summed in Gram-slot order, which depends on the budget once slots are
    reused, so runs with different budgets can differ by rounding from then on.
    """
    if not isinstance(errors, torch.Tensor) or not isinstance(features, torch.Tensor):
        raise TypeError("datadiet.omp_factored: errors and features must be tensors")
    if errors.dim() != 2 or features.dim() != 2 or errors.shape[0] != features.shape[0]:
        raise ValueError(f"datadiet.omp_factored: errors [N, C] and features [N, D] must share N, got shapes "
                         f"{tuple(errors.shape)} and {tuple(features.shape)}")
    e = errors.to(torch.float32).contiguous()
    h = features.to(torch.float32).contiguous()
    n = e.shape[0]
    offs, ks = _problems("omp_factored", n, k, offsets, budgets, lam, tol)
    targets = _factored_targets(e, h, offs, target)
    chosen = resolve(backend, errors.device, "omp_factored")
    check_engine_budget("omp_factored", chosen, ks)
    c0, b2 = _target_correlations(e, h, offs, targets, bias)
    if check_values and not torch.compiler.is_compiling():
        for name, t in (("errors", e), ("features", h)):
            _check_finite("omp_factored", name, t)
    args = (offs, ks, float(lam), bool(positive), float(tol))
    if chosen == "torch":
        ht = _with_bias(h, bias)
        atoms = (e.unsqueeze(2) * ht.unsqueeze(1)).reshape(n, -1)
        full = torch.stack([(et.T @ _with_bias(hs, bias)).reshape(-1) for et, hs in zip(*targets)])
        out = omp_reference(atoms, full, *args)
    elif chosen == "triton":
        out = torch.ops.datadiet.omp_factored_triton(e, h, bool(bias), c0, b2, *args)
    else:
        out = torch.ops.datadiet.omp_factored(e, h, bool(bias), c0, b2, *args)
    return _result(out, b2.sqrt(), single=offsets is None)


def _with_bias(features: torch.Tensor, bias: bool) -> torch.Tensor:
    """The features with a column of ones (the reference materialises the gradients)."""
    if not bias:
        return features.contiguous()
    return torch.cat([features, features.new_ones(features.shape[0], 1)], 1).contiguous()


def _factored_targets(e: torch.Tensor, h: torch.Tensor, offs: list[int],
                      target: Optional[FactoredTarget]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per problem, the factors (E_t, H_t) whose summed outer products (with the bias column) are
    the target."""
    problems = len(offs) - 1
    if target is None:
        return ([e[a:b] for a, b in zip(offs[:-1], offs[1:])], [h[a:b] for a, b in zip(offs[:-1], offs[1:])])
    if not isinstance(target, tuple) or len(target) not in (2, 3):
        raise TypeError("datadiet.omp_factored: target must be None, (errors, features) or "
                        "(errors, features, offsets)")
    et = target[0].to(torch.float32)
    ht = target[1].to(torch.float32)
    if et.dim() != 2 or et.shape[1] != e.shape[1] or ht.shape != (et.shape[0], h.shape[1]):
        raise ValueError(f"datadiet.omp_factored: target factors must be [M, {e.shape[1]}] and "
                         f"[M, {h.shape[1]}], got {tuple(target[0].shape)} and {tuple(target[1].shape)}")
    t_offs = [0, et.shape[0]] if len(target) == 2 else int_list(target[2], "target offsets", "omp_factored")
    if len(t_offs) - 1 != problems or t_offs[0] != 0 or t_offs[-1] != et.shape[0]:
        raise ValueError(f"datadiet.omp_factored: target offsets must give {problems} problems over "
                         f"{et.shape[0]} target rows, got {t_offs[:4]}")
    return ([et[a:b] for a, b in zip(t_offs[:-1], t_offs[1:])], [ht[a:b] for a, b in zip(t_offs[:-1], t_offs[1:])])


def _target_correlations(e: torch.Tensor, h: torch.Tensor, offs: list[int],
                         targets: tuple[list[torch.Tensor], list[torch.Tensor]],
                         bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """c0_i = e_iᵀ B h̃_i and ‖B‖²_F per problem, B = E_tᵀ H̃_t = [E_tᵀ H_t, E_tᵀ 1] (two matmuls and
    a column sum per problem; the bias column is never appended to the features)."""
    c0 = torch.empty(e.shape[0], dtype=torch.float32, device=e.device)
    b2 = torch.empty(len(offs) - 1, dtype=torch.float32, device=e.device)
    for g, (lo, hi) in enumerate(zip(offs[:-1], offs[1:])):
        et = targets[0][g]
        bmat = et.T @ targets[1][g]  # [C, D]
        c0[lo:hi] = ((e[lo:hi] @ bmat) * h[lo:hi]).sum(1)
        b2[g] = bmat.double().square().sum()
        if bias:
            bcol = et.sum(0)  # [C]
            c0[lo:hi] += e[lo:hi] @ bcol
            b2[g] += bcol.double().square().sum()
    return c0, b2


def _check(atoms: torch.Tensor, target: torch.Tensor, k: Optional[int], offsets: Optional[IntSeqLike],
           budgets: Optional[IntSeqLike], lam: float,
           tol: float) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Dense inputs: shapes and dtypes, then the problem layout (``_problems``)."""
    def fail(msg: str, exc: type[Exception] = ValueError) -> NoReturn:
        raise exc(f"datadiet.omp: {msg}")

    if not isinstance(atoms, torch.Tensor) or not isinstance(target, torch.Tensor):
        fail(f"atoms and target must be tensors, got {type(atoms).__name__} and {type(target).__name__}", TypeError)
    if atoms.dim() != 2:
        fail(f"atoms must be 2-D [N, d], got shape {tuple(atoms.shape)}")
    if not atoms.is_floating_point() or not target.is_floating_point():
        fail(f"atoms and target must be floating point, got {atoms.dtype} and {target.dtype}", TypeError)
    if target.device != atoms.device:
        fail(f"target is on {target.device} but atoms are on {atoms.device}")
    n, d = atoms.shape
    if offsets is None and target.shape != (d,):
        fail(f"target must have shape [{d}] to match atoms {tuple(atoms.shape)}, got {tuple(target.shape)}")
    offs, ks = _problems("omp", n, k, offsets, budgets, lam, tol)
    if offsets is not None and target.shape != (len(ks), d):
        fail(f"target must have shape [{len(ks)}, {d}] (one row per problem), got {tuple(target.shape)}")
    targets = target.reshape(len(ks), d)
    return atoms.to(torch.float32).contiguous(), targets.to(torch.float32).contiguous(), offs, ks


def _problems(op: str, n: int, k: Optional[int], offsets: Optional[IntSeqLike], budgets: Optional[IntSeqLike],
              lam: float, tol: float) -> tuple[list[int], list[int]]:
    """The problem layout — offsets over the N atoms and one budget per problem — and the options."""
    def fail(msg: str, exc: type[Exception] = ValueError) -> NoReturn:
        raise exc(f"datadiet.{op}: {msg}")

    if offsets is None:
        if budgets is not None:
            fail("budgets needs offsets (one budget per problem); pass k for a single problem")
        offs = [0, n]
    else:
        offs = int_list(offsets, "offsets", op)
        if not offs or offs[0] != 0 or offs[-1] != n:
            fail(f"offsets must start at 0 and end at N = {n}, got {offs[:4]}{'...' if len(offs) > 4 else ''}")
    sizes = [b - a for a, b in zip(offs[:-1], offs[1:])]
    for g, size in enumerate(sizes):
        if size < 0:
            fail(f"offsets must be non-decreasing, got offsets[{g}] = {offs[g]} > offsets[{g + 1}] = {offs[g + 1]}")
    if (k is None) == (budgets is None):
        fail("pass exactly one of k and budgets")
    if budgets is not None:
        ks = int_list(budgets, "budgets", op)
        if len(ks) != len(sizes):
            fail(f"got {len(ks)} budgets for {len(sizes)} problems")
    else:
        if isinstance(k, bool) or not isinstance(k, int):
            fail(f"k must be an int, got {k!r}", TypeError)
        ks = [k] * len(sizes)
    for g, (kg, size) in enumerate(zip(ks, sizes)):
        if not 0 <= kg <= size:
            where = "" if len(sizes) == 1 else f" for problem {g}"
            fail(f"k = {kg}{where} but there are {size} atoms; need 0 <= k <= {size}")
    if not float(lam) >= 0.0:
        fail(f"lam must be >= 0, got {lam}")
    if not 0.0 <= float(tol) < 1.0:
        fail(f"tol must be in [0, 1), got {tol}")
    return offs, ks


def _fake(atoms: torch.Tensor, targets: Optional[torch.Tensor], offsets: list[int], budgets: list[int], lam: float,
          positive: bool, tol: float) -> _Outputs:
    total, problems = sum(budgets), len(budgets)
    return (atoms.new_empty((total,), dtype=torch.int64), atoms.new_empty((total,), dtype=torch.float32),
            atoms.new_empty((problems,), dtype=torch.float32), atoms.new_empty((problems,), dtype=torch.int64),
            atoms.new_empty((problems,), dtype=torch.int64), atoms.new_empty((problems,), dtype=torch.int64))


def _fake_factored(errors: torch.Tensor, features: torch.Tensor, bias: bool, c0: torch.Tensor, b2: torch.Tensor,
                   offsets: list[int], budgets: list[int], lam: float, positive: bool, tol: float) -> _Outputs:
    return _fake(errors, None, offsets, budgets, lam, positive, tol)


_Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("datadiet::omp_triton", mutates_args=())
def _omp_triton(atoms: torch.Tensor, targets: torch.Tensor, offsets: list[int], budgets: list[int], lam: float,
                positive: bool, tol: float) -> _Outputs:
    from datadiet.kernels import omp as kernel

    return cast("_Outputs", kernel.omp(atoms, targets, offsets, budgets, lam, positive, tol))


@torch.library.custom_op("datadiet::omp_factored_triton", mutates_args=())
def _omp_factored_triton(errors: torch.Tensor, features: torch.Tensor, bias: bool, c0: torch.Tensor,
                         b2: torch.Tensor, offsets: list[int], budgets: list[int], lam: float, positive: bool,
                         tol: float) -> _Outputs:
    from datadiet.kernels import omp as kernel

    return cast("_Outputs", kernel.omp_factored(errors, features, bias, c0, b2, offsets, budgets, lam, positive, tol))


_omp_triton.register_fake(_fake)
_omp_factored_triton.register_fake(_fake_factored)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::omp")(_fake)
    torch.library.register_fake("datadiet::omp_factored")(_fake_factored)
