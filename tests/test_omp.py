"""omp (the GradMatch solver) against the float64 rebuild-and-solve reference: selections,
weights, residuals over λ / non-negativity / tolerance / shapes; NNLS against scipy;
batched = separate calls; monotone residual; errors; opcheck and torch.compile."""

import pytest
import torch

import datadiet
from datadiet.ops import omp
from datadiet.reference.omp import nnls_gram, omp_reference
from select_helpers import last_layer_case


def problem(n, d, seed=0, cone=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    if cone:  # GradMatch-like: correlated atoms in a cone, target = their sum
        a = (a.abs() + 0.5) * -(torch.rand(n, 1, generator=g) + 0.1)
    return a, a.sum(0) if cone else a[: max(1, n // 2)].sum(0) + 0.1 * torch.randn(d, generator=g)


def by_atom(result):
    keep = result.indices >= 0
    return dict(zip(result.indices[keep].tolist(), result.weights[keep].tolist()))


def assert_matches_reference(a, b, k, lam, positive, tol, ordered, w_rtol=1e-3):
    got = omp(a, b, k, lam=lam, positive=positive, tol=tol)
    ref = omp_reference(a, b[None], [0, a.shape[0]], [k], lam, positive, tol)
    if ordered:
        assert got.indices.tolist() == ref[0].tolist()
    got_w, ref_w = by_atom(got), dict(zip(ref[0][ref[0] >= 0].tolist(), ref[1][ref[0] >= 0].tolist()))
    assert got_w.keys() == ref_w.keys()
    scale = max(1.0, max((abs(v) for v in ref_w.values()), default=1.0))
    for i, w in got_w.items():
        assert abs(w - ref_w[i]) <= w_rtol * scale, (i, w, ref_w[i])
    assert float(got.residual) == pytest.approx(float(ref[2][0]), rel=1e-3, abs=1e-4 * float(b.norm()))
    assert int(got.iterations) == int(ref[3][0])
    assert int(got.rejected) == int(ref[5][0])
    stops = {datadiet.ops.STOP_REASONS[int(code)] for code in (got.stop, ref[4][0])}
    # a support that spans the atoms leaves float64 at ‖r‖ = 0 and float32 at rounding
    assert len(stops) == 1 or (stops == {"tolerance", "rank"} and float(got.residual) <= 1e-6 * float(b.norm()))
    if positive:
        assert bool((got.weights >= 0).all())
    return got


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("n, d, k", [(1, 3, 1), (5, 1, 3), (60, 20, 15), (300, 40, 35), (50, 64, 50)])
def test_matches_reference(n, d, k, lam, positive):
    a, b = problem(n, d, seed=n + d)
    assert_matches_reference(a, b, k, lam, positive, 0.0, ordered=not positive)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_gradmatch_like_cone_with_nnls(lam):
    a, b = problem(400, 33, seed=1, cone=True)
    # Correlated atoms make Q ill-conditioned: float32 vs float64 Gram entries move the
    # weights more than the objective, so weights get a looser tolerance than the residual.
    got = assert_matches_reference(a, b, 120, lam, True, 0.0, ordered=False, w_rtol=2e-2)
    assert int(got.iterations) >= int((got.indices >= 0).sum())  # some atoms may be dropped by NNLS


def test_more_atoms_than_dimensions_reaches_zero_residual():
    a, b = problem(300, 40, seed=10)
    r = omp(a, b, 60, positive=False)
    assert float(r.residual) <= 1e-4 * float(b.norm())
    assert int((r.indices >= 0).sum()) >= 40


def test_tolerance_stops_early():
    a, b = problem(300, 40, seed=2)
    full = omp(a, b, 40, positive=False)
    early = omp(a, b, 40, positive=False, tol=0.3)
    assert float(early.residual) <= 0.3 * float(b.norm()) < float(omp(a, b, int(early.iterations) - 1,
                                                                         positive=False).residual)
    assert int((early.indices >= 0).sum()) < 40 and torch.equal(early.indices[early.indices >= 0],
                                                                  full.indices[: int((early.indices >= 0).sum())])


def test_residual_non_increasing_in_the_budget():
    a, b = problem(200, 30, seed=3)
    for positive in (False, True):
        residuals = [float(omp(a, b, k, positive=positive).residual) for k in range(0, 31, 3)]
        assert all(r2 <= r1 * (1 + 1e-5) for r1, r2 in zip(residuals, residuals[1:])), residuals


def test_weights_solve_the_ridge_problem_on_the_support():
    a, b = problem(100, 25, seed=4)
    got = omp(a, b, 12, lam=0.7, positive=False)
    s = got.indices
    sub = a[s].double()
    w = torch.linalg.solve(sub @ sub.T + 0.7 * torch.eye(12, dtype=torch.float64), sub @ b.double())
    torch.testing.assert_close(got.weights.double(), w, rtol=1e-4, atol=1e-5)
    assert float(got.residual) == pytest.approx(float((b.double() - sub.T @ w).norm()), rel=1e-5)


def test_nnls_gram_matches_scipy():
    nnls = pytest.importorskip("scipy.optimize").nnls
    g = torch.Generator().manual_seed(5)
    for m in (1, 4, 12):
        a = torch.randn(m + 5, m, generator=g, dtype=torch.float64)
        y = torch.randn(m + 5, generator=g, dtype=torch.float64)
        x = nnls_gram(a.T @ a, a.T @ y)
        want, _ = nnls(a.numpy(), y.numpy())
        torch.testing.assert_close(x, torch.from_numpy(want), rtol=1e-7, atol=1e-9)


def test_batched_equals_separate_calls():
    sizes, ks = [0, 7, 120, 64, 200], [0, 3, 30, 64, 10]
    offs = [0]
    for s in sizes:
        offs.append(offs[-1] + s)
    a, _ = problem(offs[-1], 24, seed=6)
    targets = torch.stack([a[lo:hi].sum(0) if hi > lo else torch.zeros(24) for lo, hi in zip(offs[:-1], offs[1:])])
    batched = omp(a, targets, offsets=offs, budgets=ks, lam=0.1)
    pos = 0
    for g, (lo, hi, k) in enumerate(zip(offs[:-1], offs[1:], ks)):
        alone = omp(a[lo:hi], targets[g], k, lam=0.1)
        idx = batched.indices[pos:pos + k]
        assert torch.equal(torch.where(idx >= 0, idx - lo, idx), alone.indices)
        assert torch.equal(batched.weights[pos:pos + k], alone.weights)
        assert torch.equal(batched.residual[g], alone.residual)
        pos += k
    ref = omp_reference(a, targets, offs, ks, 0.1, True, 0.0)
    assert torch.equal(batched.iterations, ref[3]) and torch.equal(batched.stop, ref[4])


def test_zero_target_and_zero_budget():
    a, _ = problem(10, 4)
    r = omp(a, torch.zeros(4), 3)
    assert r.indices.tolist() == [-1, -1, -1] and float(r.residual) == 0.0 and int(r.iterations) == 0
    assert datadiet.ops.STOP_REASONS[int(r.stop)] == "tolerance"
    empty = omp(a, a.sum(0), 0)
    assert empty.indices.numel() == 0 and datadiet.ops.STOP_REASONS[int(empty.stop)] == "budget"


def test_duplicate_atoms_are_skipped_as_dependent():
    a, _ = problem(6, 5, seed=7)
    a = torch.cat([a, a[:2]])  # rows 6, 7 repeat rows 0, 1
    r = omp(a, a[0] + a[1] + 0.5 * a[2], 8, positive=False)
    chosen = set(r.indices[r.indices >= 0].tolist())
    assert not ({0, 6} <= chosen or {1, 7} <= chosen)


def test_backends_agree_and_other_dtypes():
    a, b = problem(80, 16, seed=8)
    cpu = omp(a, b, 10, lam=0.2, backend="cpu")
    ref = omp(a, b, 10, lam=0.2, backend="torch")
    assert by_atom(cpu).keys() == by_atom(ref).keys()
    assert torch.equal(omp(a.double(), b.double(), 10, lam=0.2).indices, cpu.indices)
    assert omp(a.half(), b.half(), 10).indices.shape == (10,)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda a, b: omp(a, b, 11), ValueError, r"k = 11 but there are 10 atoms; need 0 <= k <= 10"),
    (lambda a, b: omp(a, b, None), ValueError, r"pass exactly one of k and budgets"),
    (lambda a, b: omp(a, b, 2.5), TypeError, r"k must be an int, got 2.5"),
    (lambda a, b: omp(a, b[:3], 2), ValueError, r"target must have shape \[4\] to match atoms \(10, 4\), got \(3,\)"),
    (lambda a, b: omp(a[0], b, 2), ValueError, r"atoms must be 2-D \[N, d\], got shape \(4,\)"),
    (lambda a, b: omp(a.long(), b, 2), TypeError, r"must be floating point"),
    (lambda a, b: omp(a, b, 2, lam=-1), ValueError, r"lam must be >= 0, got -1"),
    (lambda a, b: omp(a, b, 2, tol=1.0), ValueError, r"tol must be in \[0, 1\), got 1.0"),
    (lambda a, b: omp(a, b[None].repeat(2, 1), offsets=[0, 4, 10], budgets=[5, 1]), ValueError,
     r"k = 5 for problem 0 but there are 4 atoms"),
    (lambda a, b: omp(a, b[None], offsets=[0, 4, 10], budgets=[1, 1]), ValueError,
     r"target must have shape \[2, 4\] \(one row per problem\), got \(1, 4\)"),
    (lambda a, b: omp(a, b[None].repeat(2, 1), offsets=[0, 4, 10], budgets=[1]), ValueError, r"got 1 budgets for 2"),
    (lambda a, b: omp(a, b, 2, backend="cuda"), ValueError, r"backend=.cuda. is unavailable: "),
])
def test_bad_arguments(call, exc, pattern):
    a, b = problem(10, 4)
    with pytest.raises(exc, match=pattern):
        call(a, b)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_non_finite_atoms_are_rejected(backend):
    a, b = problem(10, 4)
    a[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"atoms must be finite, got nan at row 3, column 2"):
        omp(a, b, 2, backend=backend)


