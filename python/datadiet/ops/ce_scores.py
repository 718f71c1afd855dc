"""``ce_scores``: every per-sample difficulty score of a classifier's logits in one pass.

Wrapper, argument checks, fake (meta) registrations and the Triton custom op for
``torch.ops.datadiet.ce_scores``. The math is derived in
``csrc/ops/ce_scores/ce_scores_math.h``.
"""

from __future__ import annotations

from typing import NamedTuple, NoReturn, Optional, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.reference.ce_scores import ce_scores_reference

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# loss, el2n, grad_norm, confidence, margin, entropy, correct, embedding (see empty_outputs)
_Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                 torch.Tensor]


class CEScores(NamedTuple):
    """Per-sample scores, each ``[N]`` float32 (``correct``: bool).

    ``embedding`` is ``p - q`` (``[N, C]``, the last layer's bias gradient) when asked for, else None.
    """

    loss: torch.Tensor
    el2n: torch.Tensor
    grad_norm: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    correct: torch.Tensor
    embedding: Optional[torch.Tensor] = None


def ce_scores(
    logits: torch.Tensor,
    targets: torch.Tensor,
    features: Optional[torch.Tensor] = None,
    *,
    feature_sqnorm: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    return_embedding: bool = False,
    embedding_dtype: torch.dtype = torch.float32,
    check_values: bool = True,
    backend: str = "auto",
) -> CEScores:
    """Cross-entropy difficulty scores of every sample from one pass over the logits.

    With ``p = softmax(logits)`` and ``q`` the (label-smoothed) one-hot target:

    - ``loss``: ``cross_entropy(logits, targets, reduction="none", label_smoothing=...)``
    - ``el2n``: ``‖p - q‖₂`` (EL2N)
    - ``grad_norm``: ``‖p - q‖₂ · sqrt(‖h‖² + 1)``, the exact norm of the per-sample gradient
      of the loss w.r.t. the final ``nn.Linear``'s weight and bias when ``h`` are its inputs
      (last-layer GraNd); equal to ``el2n`` (bias only) without features
    - ``confidence``: ``max p``; ``margin``: ``p(1) - p(2)`` (1 when C = 1); ``entropy``: ``-Σ p log p``
    - ``correct``: ``argmax logits == target`` (ties: the first maximal class)
    - ``embedding`` (``return_embedding=True``): ``p - q`` as ``[N, C]`` in ``embedding_dtype``

    Args:
        logits: ``[N, C]`` float32, float16 or bfloat16, any strides. Accumulation is float32.
        targets: ``[N]`` int64 class indices in ``[0, C)`` or ``ignore_index``.
        features: optional ``[N, D]`` inputs of the final linear layer (only their squared
            norms are used); or pass ``feature_sqnorm`` ``[N]`` directly (not both).
        ignore_index: rows with this target get ``loss = el2n = grad_norm = 0``,
            ``correct = False`` and a zero embedding row; their label-free scores are kept.
        label_smoothing: ε in [0, 1]; the target becomes ``(1-ε)·onehot + ε/C``.
        check_values: verify the data-dependent inputs before launching: targets in range and
            a given ``feature_sqnorm`` non-negative (on CUDA this costs one host sync; the CPU
            kernel always checks targets). Unchecked out-of-range targets give NaN rows on
            CUDA and Triton, never an out-of-bounds read.
        backend: ``"auto" | "cpu" | "cuda" | "triton" | "torch"`` (see ``datadiet.backends``).

    Non-finite logits: ``-inf`` masks a class (probability 0). A row holding NaN or ``+inf``,
    or only ``-inf``, gets NaN for every float score and ``correct = False`` (unlabelled rows
    keep their zeros). Scores are not differentiable.
    """
    _check_args(logits, targets, features, feature_sqnorm, label_smoothing, embedding_dtype)
    chosen = resolve(backend, logits.device, "ce_scores")
    checking = check_values and not torch.compiler.is_compiling()
    if features is not None:
        feature_sqnorm = torch.linalg.vector_norm(features, dim=1, dtype=torch.float32).square()
    elif feature_sqnorm is not None:
        if checking:
            _check_non_negative(feature_sqnorm)
        feature_sqnorm = feature_sqnorm.float()
    if checking and chosen != "cpu":
        _check_target_range(targets, logits.shape[1], ignore_index)
    emb_dtype = embedding_dtype if return_embedding else None
    args = (logits, targets, feature_sqnorm, int(ignore_index), float(label_smoothing), emb_dtype)
    out: _Outputs
    if chosen in ("cpu", "cuda"):
        out = torch.ops.datadiet.ce_scores(*args)
    elif chosen == "triton":
        out = torch.ops.datadiet.ce_scores_triton(*args)
    else:
        out = cast("_Outputs", ce_scores_reference(*args))
    return CEScores(*out[:7], embedding=out[7] if return_embedding else None)


