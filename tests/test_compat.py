"""datadiet.compat: the CORDS and DeepCore drop-ins keep the peers' conventions (shapes,
dtypes, return types), solve at least as well as the peers' own solvers, and patch() swaps them
into an imported peer and back.

The peers' own source is used when it can be found: an importable ``cords`` package, or a
checkout under ``$DATADIET_PEER_SOURCES`` (``cords/selectionstrategies/helpers/omp_solvers.py``);
those tests skip otherwise. Everything else runs on hand-made cases and stand-in packages."""

import os
import sys
import textwrap

import numpy as np
import pytest
import torch

from datadiet.compat import cords, deepcore


def _residual(A, b, x):
    A, b, x = (torch.as_tensor(v, dtype=torch.float64) for v in (A, b, x))
    return float((A @ x - b).norm())


def _problem(seed, d=40, n=200, k_true=12):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, n, generator=g)
    w = torch.zeros(n)
    w[torch.randperm(n, generator=g)[:k_true]] = torch.rand(k_true, generator=g) + 0.5
    return A, A @ w + 0.05 * torch.randn(d, generator=g)


# ---- CORDS conventions, hand-made -----------------------------------------------------------------

def test_cords_drop_in_recovers_a_planted_sparse_combination():
    A = torch.eye(6, 10)  # columns 0..5 are orthonormal atoms, 6..9 are zero
    b = 2.0 * A[:, 3] + 0.5 * A[:, 1]
    x = cords.OrthogonalMP_REG_Parallel(A, b, nnz=4, positive=True, lam=0)
    assert x.dtype == torch.float32 and x.shape == (10,) and x.device.type == "cpu"
    torch.testing.assert_close(x, torch.tensor([0, 0.5, 0, 2, 0, 0, 0, 0, 0, 0]))
    xn = cords.OrthogonalMP_REG(A.numpy(), b.numpy(), nnz=4, positive=True, lam=0)
    assert isinstance(xn, np.ndarray) and xn.dtype == np.float64 and xn.shape == (10,)
    np.testing.assert_allclose(xn, x.numpy(), atol=1e-6)


@pytest.mark.parametrize("fn", [cords.OrthogonalMP_REG_Parallel, cords.OrthogonalMP_REG_Parallel_V1,
                                cords.OrthogonalMP_REG_NNLS_Parallel])
@pytest.mark.parametrize("positive", [True, False])
def test_cords_tensor_solvers_return_a_valid_answer_no_worse_than_nothing(fn, positive):
    A, b = _problem(0)
    x = fn(A, b, nnz=25, positive=positive, lam=0.5)
    assert x.shape == (A.shape[1],) and x.dtype == torch.float32
    assert int((x != 0).sum()) <= 25
    if positive:
        assert bool((x >= 0).all())
    assert _residual(A, b, x) < 0.5 * float(b.norm())


def test_cords_conventions_nnz_none_zero_and_zero_target():
    A, b = _problem(1, d=10, n=30)
    assert torch.equal(cords.OrthogonalMP_REG_Parallel(A, b, nnz=None, positive=True, tol=0),
                       cords.OrthogonalMP_REG_Parallel(A, b, nnz=30, positive=True, tol=0))
    assert not cords.OrthogonalMP_REG_Parallel(A, b, nnz=0).any()
    assert not cords.OrthogonalMP_REG_Parallel(A, b, nnz=5, tol=1.5).any()  # CORDS stops before a pick
    assert int((cords.OrthogonalMP_REG_Parallel(A, b, nnz=5, positive=True, tol=1.0) != 0).sum()) == 1
    assert not cords.OrthogonalMP_REG_Parallel(A, torch.zeros(10), nnz=5).any()
    assert not cords.OrthogonalMP_REG(A.numpy(), np.zeros(10), nnz=5).any()
    # non-contiguous and float64 inputs are read as float32 atoms
    x64 = cords.OrthogonalMP_REG_Parallel(A.double().T.contiguous().T, b.double(), nnz=5, positive=True)
    torch.testing.assert_close(x64, cords.OrthogonalMP_REG_Parallel(A, b, nnz=5, positive=True))


