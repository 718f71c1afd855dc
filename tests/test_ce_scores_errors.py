"""ce_scores rejects bad input with an error naming the argument and the value."""

import pytest
import torch

import datadiet

C = 10


def good():
    return torch.randn(4, C), torch.tensor([0, 3, 9, 2])


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda z, y: (z[0], y), ValueError, r"logits must be 2-D \[N, C\], got shape \(10,\)"),
        (lambda z, y: (z.double(), y), TypeError, r"logits must be float32, float16 or bfloat16, got torch.float64"),
        (lambda z, y: (z.int(), y), TypeError, r"got torch.int32"),
        (lambda z, y: (z[:, :0], y), ValueError, r"at least one class, got shape \(4, 0\)"),
        (lambda z, y: (z, y.float()), TypeError, r"targets must be int64 class indices, got torch.float32"),
        (lambda z, y: (z, y[:3]), ValueError, r"targets must have shape \[4\] .* got \(3,\)"),
        (lambda z, y: (z, torch.tensor([0, 3, 10, 2])), ValueError,
         r"targets\[2\] = 10 is not a class index in \[0, 10\) nor ignore_index = -100"),
        (lambda z, y: (z, torch.tensor([0, -1, 1, 2])), ValueError, r"targets\[1\] = -1 is not a class index"),
    ],
)
def test_bad_logits_and_targets(mutate, exc, pattern, backend):
    z, y = mutate(*good())
    with pytest.raises(exc, match=pattern):
        datadiet.ce_scores(z, y, backend=backend)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"features": torch.randn(5, 3)}, ValueError, r"features must have shape \[4, D\] .* got \(5, 3\)"),
        ({"features": torch.randn(4)}, ValueError, r"features must have shape \[4, D\]"),
        ({"features": torch.ones(4, 3, dtype=torch.int64)}, TypeError, r"features must be floating point"),
        ({"feature_sqnorm": torch.ones(3)}, ValueError, r"feature_sqnorm must have shape \[4\], got \(3,\)"),
        ({"feature_sqnorm": torch.tensor([1.0, 2.0, -0.25, 0.0])}, ValueError,
         r"feature_sqnorm\[2\] = -0.25 is negative"),
        ({"features": torch.randn(4, 3), "feature_sqnorm": torch.ones(4)}, ValueError, "not both"),
        ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
        ({"label_smoothing": -0.1}, ValueError, r"got -0.1"),
        ({"return_embedding": True, "embedding_dtype": torch.int8}, TypeError, r"embedding_dtype .* torch.int8"),
        ({"backend": "gpu"}, ValueError, r"backend must be one of .* got 'gpu'"),
        ({"backend": "cuda"}, ValueError, r"backend='cuda' is unavailable: .*available: \["),
    ],
)
def test_bad_options(kwargs, exc, pattern):
    z, y = good()
    with pytest.raises(exc, match=pattern):
        datadiet.ce_scores(z, y, **kwargs)


def test_device_mismatch_is_named():
    z, y = good()
    meta_y = y.to("meta")
    with pytest.raises(ValueError, match=r"targets is on meta but logits are on cpu"):
        datadiet.ce_scores(z, meta_y)
    with pytest.raises(ValueError, match=r"features is on meta but logits are on cpu"):
        datadiet.ce_scores(z, y, torch.randn(4, 3, device="meta"))


@pytest.mark.parametrize(
    "args, pattern",
    [
        (lambda z, y: (z[0], y, None, -100, 0.0, None), r"logits must be 2-D \[N, C\], got shape \[10\]"),
        (lambda z, y: (z.double(), y, None, -100, 0.0, None), r"logits must be float32, float16 or bfloat16, got Double"),
        (lambda z, y: (z, y.int(), None, -100, 0.0, None), r"targets must be int64 class indices, got Int"),
        (lambda z, y: (z, y[:2], None, -100, 0.0, None), r"targets must have shape \[4\] to match logits \[4, 10\], got \[2\]"),
        (lambda z, y: (z, y, torch.ones(3), -100, 0.0, None), r"feature_sqnorm must have shape \[4\], got \[3\]"),
        (lambda z, y: (z, y, torch.ones(4).double(), -100, 0.0, None), r"feature_sqnorm must be float32, got Double"),
        (lambda z, y: (z, y, None, -100, 2.0, None), r"label_smoothing must be in \[0, 1\], got 2"),
        (lambda z, y: (z, y, None, -100, 0.0, torch.int32), r"embedding_dtype must be .* got Int"),
        (lambda z, y: (z, y * 4, None, -100, 0.0, None), r"targets\[1\] = 12 is not a class index in \[0, 10\)"),
    ],
)
def test_compiled_op_checks_its_own_arguments(args, pattern):
    # Libraries calling torch.ops.datadiet.ce_scores directly get the same care.
    with pytest.raises(ValueError, match=pattern):
        torch.ops.datadiet.ce_scores(*args(*good()))
