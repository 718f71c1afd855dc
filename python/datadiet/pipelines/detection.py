"""The Cached-GradMatch study's detection experiment: Selective-Backprop on an SSD detector.

- ``build_model``, ``per_image_losses`` (``detection_model``): SSD and its loss split by image.
- ``mean_average_precision``: COCO's AP (101-point interpolated, greedy matching by score).
- ``train_detection``: AdamW with a cosine schedule, with or without Selective-Backprop.

Selective-Backprop (Composer's schedule, the Cached-GradMatch study's Algorithm 1): a step whose training progress
is in [``start``, ``end``) and which is not an ``interrupt``-th step (``interrupt=0``: none is)
first runs ``per_image_losses`` (``normalise="batch"``: the paper's per-image sum of box losses) on
the whole batch under ``torch.no_grad`` with the model in eval mode — BatchNorm uses and keeps its
running statistics, so the selection pass leaves the model untouched — then ``SelectiveBackpropSelector``
picks images and the model's own train-mode loss on those images alone is back-propagated. Other
steps train on the whole batch with no selection pass.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict

import torch

from datadiet._seeds import derive_seed, seeded_global_rng
from datadiet.pipelines.detection_data import ShapesDetection
from datadiet.pipelines.detection_model import build_model, per_image_losses
from datadiet.select.selective_backprop import SelectiveBackpropSelector

METHODS = ("none", "composer", "jiang")
COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_RECALLS = torch.arange(101, dtype=torch.float64) / 100


def mean_average_precision(predictions, targets, iou_thresholds=COCO_IOU_THRESHOLDS) -> float:
    """COCO-style mAP: AP per class and IoU threshold, averaged over the classes that have ground
    truth and over ``iou_thresholds`` (default 0.50:0.05:0.95; ``(0.5,)`` gives mAP@0.5).

    ``predictions[i]``: ``{"boxes" [d, 4] xyxy, "scores" [d], "labels" [d]}``; ``targets[i]``:
    ``{"boxes", "labels"}``. Within an image, detections in descending score take the unmatched
    ground-truth box of their class with the highest IoU ≥ the threshold, as pycocotools does;
    AP is the mean over recalls 0, 0.01, …, 1 of the best precision at that recall or beyond (0
    past the last recall reached). Every prediction counts (no ``maxDets`` cut, no area ranges,
    no crowd boxes). A class with ground truth and no detections has AP 0."""
    from torchvision.ops import box_iou

    if len(predictions) != len(targets):
        raise ValueError(f"mean_average_precision: {len(predictions)} predictions for {len(targets)} targets")
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"mean_average_precision: iou_thresholds must be non-empty, in (0, 1], got {iou_thresholds!r}")
    n_gt = defaultdict(int)
    scores = defaultdict(list)
    hits = defaultdict(lambda: [[] for _ in thresholds])
    for pred, target in zip(predictions, targets):
        for c in set(pred["labels"].tolist()) | set(target["labels"].tolist()):
            gt = target["boxes"][target["labels"] == c]
            n_gt[c] += len(gt)
            mine = pred["labels"] == c
            s, order = pred["scores"][mine].sort(descending=True, stable=True)
            ious = box_iou(pred["boxes"][mine][order].float(), gt.float()).tolist()
            scores[c].extend(s.tolist())
            for flags, t in zip(hits[c], thresholds):
                flags.extend(_greedy_match(ious, t))
    aps = [_average_precision(scores[c], flags, n_gt[c]) for c in n_gt if n_gt[c] for flags in hits[c]]
    if not aps:
        raise ValueError("mean_average_precision: the targets hold no ground-truth box")
    return sum(aps) / len(aps)


def _greedy_match(ious: list, threshold: float) -> list:
    """Per detection (rows, best score first): whether it takes a still unmatched box."""
    taken, flags = set(), []
    for row in ious:
        best, best_iou = -1, threshold
        for j, value in enumerate(row):
            if j not in taken and value >= best_iou:
                best, best_iou = j, value
        if best >= 0:
            taken.add(best)
        flags.append(best >= 0)
    return flags


def _average_precision(scores: list, flags: list, n_gt: int) -> float:
    if not scores:
        return 0.0
    order = torch.tensor(scores, dtype=torch.float64).sort(descending=True, stable=True)[1]
    tp = torch.tensor(flags, dtype=torch.float64)[order]
    tp_sum, fp_sum = tp.cumsum(0), (1 - tp).cumsum(0)
    recall = tp_sum / n_gt
    precision = (tp_sum / (tp_sum + fp_sum)).flip(0).cummax(0)[0].flip(0)
    at = torch.searchsorted(recall, _RECALLS)
    reached = at < len(recall)
    return float(torch.where(reached, precision[at.clamp(max=len(recall) - 1)], 0.0).mean())


def train_detection(*, n_train: int = 192, n_test: int = 64, image_size: int = 64, epochs: int = 10,
                    batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 1e-4, method: str = "none",
                    keep: float = 0.5, beta: float = 3.0, start: float = 0.5, end: float = 0.9, interrupt: int = 2,
                    architecture: str = "tiny", width_mult: float = 0.5, seed: int = 0, data_seed: int = 0,
                    progress: bool = True, log=None) -> dict:
    """Train an SSD (``build_model``'s ``architecture`` and ``width_mult``) on ``n_train``
    ``ShapesDetection`` images and evaluate it on ``n_test`` held-out ones after every epoch.

    ``method="none"`` trains on every image; ``"composer"`` / ``"jiang"`` use Selective-Backprop
    (``keep`` / ``beta`` as in ``SelectiveBackpropSelector``) on the steps the module docstring
    describes. ``seed`` fixes the initialisation, the batch order and the selector's draws;
    ``data_seed`` the images (train and test sets differ). The learning rate follows one cosine
    from ``lr`` to 0 over every step; the last incomplete batch of an epoch is dropped. A step
    that keeps no image is skipped; one that keeps a single image fails in BatchNorm when a feature
    map is 1×1 (``"ssdlite"``, or ``"tiny"`` below 64 px), so keep ``int(keep · batch_size) >= 2``.

    Returns ``map50`` and ``map`` (mAP@0.5 and @[.5:.95] on the test set after the last epoch),
    ``train_seconds`` (training steps only: no data generation, no evaluation),
    ``images_backpropagated``, ``images_seen``, ``sb_steps`` and ``curve``: per epoch its mean
    back-propagated loss, cumulative training seconds and test mAPs."""
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("epochs", epochs, 1),
                             ("batch_size", batch_size, 1), ("interrupt", interrupt, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"train_detection: {name} must be an int >= {low}, got {value!r}")
    if batch_size > n_train:
        raise ValueError(f"train_detection: batch_size {batch_size} exceeds n_train {n_train}")
    if method not in METHODS:
        raise ValueError(f"train_detection: method must be one of {METHODS}, got {method!r}")
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"train_detection: need 0 <= start <= end <= 1, got start={start!r}, end={end!r}")
    if not lr > 0:
        raise ValueError(f"train_detection: lr must be > 0, got {lr!r}")
    train_set = ShapesDetection(n_train, image_size, seed=derive_seed(data_seed, 0))
    test_set = ShapesDetection(n_test, image_size, seed=derive_seed(data_seed, 1))
    train_items = [train_set[i] for i in range(n_train)]
    model = build_model(image_size, architecture=architecture, width_mult=width_mult, seed=derive_seed(seed, 0))
    selector = None if method == "none" else SelectiveBackpropSelector(method, keep=keep, beta=beta,
                                                                       seed=derive_seed(seed, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = n_train // batch_size
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    order_gen = torch.Generator().manual_seed(derive_seed(seed, 2))
    result = {"images_backpropagated": 0, "images_seen": 0, "sb_steps": 0, "train_seconds": 0.0, "curve": []}
    epoch_range = range(epochs)
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        epoch_range = tqdm(epoch_range, desc="detection", unit="epoch", leave=False)
    with seeded_global_rng(derive_seed(seed, 3)):  # the transform's size draw uses the global RNG
        for epoch in epoch_range:
            began, losses = time.perf_counter(), []
            order = torch.randperm(n_train, generator=order_gen).tolist()
            for b in range(steps_per_epoch):
                step = epoch * steps_per_epoch + b
                images, targets = zip(*(train_items[i] for i in order[b * batch_size:(b + 1) * batch_size]))
                result["images_seen"] += len(images)
                selective = selector is not None and start <= step / total < end and (
                    interrupt == 0 or (step + 1) % interrupt != 0)
                if selective:
                    kept = _select(model, selector, images, targets)
                    images, targets = [images[i] for i in kept], [targets[i] for i in kept]
                    result["sb_steps"] += 1
                if images:
                    model.train()
                    loss = sum(model(list(images), list(targets)).values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    result["images_backpropagated"] += len(images)
                schedule.step()
            result["train_seconds"] += time.perf_counter() - began
            map50, map_ = evaluate(model, test_set)
            result["curve"].append({"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)),
                                    "seconds": result["train_seconds"], "map50": map50, "map": map_})
            if log is not None:
                log(f"  epoch {epoch + 1}/{epochs}: loss {result['curve'][-1]['loss']:.4f}, mAP@0.5 {map50:.4f}, "
                    f"mAP@[.5:.95] {map_:.4f}, {result['train_seconds']:.1f} s")
    result["map50"], result["map"] = result["curve"][-1]["map50"], result["curve"][-1]["map"]
    return result


def _select(model, selector: SelectiveBackpropSelector, images, targets) -> list:
    """The selection pass: per-image losses in eval mode without gradients, then the selector."""
    model.eval()
    with torch.no_grad():
        losses = per_image_losses(model, images, targets)
    return selector.select(losses).tolist()


@torch.no_grad()
def evaluate(model, dataset, batch_size: int = 32) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) of ``model`` on every image of ``dataset``, in eval mode."""
    model.eval()
    predictions, targets = [], []
    for b in range(0, len(dataset), batch_size):
        images, batch_targets = zip(*(dataset[i] for i in range(b, min(b + batch_size, len(dataset)))))
        predictions.extend(model(list(images)))
        targets.extend(batch_targets)
    return mean_average_precision(predictions, targets, (0.5,)), mean_average_precision(predictions, targets)
