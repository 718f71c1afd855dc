"""The CUDA kernel (skipped without a GPU): reference agreement, agreement with the CPU
kernel, opcheck and torch.compile on device tensors."""

import pytest
import torch
from conftest import requires_cuda_kernels
from helpers import assert_scores_match, random_case, reference

import datadiet

pytestmark = requires_cuda_kernels
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 4097])
@pytest.mark.parametrize("c", [1, 2, 10, 1000, 32000])
def test_cuda_matches_reference(n, c, dtype):
    logits, targets, features = random_case(n, c, dtype, seed=n + c, device="cuda")
    emb = dtype if c <= 1000 else None
    out = datadiet.ce_scores(logits, targets, features, return_embedding=emb is not None,
                             embedding_dtype=dtype, backend="cuda")
    ref = reference(logits, targets, features.double().pow(2).sum(1), embedding_dtype=emb)
    assert_scores_match(out, ref, emb_dtype=emb, context=f"{n}x{c} {dtype}")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cuda_non_finite_smoothing_ignored(label_smoothing):
    logits, targets, _ = random_case(9, 50, torch.float32, seed=2, device="cuda", ignore_frac=0.3)
    logits[0, 3] = float("nan")
    logits[1, 17] = float("inf")
    logits[2, [0, 9, 33]] = float("-inf")
    logits[3] = float("-inf")
    logits[4, 7] = 1e4
    logits = logits.t().contiguous().t()  # column-major: strided loads
    out = datadiet.ce_scores(logits, targets, label_smoothing=label_smoothing, return_embedding=True,
                             backend="cuda")
    ref = reference(logits, targets, label_smoothing=label_smoothing, embedding_dtype=torch.float32)
    assert_scores_match(out, ref, emb_dtype=torch.float32)


def test_cuda_equals_cpu_kernel():
    logits, targets, features = random_case(3000, 1000, torch.float32, seed=3)
    a = datadiet.ce_scores(logits, targets, features, return_embedding=True, backend="cpu")
    b = datadiet.ce_scores(logits.cuda(), targets.cuda(), features.cuda(), return_embedding=True, backend="cuda")
    assert torch.equal(a.correct, b.correct.cpu())
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y.cpu(), rtol=1e-5, atol=1e-6)


def test_cuda_unchecked_out_of_range_target_gives_nan_row():
    logits, targets, _ = random_case(3, 5, torch.float32, seed=4, device="cuda")
    targets[1] = 7
    out = datadiet.ce_scores(logits, targets, check_values=False, backend="cuda")
    assert torch.isnan(out.loss[1]) and not out.correct[1] and torch.isfinite(out.loss[[0, 2]]).all()
    with pytest.raises(ValueError, match=r"targets\[1\] = 7"):
        datadiet.ce_scores(logits, targets, backend="cuda")


def test_cuda_opcheck_and_compile():
    logits, targets, features = random_case(64, 10, torch.float32, seed=5, device="cuda")
    torch.library.opcheck(torch.ops.datadiet.ce_scores.default,
                          (logits, targets, features.pow(2).sum(1), -100, 0.1, torch.bfloat16))
    fn = torch.compile(lambda z, y: datadiet.ce_scores(z, y).el2n.sum(), fullgraph=True)
    torch.testing.assert_close(fn(logits, targets), datadiet.ce_scores(logits, targets).el2n.sum())
