"""omp / omp_factored when the budget nears or passes the atoms' rank: the residual never rises
(in the budget, and never above ‖b‖), dependent atoms and residual-raising solves are rejected
and counted, the solve stops and says why; against the float64 reference where it is well
conditioned. The case of issue 10 (CORDS' per-class-per-gradient embedding, λ = 0) first."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datadiet.ops import PIVOT_EPS, STOP_REASONS, omp, omp_factored
from datadiet.reference.omp import omp_reference
from omp_cases import at_angle, cords_class_embedding, mixed_cone, near_rank_deficient
from select_helpers import last_layer_case

BUDGET, TOLERANCE, NO_CORRELATION, RANK = (STOP_REASONS.index(s) for s in ("budget", "tolerance", "no_correlation",
                                                                           "rank"))


def found(res) -> int:
    return int((res.indices >= 0).sum())


def true_residual(a, b, res) -> float:
    """‖b − Σ w_s a_s‖ in float64 from the returned atoms and (float32) weights."""
    keep = res.indices >= 0
    return float((b.double() - a[res.indices[keep]].double().T @ res.weights[keep].double()).norm())


def assert_consistent(res, k, lam, positive, dimension):
    """What the result says about itself: the stop reason fits the support and the counts add up."""
    m, stop = found(res), int(res.stop)
    assert (m == k) == (stop == BUDGET), (m, k, STOP_REASONS[stop])
    if stop == RANK:
        assert lam == 0 and m == dimension
    dropped = int(res.iterations) - int(res.rejected) - m
    assert dropped >= 0 and (positive or dropped == 0)


@pytest.fixture(scope="module")
def cords_class():
    return cords_class_embedding()


@pytest.mark.parametrize("lam, positive", [(0.0, False), (1e-3, False), (0.0, True)])
def test_issue_case_never_worse_than_the_best_seen(cords_class, lam, positive):
    a, b = cords_class
    norm = float(b.norm())
    residuals = []
    for k in (400, 480, 490, 500, 513):
        res = omp(a, b, k, lam=lam, positive=positive)
        residuals.append(float(res.residual))
        assert float(res.residual) == pytest.approx(true_residual(a, b, res), rel=1e-3, abs=1e-6 * norm)
        assert_consistent(res, k, lam, positive, a.shape[1])
    assert all(r2 <= r1 for r1, r2 in zip(residuals, residuals[1:])), residuals
    # Before the admission rules λ = 0 ended at 4.4e4 (≈ ‖b‖) for k = 500 and 1e8 for k = 513.
    assert residuals[-1] <= 1e-4 * norm, residuals
    if not positive:
        assert found(res) < 513 and int(res.stop) == NO_CORRELATION


@pytest.mark.parametrize("family", ["low_rank", "duplicated", "batch_means"])
@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.01])
def test_budgets_around_the_dimension(family, lam, positive):
    d = 48
    a, b = near_rank_deficient(d)[family]
    n, norm = a.shape[0], float(b.norm())
    residuals = []
    for k in range(d - 30, d + 21):
        res = omp(a, b, k, lam=lam, positive=positive)
        residuals.append(float(res.residual))
        assert_consistent(res, k, lam, positive, d)
        if k in (d - 30, d, d + 20):
            ref = omp_reference(a, b[None], [0, n], [k], lam, positive, 0.0)
            support = ref[0][ref[0] >= 0]
            q = a[support].double() @ a[support].double().T + lam * torch.eye(support.numel(), dtype=torch.float64)
            if support.numel() and float(torch.linalg.cond(q)) < 1e3:
                # Well conditioned: as good an answer (the last picks, at a residual near rounding,
                # may differ between float32 and float64 correlations).
                assert found(res) == support.numel()
                assert float(res.residual) == pytest.approx(float(ref[2][0]), rel=1e-3, abs=1e-5 * norm)
            # Never far behind float64: float32 Gram entries limit the attainable residual to ~1e-4·‖b‖.
            assert float(res.residual) <= float(ref[2][0]) + 1e-4 * norm
    assert all(r2 <= r1 for r1, r2 in zip(residuals, residuals[1:])), residuals
    assert residuals[0] <= norm


def test_duplicates_are_rejected_and_lam_zero_stops_at_the_rank():
    a, b = near_rank_deficient(16)["duplicated"]
    res = omp(a, b, 30, lam=0.0, positive=False)
    chosen = res.indices[res.indices >= 0].tolist()
    assert len({i % 26 for i in chosen}) == len(chosen)  # never an atom and its copy
    assert found(res) == 16 and int(res.stop) == RANK
    assert float(res.residual) <= 1e-5 * float(b.norm())
    ridge = omp(a, b, 30, lam=0.5, positive=False)  # λ > 0: Q stays definite, copies are admissible
    assert found(ridge) == 30 and int(ridge.stop) == BUDGET


def test_every_budget_of_a_batched_call_is_monotone():
    cases = near_rank_deficient(12)
    atoms = torch.cat([a for a, _ in cases.values()])
    targets = torch.stack([b for _, b in cases.values()])
    sizes = [a.shape[0] for a, _ in cases.values()]
    offsets = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    previous = None
    for k in range(6, 31, 4):
        res = omp(atoms, targets, offsets=offsets, budgets=[k] * 3, lam=0.0)
        if previous is not None:
            assert bool((res.residual <= previous).all()), (res.residual, previous)
        assert bool((res.residual <= targets.double().norm(dim=1).float() * (1 + 1e-6)).all())
        previous = res.residual


def test_factored_rank_deficient_features():
    e, h, _ = last_layer_case(120, 3, 4, seed=5)
    # Errors p − onehot span 2 of 3 dimensions and the features [h, h[:, :2], 1] 5 of 7: the
    # gradients e ⊗ h̃ span at most 10 of the 21.
    h = torch.cat([h, h[:, :2]], 1)
    residuals = []
    for k in range(8, 40, 3):
        res = omp_factored(e, h, k, lam=0.0, positive=False)
        residuals.append(float(res.residual))
        assert res.residual <= res.target_norm * (1 + 1e-6)
        assert_consistent(res, k, 0.0, False, 21)
    assert all(r2 <= r1 for r1, r2 in zip(residuals, residuals[1:])), residuals
    assert residuals[-1] <= 1e-3 * float(res.target_norm)
    assert found(res) <= 10 and int(res.stop) in (TOLERANCE, NO_CORRELATION)
    atoms = (e.unsqueeze(2) * torch.cat([h, torch.ones(120, 1)], 1).unsqueeze(1)).reshape(120, -1)
    assert true_residual(atoms, atoms.sum(0), res) <= 1e-3 * float(res.target_norm)


@st.composite
def small_problem(draw):
    n = draw(st.integers(1, 9))
    d = draw(st.integers(1, 5))
    values = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, -3.0, 1e-3, 1e3])
    a = torch.tensor(draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=n, max_size=n)))
    copies = draw(st.lists(st.integers(0, n - 1), max_size=3))  # repeated and rescaled atoms
    a = torch.cat([a] + [a[i:i + 1] * draw(st.sampled_from([1.0, -2.0, 1 + 1e-7])) for i in copies])
    b = torch.tensor(draw(st.lists(values, min_size=d, max_size=d)))
    return a, b, draw(st.sampled_from([0.0, 1e-3, 0.5])), draw(st.booleans())


@settings(max_examples=80, deadline=None)
@given(small_problem())
def test_property_residual_non_increasing_in_the_budget(problem):
    a, b, lam, positive = problem
    norm = float(b.double().norm())
    residuals = []
    for k in range(a.shape[0] + 1):
        res = omp(a, b, k, lam=lam, positive=positive)
        residuals.append(float(res.residual))
        assert float(res.residual) <= norm * (1 + 1e-6) + 1e-30
        assert_consistent(res, k, lam, positive, a.shape[1])
    assert all(r2 <= r1 for r1, r2 in zip(residuals, residuals[1:])), residuals


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**16), st.booleans())
def test_property_factored_residual_non_increasing(n, classes, features, seed, positive):
    e, h, _ = last_layer_case(n, classes, features, seed)
    residuals = [float(omp_factored(e, h, k, lam=0.0, positive=positive).residual) for k in range(n + 1)]
    assert all(r2 <= r1 for r1, r2 in zip(residuals, residuals[1:])), residuals
    assert residuals[0] <= float(omp_factored(e, h, 0).target_norm) * (1 + 1e-6)


def pivot_ratio(a, lam):
    """The second pick's squared pivot relative to its ‖a‖² + λ, in float64 (atom 1 enters first)."""
    q = a.double() @ a.double().T + lam * torch.eye(2, dtype=torch.float64)
    return float((q[0, 0] - q[0, 1] ** 2 / q[1, 1]) / q[0, 0])