def test_cords_bad_arguments_are_named():
    A, b = _problem(2, d=8, n=20)
    with pytest.raises(ValueError, match=r"A must be \(d, n\)"):
        cords.OrthogonalMP_REG_Parallel(A[0], b)
    with pytest.raises(ValueError, match=r"b must be \(8,\)"):
        cords.OrthogonalMP_REG_Parallel(A, b[:5])
    with pytest.raises(ValueError, match="nnz must be >= 0"):
        cords.OrthogonalMP_REG_Parallel(A, b, nnz=-1)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        cords.OrthogonalMP_REG(A.numpy(), b.numpy(), lam=-1)
    with pytest.raises(TypeError, match="numpy solver is OrthogonalMP_REG"):
        cords.OrthogonalMP_REG_Parallel(A.numpy(), b.numpy())


# ---- patch(): stand-in packages ---------------------------------------------------------------------

def _write_package(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))


@pytest.fixture
def fresh_modules(monkeypatch):
    """Drops stand-in peer packages from sys.modules afterwards."""
    yield monkeypatch
    for name in [m for m in sys.modules if m.split(".")[0] in ("cords", "deepcore")]:
        del sys.modules[name]


def test_cords_patch_reaches_strategies_imported_before_and_after(tmp_path, fresh_modules):
    _write_package(tmp_path, {
        "cords/__init__.py": "",
        "cords/selectionstrategies/__init__.py": "",
        "cords/selectionstrategies/helpers/__init__.py": "from .omp_solvers import *\n",
        "cords/selectionstrategies/helpers/omp_solvers.py": """
            import torch
            def OrthogonalMP_REG_Parallel(A, b, tol=1e-4, nnz=None, positive=False, lam=1, device="cpu"):
                return torch.full((A.shape[1],), -1.0)
            def OrthogonalMP_REG(A, b, tol=1e-4, nnz=None, positive=False, lam=1):
                return None
            from math import sqrt as OrthogonalMP_REG_NNLS  # not CORDS' own: left alone
            """,
        "cords/selectionstrategies/SL/__init__.py": "",
        "cords/selectionstrategies/SL/gradmatchstrategy.py": """
            from ..helpers import OrthogonalMP_REG_Parallel
            def ompwrapper(X, Y, bud):
                return OrthogonalMP_REG_Parallel(X, Y, nnz=bud, positive=True, lam=0.5, tol=1e-100)
            """,
        "cords/selectionstrategies/SL/later.py": """
            from ..helpers import OrthogonalMP_REG_Parallel as solver
            """,
    })
    fresh_modules.syspath_prepend(str(tmp_path))
    import cords.selectionstrategies.SL.gradmatchstrategy as gm  # imported before the patch

    A, b = _problem(3)
    assert bool((gm.ompwrapper(A, b, 10) == -1).all())
    handle = cords.patch()
    assert "cords.selectionstrategies.SL.gradmatchstrategy.OrthogonalMP_REG_Parallel" in handle.replaced
    x = gm.ompwrapper(A, b, 10)
    assert bool((x >= 0).all()) and 0 < int((x != 0).sum()) <= 10
    import cords.selectionstrategies.SL.later as later  # imported after the patch
    assert later.solver is cords.OrthogonalMP_REG_Parallel
    helpers = sys.modules["cords.selectionstrategies.helpers.omp_solvers"]
    assert helpers.OrthogonalMP_REG is cords.OrthogonalMP_REG
    assert helpers.OrthogonalMP_REG_NNLS.__module__ == "math"
    handle.undo()
    assert bool((gm.ompwrapper(A, b, 10) == -1).all())
    assert helpers.OrthogonalMP_REG is not cords.OrthogonalMP_REG
    assert later.solver is helpers.OrthogonalMP_REG_Parallel  # bound while patched, restored too
    handle = cords.patch()
    with pytest.raises(RuntimeError, match="already patched"):
        cords.patch()
    handle.undo()


def test_patch_without_the_peer_says_what_to_install(fresh_modules):
    fresh_modules.setitem(sys.modules, "cords", None)  # makes `import cords` fail
    with pytest.raises(ModuleNotFoundError, match="cords is not importable"):
        cords.patch()