def _check_args(logits: torch.Tensor, targets: torch.Tensor, features: Optional[torch.Tensor],
                feature_sqnorm: Optional[torch.Tensor], label_smoothing: float, embedding_dtype: torch.dtype) -> None:
    def fail(msg: str, exc: type[Exception] = ValueError) -> NoReturn:
        raise exc(f"datadiet.ce_scores: {msg}")

    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        fail(f"logits and targets must be tensors, got {type(logits).__name__} and {type(targets).__name__}",
             TypeError)
    if logits.dim() != 2:
        fail(f"logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
    n, c = logits.shape
    if logits.dtype not in _FLOAT_DTYPES:
        fail(f"logits must be float32, float16 or bfloat16, got {logits.dtype}", TypeError)
    if c < 1:
        fail(f"logits need at least one class, got shape {tuple(logits.shape)}")
    if targets.dtype != torch.int64:
        fail(f"targets must be int64 class indices, got {targets.dtype}", TypeError)
    if targets.shape != (n,):
        fail(f"targets must have shape [{n}] to match logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    named = [("targets", targets), ("features", features), ("feature_sqnorm", feature_sqnorm)]
    for name, t in named[1:]:
        if t is not None and not isinstance(t, torch.Tensor):
            fail(f"{name} must be a tensor, got {type(t).__name__}", TypeError)
    for name, t in named:
        if t is not None and t.device != logits.device:
            fail(f"{name} is on {t.device} but logits are on {logits.device}")
    if features is not None and feature_sqnorm is not None:
        fail("pass features or feature_sqnorm, not both")
    if features is not None:
        if features.dim() != 2 or features.shape[0] != n:
            fail(f"features must have shape [{n}, D] to match logits {tuple(logits.shape)}, "
                 f"got {tuple(features.shape)}")
        if not features.is_floating_point():
            fail(f"features must be floating point, got {features.dtype}", TypeError)
    if feature_sqnorm is not None:
        if feature_sqnorm.shape != (n,):
            fail(f"feature_sqnorm must have shape [{n}], got {tuple(feature_sqnorm.shape)}")
        if not feature_sqnorm.is_floating_point():
            fail(f"feature_sqnorm must be floating point, got {feature_sqnorm.dtype}", TypeError)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        fail(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if embedding_dtype not in _FLOAT_DTYPES:
        fail(f"embedding_dtype must be float32, float16 or bfloat16, got {embedding_dtype}", TypeError)


def _check_target_range(targets: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_classes))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"datadiet.ce_scores: targets[{i}] = {int(targets[i])} is not a class index in "
            f"[0, {num_classes}) nor ignore_index = {ignore_index}"
        )


def _check_non_negative(feature_sqnorm: torch.Tensor) -> None:
    negative = feature_sqnorm < 0
    if bool(negative.any()):
        i = int(negative.nonzero()[0, 0])
        raise ValueError(f"datadiet.ce_scores: feature_sqnorm[{i}] = {float(feature_sqnorm[i])} is negative; "
                         "it must hold squared norms ‖h‖² >= 0")


def empty_outputs(logits: torch.Tensor, embedding_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, ...]:
    """The op's outputs on logits' device: six float32 [N] scores, bool [N] correct and the
    [N, C] embedding (an empty [0] float32 tensor when not asked for)."""
    n, c = logits.shape
    scores = [logits.new_empty((n,), dtype=torch.float32) for _ in range(6)]
    correct = logits.new_empty((n,), dtype=torch.bool)
    if embedding_dtype is None:
        embedding = logits.new_empty((0,), dtype=torch.float32)
    else:
        embedding = logits.new_empty((n, c), dtype=embedding_dtype)
    return (*scores, correct, embedding)


def _fake_outputs(logits: torch.Tensor, targets: torch.Tensor, feature_sqnorm: Optional[torch.Tensor],
                  ignore_index: int, label_smoothing: float,
                  embedding_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, ...]:
    return empty_outputs(logits, embedding_dtype)


@torch.library.custom_op("datadiet::ce_scores_triton", mutates_args=())
def _ce_scores_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    feature_sqnorm: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    embedding_dtype: Optional[torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    from datadiet.kernels import ce_scores as kernel

    return cast("_Outputs",
                kernel.ce_scores(logits, targets, feature_sqnorm, ignore_index, label_smoothing, embedding_dtype))


_ce_scores_triton.register_fake(_fake_outputs)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::ce_scores")(_fake_outputs)