def test_opcheck_and_compile():
    a, b = problem(50, 8, seed=9)
    torch.library.opcheck(torch.ops.datadiet.omp.default, (a, b[None], [0, 50], [5], 0.1, True, 0.0))
    fn = torch.compile(lambda x, y: omp(x, y, 5, lam=0.1, backend="cpu"), fullgraph=True)
    assert torch.equal(fn(a, b).indices, omp(a, b, 5, lam=0.1).indices)


def test_exported():
    assert datadiet.ops.omp is omp


def materialise(e, h, bias=True):
    ht = torch.cat([h, torch.ones(h.shape[0], 1)], 1) if bias else h
    return (e.unsqueeze(2) * ht.unsqueeze(1)).reshape(e.shape[0], -1)


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("bias", [True, False])
def test_factored_equals_materialised(positive, lam, bias):
    e, h, _ = last_layer_case(150, 5, 7, seed=11)
    atoms = materialise(e, h, bias)
    got = datadiet.ops.omp_factored(e, h, 25, bias=bias, lam=lam, positive=positive)
    want = omp(atoms, atoms.sum(0), 25, lam=lam, positive=positive)
    assert got.indices.tolist() == want.indices.tolist()
    torch.testing.assert_close(got.weights, want.weights, rtol=1e-3, atol=1e-4)
    assert float(got.residual) == pytest.approx(float(want.residual), rel=1e-3)
    ref = datadiet.ops.omp_factored(e, h, 25, bias=bias, lam=lam, positive=positive, backend="torch")
    assert sorted(ref.indices.tolist()) == sorted(got.indices.tolist())