# ---- against CORDS' own solver, when its source is at hand ---------------------------------------

def _cords_solvers():
    module = cords.load_original(os.environ.get("DATADIET_PEER_SOURCES"))
    if module is None:
        pytest.skip("CORDS' source is not available (pip install cords, or set DATADIET_PEER_SOURCES)")
    return module


def _with_cords_errors(fn, *args, **kwargs):
    saved = np.seterr(all="raise")
    try:
        return fn(*args, **kwargs)
    finally:
        np.seterr(**saved)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.5, 0.0])
def test_cords_drop_in_is_no_worse_than_cords_own_torch_solver(seed, lam):
    peer = _cords_solvers()
    A, b = _problem(seed, d=60, n=300, k_true=40)
    nnz = 30
    theirs = _with_cords_errors(peer.OrthogonalMP_REG_Parallel, A, b, nnz=nnz, positive=True, lam=lam, tol=1e-4)
    ours = cords.OrthogonalMP_REG_Parallel(A, b, nnz=nnz, positive=True, lam=lam, tol=1e-4)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert int((ours != 0).sum()) <= nnz and bool((ours >= 0).all())
    assert _residual(A, b, ours) <= _residual(A, b, theirs) * (1 + 1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_cords_numpy_drop_in_is_no_worse_than_cords_numpy_solver(seed):
    peer = _cords_solvers()
    A, b = _problem(seed + 10, d=50, n=150, k_true=20)
    An, bn = A.double().numpy(), b.double().numpy()
    theirs = _with_cords_errors(peer.OrthogonalMP_REG, An, bn, nnz=20, positive=True, lam=0.5)
    ours = cords.OrthogonalMP_REG(An, bn, nnz=20, positive=True, lam=0.5)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.count_nonzero(ours) <= 20 and (ours >= 0).all()
    assert _residual(An, bn, ours) <= _residual(An, bn, theirs) * (1 + 1e-4)


# ---- DeepCore ----------------------------------------------------------------------------------------

class _Recorder(torch.nn.Module):
    """DeepCore's EmbeddingRecorder: identity that keeps its input while recording."""

    def __init__(self):
        super().__init__()
        self.record_embedding, self.embedding = False, None

    def forward(self, x):
        if self.record_embedding:
            self.embedding = x
        return x


class _Net(torch.nn.Module):
    def __init__(self, d_in=12, d_emb=9, classes=5):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, d_emb), torch.nn.Tanh())
        self.embedding_recorder = _Recorder()
        self.fc = torch.nn.Linear(d_emb, classes)

    def forward(self, x):
        return self.fc(self.embedding_recorder(self.body(x)))

    def get_last_layer(self):
        return self.fc


class _Args:
    selection_batch, workers, device, num_classes = 16, 0, "cpu", 5


def _method_state(n=45, repeat=2, method="Margin"):
    from types import SimpleNamespace

    torch.manual_seed(0)
    x, y = torch.randn(n, 12), torch.randint(0, 5, (n,))
    data = torch.utils.data.TensorDataset(x, y)
    return SimpleNamespace(model=_Net(), dst_train=data, args=_Args(), norm_matrix=torch.zeros(n, repeat),
                           cur_repeat=1, selection_method=method, n_train=n)


def _deepcore_grand_column(state):
    """DeepCore's GraNd scoring, written out: the gradient of the batch-mean loss w.r.t. the
    outputs (bias) and its outer product with the embedding (weight), per sample."""
    out = []
    for x, y in torch.utils.data.DataLoader(state.dst_train, batch_size=state.args.selection_batch):
        state.model.embedding_recorder.record_embedding = True
        logits = state.model(x)
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), logits)[0]
        emb = state.model.embedding_recorder.embedding.detach()
        out.append(torch.cat([g, (g[:, :, None] * emb[:, None, :]).flatten(1)], 1).norm(dim=1))
    return torch.cat(out)


