"""ce_scores: the compiled CPU kernel and the torch backend against the float64 reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import assert_scores_match, random_case, reference

import datadiet

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 4097])
@pytest.mark.parametrize("c", [1, 2, 10, 1000, 32000])
def test_cpu_matches_reference(n, c, dtype):
    if n * c > 4097 * 1000 and dtype != torch.float32:
        pytest.skip("the largest shape runs in float32 only (float64 oracle memory)")
    logits, targets, features = random_case(n, c, dtype, seed=n + c)
    out = datadiet.ce_scores(logits, targets, features, return_embedding=c <= 1000,
                             embedding_dtype=dtype, backend="cpu")
    hsq = features.double().pow(2).sum(1)
    ref = reference(logits, targets, hsq, embedding_dtype=dtype if c <= 1000 else None)
    assert_scores_match(out, ref, emb_dtype=dtype if c <= 1000 else None, context=f"{n}x{c} {dtype}")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_label_smoothing_and_ignore_index(label_smoothing, ignore_index, backend):
    logits, targets, features = random_case(300, 37, torch.float32, seed=1, ignore_frac=0.2,
                                            ignore_index=ignore_index)
    out = datadiet.ce_scores(logits, targets, features, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, return_embedding=True, backend=backend)
    ref = reference(logits, targets, features.double().pow(2).sum(1), ignore_index, label_smoothing,
                    torch.float32)
    assert_scores_match(out, ref, emb_dtype=torch.float32)
    ignored = targets == ignore_index
    assert ignored.any()
    for name in ("loss", "el2n", "grad_norm"):
        assert (getattr(out, name)[ignored] == 0).all()
    assert not out.correct[ignored].any()
    assert (out.embedding[ignored] == 0).all()
    torch.testing.assert_close(
        out.loss[~ignored],
        torch.nn.functional.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index,
                                          label_smoothing=label_smoothing)[~ignored])


@pytest.mark.parametrize("layout", ["strided_columns", "transposed", "row_slice", "strided_targets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous(layout, dtype):
    logits, targets, features = random_case(65, 130, dtype, seed=3)
    targets = targets % 65  # valid for every layout's class count
    if layout == "strided_columns":
        logits = logits[:, ::2]
    elif layout == "transposed":
        logits = logits.t().contiguous().t()
    elif layout == "row_slice":
        logits, targets, features = logits[1::3, 5:], targets[1::3], features[1::3, ::2]
    else:
        targets = torch.stack([targets, targets], dim=1)[:, 1]
    assert not (logits.is_contiguous() and targets.is_contiguous())
    out = datadiet.ce_scores(logits, targets, features, return_embedding=True, embedding_dtype=dtype,
                             backend="cpu")
    ref = reference(logits, targets, features.double().pow(2).sum(1), embedding_dtype=dtype)
    assert_scores_match(out, ref, emb_dtype=dtype, context=layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_huge_magnitude_logits(dtype):
    logits, targets, _ = random_case(257, 1000, torch.float32, seed=4, scale=1e4)
    logits = logits.to(dtype)
    out = datadiet.ce_scores(logits, targets, return_embedding=True, backend="cpu")
    ref = reference(logits, targets, embedding_dtype=torch.float32)
    assert_scores_match(out, ref, rtol=1e-5, atol=1e-4, emb_dtype=torch.float32)


@pytest.mark.parametrize("c", [1, 2, 10, 1000])
def test_all_equal_logits(c):
    logits = torch.full((4, c), 2.5)
    targets = torch.tensor([0, c - 1, 0, c // 2])
    out = datadiet.ce_scores(logits, targets, backend="cpu")
    torch.testing.assert_close(out.loss, torch.full((4,), math.log(c)))
    torch.testing.assert_close(out.confidence, torch.full((4,), 1.0 / c))
    torch.testing.assert_close(out.entropy, torch.full((4,), math.log(c)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.margin, torch.full((4,), 1.0 if c == 1 else 0.0))
    assert out.correct.tolist() == [t == 0 for t in targets.tolist()]  # ties go to the first class
    torch.testing.assert_close(out.el2n, torch.full((4,), math.sqrt((1 - 1 / c) ** 2 + (c - 1) / c**2)))


def test_el2n_has_no_cancellation_near_one_hot():
    # p_y = 1 - δ with δ ~ 1e-9: Σp² - 2p_y + 1 in float32 returns 0 or noise; the kernel must not.
    logits = torch.zeros(3, 10)
    targets = torch.tensor([2, 5, 7])
    logits[torch.arange(3), targets] = torch.tensor([18.0, 22.0, 25.0])
    out = datadiet.ce_scores(logits, targets, return_embedding=True, backend="cpu")
    ref = reference(logits, targets, embedding_dtype=torch.float32)
    assert (out.el2n > 0).all()
    torch.testing.assert_close(out.el2n.double(), ref[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss.double(), ref[0], rtol=1e-4, atol=0)
    torch.testing.assert_close(out.embedding.double(), ref[7], rtol=1e-5, atol=0)


def test_grad_norm_equals_autograd_per_sample_gradient():
    torch.manual_seed(0)
    n, d, c = 33, 17, 11
    layer = torch.nn.Linear(d, c).double()
    h = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, c, (n,))

    def loss_one(params, hi, yi):
        logits = torch.func.functional_call(layer, params, (hi[None],))
        return torch.nn.functional.cross_entropy(logits, yi[None])

    params = {k: v.detach() for k, v in layer.named_parameters()}
    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, h, y)
    autograd_norm = torch.sqrt(grads["weight"].pow(2).sum((1, 2)) + grads["bias"].pow(2).sum(1))
    bias_norm = grads["bias"].norm(dim=1)

    logits = layer(h).detach().float()
    out = datadiet.ce_scores(logits, y, h.float(), backend="cpu")
    torch.testing.assert_close(out.grad_norm.double(), autograd_norm, rtol=1e-5, atol=1e-6)
    bias_only = datadiet.ce_scores(logits, y, backend="cpu")
    torch.testing.assert_close(bias_only.grad_norm.double(), bias_norm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias_only.el2n, bias_only.grad_norm)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_non_finite_policy(backend, label_smoothing):
    c = 40
    logits, targets, _ = random_case(8, c, torch.float32, seed=5)
    targets[7] = -100
    logits[0, 3] = float("nan")
    logits[1, 17] = float("inf")
    logits[2, [0, 9, 33]] = float("-inf")  # masked classes: a valid row
    logits[3] = float("-inf")  # nothing left: no distribution
    logits[4, targets[4]] = float("-inf")  # target masked: infinite loss
    logits[5, 20] = float("inf")
    logits[5, 21] = float("-inf")
    logits[7, 0] = float("nan")  # ignored row
    out = datadiet.ce_scores(logits, targets, return_embedding=True, label_smoothing=label_smoothing,
                             backend=backend)
    ref = reference(logits, targets, label_smoothing=label_smoothing, embedding_dtype=torch.float32)
    assert_scores_match(out, ref, emb_dtype=torch.float32)
    for row in (0, 1, 3, 5):
        for name in ("loss", "el2n", "grad_norm", "confidence", "margin", "entropy"):
            assert torch.isnan(getattr(out, name)[row]), (row, name)
        assert not out.correct[row]
        assert torch.isnan(out.embedding[row]).all()
    finite_loss = [out.loss[2]] if label_smoothing == 0 else []  # smoothing puts mass on masked classes
    assert torch.isfinite(torch.stack([*finite_loss, out.el2n[2], out.entropy[2], out.margin[2]])).all()
    assert out.loss[4] == float("inf") and torch.isfinite(out.el2n[4])
    assert out.loss[7] == 0 and out.el2n[7] == 0 and torch.isnan(out.entropy[7])
    assert (out.embedding[7] == 0).all()


def test_feature_sqnorm_equals_features():
    logits, targets, features = random_case(50, 12, torch.float32, seed=6)
    a = datadiet.ce_scores(logits, targets, features, backend="cpu")
    b = datadiet.ce_scores(logits, targets, feature_sqnorm=features.pow(2).sum(1), backend="cpu")
    torch.testing.assert_close(a.grad_norm, b.grad_norm)


def test_kernel_applies_sqrt_of_feature_sqnorm_plus_one_to_any_value():
    # The raw op does not validate values: whatever ‖h‖² it is given (zero, negative, NaN),
    # grad_norm = el2n * sqrt(‖h‖² + 1), as in the reference and the Triton kernel, and
    # never falls back to the bias-only norm.
    logits, targets, _ = random_case(4, 7, torch.float32, seed=10)
    hsq = torch.tensor([0.0, -0.5, -2.0, float("nan")])
    out = torch.ops.datadiet.ce_scores(logits, targets, hsq, -100, 0.0, None)
    torch.testing.assert_close(out[2], out[1] * torch.sqrt(hsq + 1), equal_nan=True)
    assert torch.isnan(out[2][2:]).all()


def test_backends_agree_and_are_deterministic():
    logits, targets, features = random_case(500, 100, torch.float32, seed=7)
    runs = [datadiet.ce_scores(logits, targets, features, return_embedding=True, backend=b)
            for b in ("cpu", "cpu", "torch")]
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)  # same input, same bits
    for name in ("loss", "el2n", "grad_norm", "confidence", "margin", "entropy", "embedding"):
        torch.testing.assert_close(getattr(runs[0], name), getattr(runs[2], name), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 40),
    c=st.integers(1, 600),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 30.0, 1e3]),
    label_smoothing=st.sampled_from([0.0, 0.05, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_property_cpu_matches_reference(n, c, dtype, scale, label_smoothing, seed):
    logits, targets, features = random_case(n, c, dtype, seed=seed, scale=scale, ignore_frac=0.1)
    out = datadiet.ce_scores(logits, targets, features, label_smoothing=label_smoothing,
                             return_embedding=True, backend="cpu")
    ref = reference(logits, targets, features.double().pow(2).sum(1), -100, label_smoothing, torch.float32)
    assert_scores_match(out, ref, rtol=5e-5, atol=5e-5, emb_dtype=torch.float32)


def test_opcheck_cpu():
    logits, targets, features = random_case(9, 13, torch.float32, seed=8)
    hsq = features.pow(2).sum(1)
    for args in [(logits, targets, hsq, -100, 0.1, torch.float16), (logits, targets, None, -100, 0.0, None),
                 (logits.bfloat16(), targets, None, 2, 0.0, torch.float32)]:
        torch.library.opcheck(torch.ops.datadiet.ce_scores.default, args)


def test_torch_compile():
    logits, targets, features = random_case(64, 10, torch.float32, seed=9)

    def hardest(logits, targets, features):
        s = datadiet.ce_scores(logits, targets, features, return_embedding=True)
        return s.grad_norm.argsort(descending=True)[:5], s.embedding.sum()

    compiled = torch.compile(hardest, fullgraph=True)
    idx, total = compiled(logits, targets, features)
    want_idx, want_total = hardest(logits, targets, features)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(total, want_total)