def test_factored_per_class_with_a_validation_target():
    e, h, labels = last_layer_case(400, 4, 6, seed=12)
    ev, hv, lv = last_layer_case(120, 4, 6, seed=13)
    order, vorder = torch.argsort(labels, stable=True), torch.argsort(lv, stable=True)
    counts, vcounts = torch.bincount(labels, minlength=4).tolist(), torch.bincount(lv, minlength=4).tolist()
    offs, voffs = [0], [0]
    for c, vc in zip(counts, vcounts):
        offs.append(offs[-1] + c)
        voffs.append(voffs[-1] + vc)
    budgets = [c // 10 for c in counts]
    e, h, ev, hv = e[order], h[order], ev[vorder], hv[vorder]
    got = datadiet.ops.omp_factored(e, h, offsets=offs, budgets=budgets, target=(ev, hv, voffs), lam=0.5)
    atoms, vatoms = materialise(e, h), materialise(ev, hv)
    targets = torch.stack([vatoms[a:b].sum(0) for a, b in zip(voffs[:-1], voffs[1:])])
    want = omp(atoms, targets, offsets=offs, budgets=budgets, lam=0.5)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.residual, want.residual, rtol=1e-3, atol=1e-4)


def test_factored_reuses_gram_columns_after_nnls_drops():
    # Strongly correlated gradients make the NNLS drop atoms; with a small budget the stored
    # Gram columns run out and are compacted.
    g = torch.Generator().manual_seed(3)
    e = -torch.rand(300, 3, generator=g)
    h = torch.rand(300, 4, generator=g) + 0.2
    atoms = materialise(e, h)
    got = datadiet.ops.omp_factored(e, h, 12)
    want = omp(atoms, atoms.sum(0), 12)
    assert int(got.iterations) == int(want.iterations) > int((got.indices >= 0).sum())  # an atom was dropped
    assert sorted(got.indices.tolist()) == sorted(want.indices.tolist())
    # the factorised residual comes from ‖b‖² − 2wᵀp + wᵀG_SS w: accurate to ~1e-4·‖b‖, not relatively
    torch.testing.assert_close(got.residual, want.residual, rtol=0, atol=1e-4 * float(atoms.sum(0).norm()))