def test_deepcore_grand_finish_run_equals_deepcores_scores():
    state = _method_state()
    expected = _deepcore_grand_column(state)
    deepcore.grand_finish_run(state)
    torch.testing.assert_close(state.norm_matrix[:, 1], expected, rtol=1e-5, atol=1e-7)
    assert not state.norm_matrix[:, 0].any()
    assert state.model.training and not state.model.embedding_recorder.record_embedding


@pytest.mark.parametrize("method", ["LeastConfidence", "Entropy", "Margin"])
def test_deepcore_rank_uncertainty_matches_the_formulas(method):
    state = _method_state(method=method)
    index = np.arange(3, 40, 2)
    got = deepcore.rank_uncertainty(state, index)
    with torch.no_grad():
        logits = state.model(state.dst_train.tensors[0][index])
    p = logits.softmax(1)
    if method == "LeastConfidence":
        want = logits.max(1).values
    elif method == "Entropy":
        want = (p * torch.log(p + 1e-6)).sum(1)
    else:
        top = p.topk(2, dim=1).values
        want = top[:, 0] - top[:, 1]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-5 * 5)
    # labels the scores do not use may be anything (DeepCore ignores them): -1, int32
    state.dst_train = torch.utils.data.TensorDataset(state.dst_train.tensors[0],
                                                     torch.full((state.n_train,), -1, dtype=torch.int32))
    np.testing.assert_array_equal(deepcore.rank_uncertainty(state, index), got)
    state.selection_method = "Random"
    with pytest.raises(NotImplementedError, match="'Random'"):
        deepcore.rank_uncertainty(state)


def test_deepcore_omp_takes_tensors_or_arrays_and_returns_float32_weights():
    A, b = _problem(5)
    x_t = deepcore.orthogonal_matching_pursuit(None, A, b, budget=15)
    x_n = deepcore.orthogonal_matching_pursuit(None, A.numpy(), b.numpy(), budget=15)
    assert isinstance(x_t, np.ndarray) and x_t.dtype == np.float32 and x_t.shape == (A.shape[1],)
    np.testing.assert_array_equal(x_t, x_n)
    assert np.count_nonzero(x_t) <= 15 and (x_t >= 0).all()
    assert _residual(A, b, x_t) < 0.5 * float(b.norm())
    assert not deepcore.orthogonal_matching_pursuit(None, A, b, budget=0).any()
    assert np.count_nonzero(deepcore.orthogonal_matching_pursuit(None, A, b, budget=10**6)) <= A.shape[1]
    with pytest.raises(ValueError, match=r"A must be \(d, n\) and b \(d,\)"):
        deepcore.orthogonal_matching_pursuit(None, A, b[:3], budget=3)


def test_deepcore_patch_swaps_the_class_methods_and_back(tmp_path, fresh_modules):
    _write_package(tmp_path, {
        "deepcore/__init__.py": "",
        "deepcore/methods/__init__.py": "from .gradmatch import *\nfrom .grand import *\n",
        "deepcore/methods/gradmatch.py": """
            class GradMatch:
                def orthogonal_matching_pursuit(self, A, b, budget, lam=1.):
                    return "theirs"
                def orthogonal_matching_pursuit_np(self, A, b, budget, lam=1.):
                    return "theirs"
            """,
        "deepcore/methods/grand.py": """
            class GraNd:
                def finish_run(self):
                    return "theirs"
            """,
    })
    fresh_modules.syspath_prepend(str(tmp_path))
    from deepcore.methods import GradMatch, GraNd

    with deepcore.patch() as handle:
        assert sorted(handle.replaced) == ["GraNd.finish_run", "GradMatch.orthogonal_matching_pursuit",
                                           "GradMatch.orthogonal_matching_pursuit_np"]
        A, b = _problem(6)
        assert np.count_nonzero(GradMatch().orthogonal_matching_pursuit(A, b, 5)) <= 5
        assert GraNd.finish_run is deepcore.grand_finish_run
    assert GradMatch().orthogonal_matching_pursuit(A, b, 5) == "theirs" and GraNd().finish_run() == "theirs"
    deepcore.patch().undo()  # patching twice in a row is fine once undone
    with deepcore.patch(), pytest.raises(RuntimeError, match="already patched"):
        deepcore.patch()
