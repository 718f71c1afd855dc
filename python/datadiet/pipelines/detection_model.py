"""SSD detectors for the Cached-GradMatch study's experiment and their loss split by image.

``build_model`` returns a torchvision ``SSD`` with no pre-trained weights at a fixed input size of
``image_size``² (anchors follow the feature maps, so they scale with it), at most 100
detections per image (COCO's ``maxDets``):

- ``"tiny"`` (default): a 7-layer conv/BatchNorm/ReLU backbone, feature maps at strides 8, 16
  and 32 (``32 · width_mult`` channels in the stem, twice that after), torchvision's
  ``DefaultBoxGenerator`` and ``SSDHead``. On two CPU cores it reaches a useful mAP within a
  minute on ``ShapesDetection``.
- ``"ssdlite"``: ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
  width_mult=...)`` resized to ``image_size``. Ten times slower per step on CPU, and far from
  converged after the same budget.

``per_image_losses`` is SSD's training loss split by image. It runs the model's own submodules
(transform, backbone, head, anchor generator, matcher, box coder) as ``SSD.forward`` and
``SSD.compute_loss`` do — IoU matching with ``SSDMatcher``, smooth-L1 box loss on the matched
anchors, cross-entropy on the matched anchors plus the ``neg_to_pos_ratio`` · (matches) hardest
negative anchors of the same image — and stops before the batch reduction. Image i's loss is
(box loss_i + classification loss_i) / d_i:

- ``normalise="batch"`` (default): d_i = max(1, Σ_j m_j), the batch's matched anchors —
  torchvision's divisor — so the losses sum to the model's own ``bbox_regression +
  classification`` for that batch (up to float summation order).
- ``normalise="image"``: d_i = max(1, m_i), image i's own matched anchors: a per-anchor loss that
  does not grow with the number of objects. Then Σ_i loss_i · max(1, m_i) / max(1, Σ_j m_j) is
  the model's total.

An image without boxes has no matched anchor, hence no hard negative and a loss of 0, as in
torchvision.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from datadiet._seeds import seeded_global_rng
from datadiet.pipelines.detection_data import CLASSES

ARCHITECTURES = ("tiny", "ssdlite")
NORMALISE = ("batch", "image")


def build_model(image_size: int = 64, *, architecture: str = "tiny", width_mult: float = 0.5,
                num_classes: int = len(CLASSES), seed: int = 0) -> nn.Module:
    """A freshly initialised SSD (initialisation drawn from ``seed``, global RNG restored)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    if architecture not in ARCHITECTURES:
        raise ValueError(f"build_model: architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"build_model: image_size must be an int >= 32, got {image_size!r}")
    if not width_mult > 0:
        raise ValueError(f"build_model: width_mult must be > 0, got {width_mult!r}")
    with seeded_global_rng(seed):
        if architecture == "ssdlite":
            model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes,
                                                  width_mult=width_mult)
            model.transform.fixed_size = (image_size, image_size)
            model.transform.min_size, model.transform.max_size = (image_size,), image_size
        else:
            model = SSD(_TinyBackbone(max(8, round(32 * width_mult))),
                        DefaultBoxGenerator([[2, 3]] * 3, min_ratio=0.2, max_ratio=0.95), (image_size, image_size),
                        num_classes, image_mean=[0.5] * 3, image_std=[0.5] * 3, score_thresh=0.001,
                        nms_thresh=0.55, topk_candidates=300)
    model.detections_per_img = 100
    return model


class _TinyBackbone(nn.Module):
    """Conv-BN-ReLU stem to stride 8, then two stride-2 layers: three feature maps."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(3, w, 2), _conv(w, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),
                                  _conv(2 * w, 2 * w, 2))
        self.down = nn.ModuleList([_conv(2 * w, 2 * w, 2), _conv(2 * w, 2 * w, 2)])
        self.out_channels = [2 * w] * 3

    def forward(self, x: torch.Tensor) -> OrderedDict:
        features = [self.stem(x)]
        for layer in self.down:
            features.append(layer(features[-1]))
        return OrderedDict((str(i), f) for i, f in enumerate(features))


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def per_image_losses(model, images, targets, *, normalise: str = "batch") -> torch.Tensor:
    """Float ``[B]``: each image's SSD loss, normalised as the module docstring says. Runs in the
    model's current mode (train mode: BatchNorm uses, and updates, batch statistics) and keeps the
    autograd graph unless called under ``torch.no_grad``."""
    from torchvision.ops import box_iou

    if normalise not in NORMALISE:
        raise ValueError(f"per_image_losses: normalise must be one of {NORMALISE}, got {normalise!r}")
    if len(images) == 0 or len(images) != len(targets):
        raise ValueError(f"per_image_losses: need as many targets as images (at least one), got {len(images)} "
                         f"images and {len(targets)} targets")
    image_list, targets = model.transform(list(images), [dict(t) for t in targets])
    features = model.backbone(image_list.tensors)
    features = list(features.values()) if isinstance(features, dict) else [features]
    head = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    box_losses, cls_targets, matched_anchors = [], [], []
    for target, regression, anchors_i in zip(targets, head["bbox_regression"], anchors):
        if target["boxes"].numel() == 0:
            matched = torch.full((anchors_i.size(0),), -1, dtype=torch.int64, device=anchors_i.device)
        else:
            matched = model.proposal_matcher(box_iou(target["boxes"], anchors_i))
        fg = torch.where(matched >= 0)[0]
        gt = matched[fg]
        encoded = model.box_coder.encode_single(target["boxes"][gt], anchors_i[fg])
        box_losses.append(F.smooth_l1_loss(regression[fg], encoded, reduction="sum"))
        classes = torch.zeros(anchors_i.size(0), dtype=target["labels"].dtype, device=anchors_i.device)
        classes[fg] = target["labels"][gt]
        cls_targets.append(classes)
        matched_anchors.append(fg.numel())
    cls_targets = torch.stack(cls_targets)
    logits = head["cls_logits"]
    cls_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), cls_targets.reshape(-1),
                               reduction="none").view_as(cls_targets)
    # Hard negatives exactly as SSD.compute_loss picks them, row by row (one row per image).
    positive = cls_targets > 0
    negative_loss = cls_loss.detach().clone()
    negative_loss[positive] = -float("inf")
    order = negative_loss.sort(1, descending=True)[1]
    hard_negative = order.sort(1)[1] < model.neg_to_pos_ratio * positive.sum(1, keepdim=True)
    zero = cls_loss.new_zeros(())
    losses = (torch.stack(box_losses) + torch.where(positive, cls_loss, zero).sum(1)
              + torch.where(hard_negative, cls_loss, zero).sum(1))
    if normalise == "batch":
        return losses / max(1, sum(matched_anchors))
    return losses / torch.tensor(matched_anchors, device=losses.device).clamp(min=1)