@pytest.mark.parametrize("scale, lam, outcomes", [
    (1.0, 0.0, {True, False}), (30.0, 0.0, {True, False}),  # λ = 0: sin²θ > PIVOT_EPS at any scale
    (1.0, 1e-5, {True}),  # λ = 10·PIVOT_EPS·‖a‖²: every pivot is large enough
    (30.0, 1e-5, {True, False}),  # the same λ at 900× the squared norm does not matter
])
def test_pivot_threshold_is_relative_to_the_norm_plus_lam(scale, lam, outcomes):
    # The second pick enters iff its squared pivot exceeds PIVOT_EPS·(‖a‖² + λ).
    seen = set()
    for sin2 in (PIVOT_EPS / 16, PIVOT_EPS / 4, 4 * PIVOT_EPS, 16 * PIVOT_EPS):
        a, b = at_angle(sin2, scale)
        ratio = pivot_ratio(a, lam)
        if abs(torch.log(torch.tensor(ratio / PIVOT_EPS))) < 0.7:
            continue  # within 2x of the threshold: float32 Gram rounding may go either way
        res = omp(a, b, 2, lam=lam, positive=False)
        admitted = ratio > PIVOT_EPS
        seen.add(admitted)
        assert int(res.iterations) == 2 and (found(res), int(res.rejected)) == ((2, 0) if admitted else (1, 1)), \
            (sin2, ratio)
    assert seen == outcomes


def test_an_nnls_step_that_raises_the_residual_is_undone():
    # The factor saved before the NNLS is restored: the run stays step for step with the
    # float64 reference, which re-solves from scratch.
    a, b = mixed_cone()
    got = omp(a, b, 20, lam=0.05, positive=True)
    ref = omp_reference(a, b[None], [0, a.shape[0]], [20], 0.05, True, 0.0)
    assert int(got.rejected) == int(ref[5][0]) >= 4 and int(got.iterations) == int(ref[3][0])
    assert sorted(got.indices.tolist()) == sorted(ref[0].tolist())
    assert float(got.residual) == pytest.approx(float(ref[2][0]), rel=1e-4)
