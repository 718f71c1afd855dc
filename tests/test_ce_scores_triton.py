"""The Triton kernel against the reference: through the interpreter on CPU tensors when
there is no GPU (tiny shapes, it is slow), compiled on CUDA tensors when there is one."""

import pytest
import torch
from helpers import assert_scores_match, random_case, reference

import datadiet

pytest.importorskip("triton", reason="triton is not installed (CPU-only torch)")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(0, 3), (1, 1), (7, 2), (7, 10), (5, 33)] + ([(4097, 1000), (64, 32000), (3, 70001)] if ON_GPU else [])


def run_kernel(logits, targets, hsq=None, ignore_index=-100, label_smoothing=0.0, emb=None, block_c=None):
    from datadiet.kernels import ce_scores as kernel

    out = kernel.ce_scores(logits, targets, hsq, ignore_index, label_smoothing, emb, block_c=block_c)
    return datadiet.CEScores(*out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,c", SHAPES)
def test_triton_matches_reference(n, c, dtype):
    logits, targets, features = random_case(n, c, dtype, seed=n * 7 + c, device=DEVICE)
    out = datadiet.ce_scores(logits, targets, features, return_embedding=True, embedding_dtype=dtype,
                             backend="triton")
    ref = reference(logits, targets, features.double().pow(2).sum(1), embedding_dtype=dtype)
    assert_scores_match(out, ref, emb_dtype=dtype, context=f"{n}x{c}")


@pytest.mark.parametrize("block_c", [1, 4, 16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_triton_rescales_across_column_blocks(block_c, label_smoothing):
    # Small blocks force many max updates and rescalings per row.
    logits, targets, features = random_case(6, 37, torch.float32, seed=block_c, device=DEVICE, ignore_frac=0.3)
    logits[0] = torch.arange(37, dtype=torch.float32, device=DEVICE)  # max rises in every block
    logits[1, 5] = logits[1, 30] = 50.0  # tied max in different blocks: first one wins
    targets[1] = 30
    hsq = features.pow(2).sum(1)
    out = run_kernel(logits, targets, hsq, label_smoothing=label_smoothing, emb=torch.float32, block_c=block_c)
    ref = reference(logits, targets, hsq.double(), -100, label_smoothing, torch.float32)
    assert_scores_match(out, ref, emb_dtype=torch.float32)
    assert not out.correct[1] and out.margin[1] == 0


@pytest.mark.parametrize("block_c", [4, None])
def test_triton_non_finite_and_ignored_rows(block_c):
    logits, targets, _ = random_case(8, 12, torch.float32, seed=11, device=DEVICE)
    targets[6] = 3
    logits[0, 3] = float("nan")
    logits[1, 7] = float("inf")
    logits[2, [0, 9]] = float("-inf")
    logits[3] = float("-inf")
    logits[4, targets[4]] = float("-inf")
    out = run_kernel(logits, targets, ignore_index=3, emb=torch.float32, block_c=block_c)
    ref = reference(logits, targets, ignore_index=3, embedding_dtype=torch.float32)
    assert_scores_match(out, ref, emb_dtype=torch.float32)


def test_triton_strided_inputs():
    logits, targets, _ = random_case(9, 40, torch.float16, seed=12, device=DEVICE)
    logits = logits.t().contiguous().t()[:, ::3]
    targets = torch.stack([targets % 14, targets], dim=1)[:, 0]
    out = datadiet.ce_scores(logits, targets, return_embedding=True, backend="triton")
    assert_scores_match(out, reference(logits, targets, embedding_dtype=torch.float32), emb_dtype=torch.float32)


def test_triton_unchecked_out_of_range_target_gives_nan_row():
    logits, targets, _ = random_case(3, 5, torch.float32, seed=13, device=DEVICE)
    targets[1] = 7
    out = datadiet.ce_scores(logits, targets, check_values=False, return_embedding=True, backend="triton")
    assert torch.isnan(out.loss[1]) and torch.isnan(out.embedding[1]).all() and not out.correct[1]
    assert torch.isfinite(out.loss[[0, 2]]).all()


def test_opcheck_triton():
    logits, targets, features = random_case(4, 6, torch.float32, seed=14, device=DEVICE)
    hsq = features.pow(2).sum(1)
    for args in [(logits, targets, hsq, -100, 0.1, torch.float32), (logits, targets, None, -100, 0.0, None)]:
        torch.library.opcheck(torch.ops.datadiet.ce_scores_triton.default, args)


def test_triton_confident_rows_keep_the_cpu_kernels_relative_bound():
    """Rows with p_y within 1e-11 … 1e-5 of 1 (loss below 1e-4), and a label a hair below the max
    (expm1's path): the loss, the confidence's complement and EL2N keep their relative accuracy
    (1e-5) against float64, as the CPU kernel does. Compiled, this rests on libdevice's log1p /
    expm1 and round-to-nearest division (the interpreter checks the same formulas over NumPy)."""
    c = 10
    gaps = torch.tensor([11.5, 14.0, 17.0, 20.0, 23.0, 25.0])
    logits = torch.zeros(len(gaps) + 2, c)
    targets = torch.tensor([3] * len(gaps) + [4, 4])
    logits[torch.arange(len(gaps)), 3] = gaps
    logits[len(gaps):, 7] = 12.0
    logits[len(gaps):, 4] = torch.tensor([12.0 - 2e-6, 12.0 - 0.01])  # z_y just below the max
    logits = logits.to(DEVICE)
    targets = targets.to(DEVICE)
    ref = reference(logits.cpu(), targets.cpu(), embedding_dtype=torch.float32)
    assert (ref[0][:len(gaps)] < 1e-4).all()
    for backend in ("triton", "cpu") if not ON_GPU else ("triton",):
        out = datadiet.ce_scores(logits, targets, backend=backend)
        torch.testing.assert_close(out.loss.double().cpu(), ref[0], rtol=1e-5, atol=0)
        torch.testing.assert_close(out.el2n.double().cpu(), ref[1], rtol=1e-5, atol=0)
        torch.testing.assert_close(1 - out.confidence.double().cpu()[len(gaps):],
                                   1 - ref[3][len(gaps):], rtol=1e-4, atol=1e-7)