def test_factored_bad_shapes_and_opcheck():
    e, h, _ = last_layer_case(20, 3, 4)
    with pytest.raises(ValueError, match=r"errors \[N, C\] and features \[N, D\] must share N"):
        datadiet.ops.omp_factored(e, h[:10], 3)
    with pytest.raises(ValueError, match=r"target factors must be \[M, 3\] and \[M, 4\]"):
        datadiet.ops.omp_factored(e, h, 3, target=(e[:, :2], h))
    c0 = torch.rand(20)
    torch.library.opcheck(torch.ops.datadiet.omp_factored.default,
                          (e, h, True, c0, torch.tensor([4.0]), [0, 20], [3], 0.1, True, 0.0))


def test_oversized_problem_is_refused_before_allocating():
    a = torch.zeros(40000, 1).expand(40000, 1).contiguous()
    with pytest.raises(ValueError, match=r"needs \d+ MiB of Gram columns and Cholesky factor .* split it"):
        torch.ops.datadiet.omp(a, torch.ones(1, 1), [0, 40000], [33000], 0.0, True, 0.0)


def test_engine_budget_caps_are_named():
    """One problem per thread block on CUDA: a budget above CUDA_MAX_BUDGET is refused with the way
    out; the CPU engine takes any budget."""
    from datadiet.ops.omp import CUDA_MAX_BUDGET, check_engine_budget

    check_engine_budget("omp", "cuda", [CUDA_MAX_BUDGET, 3])
    check_engine_budget("omp", "cpu", [10 * CUDA_MAX_BUDGET])
    with pytest.raises(ValueError, match=rf"datadiet.omp_factored: the CUDA backend .* up to {CUDA_MAX_BUDGET} per "
                                         rf"problem, got {CUDA_MAX_BUDGET + 1} .* mode='per_class'.* backend='cpu'"):
        check_engine_budget("omp_factored", "cuda", [1, CUDA_MAX_BUDGET + 1])
