"""Seed 003's detection pipeline: the shapes set is seeded per image and its boxes are the tight
bounds of the drawn pixels; SSD's per-image losses add up to the model's own train-mode loss
under either normalisation; the selection pass leaves the model untouched and Selective-Backprop
back-propagates the configured share; mAP against hand-computed cases; a tiny training run."""

import json
import math

import pytest
import torch

from datadiet.pipelines.detection_data import CLASSES, ShapesDetection


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or built for another torch
        return False
    return True


requires_torchvision = pytest.mark.skipif(not _has_torchvision(), reason="torchvision cannot be imported")


def test_shapes_are_seeded_per_image_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = ShapesDetection(6, 64, seed=3), ShapesDetection(6, 64, seed=3)
    backwards = [b[i] for i in reversed(range(6))][::-1]
    for i in range(6):
        image, target = a[i]
        assert torch.equal(image, backwards[i][0])
        assert torch.equal(target["boxes"], backwards[i][1]["boxes"])
        assert torch.equal(target["labels"], backwards[i][1]["labels"])
    assert not torch.equal(a[0][0], ShapesDetection(6, 64, seed=4)[0][0])
    assert torch.equal(torch.get_rng_state(), state)


def test_boxes_are_the_tight_bounds_of_the_drawn_shapes():
    data = ShapesDetection(24, 48, seed=0, max_objects=4)
    for i in range(len(data)):
        image, target, masks = data.draw(i)
        boxes, labels = target["boxes"], target["labels"]
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert 1 <= len(boxes) == len(labels) == len(masks) <= 4
        assert ((labels >= 1) & (labels < len(CLASSES))).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert int(masks.sum(0).max()) == 1  # no overlap
        # Object pixels have a channel at exactly 0 or 1; the background never does.
        assert torch.equal(masks.any(0), ((image == 0) | (image == 1)).any(0))
        for box, mask in zip(boxes.tolist(), masks):
            rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            assert box == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            colours = image[:, mask]
            assert torch.equal(colours, colours[:, :1].expand_as(colours))  # one solid colour
    assert set(torch.cat([data[i][1]["labels"] for i in range(len(data))]).tolist()) == {1, 2, 3}


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=2, image_size=8), dict(n=2, max_objects=0),
                                    dict(n=2, min_side=0.6, max_side=0.5), dict(n=2, image_size=20, min_side=0.1)])
def test_shapes_reject_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="ShapesDetection"):
        ShapesDetection(**kwargs)


def _batch(image_size=64, n=3):
    data = ShapesDetection(n, image_size, seed=1)
    images, targets = zip(*(data[i] for i in range(n)))
    return list(images), list(targets)


@torch.no_grad()
def _matched_anchors(model, images, targets):
    """Anchors each image's boxes are matched to, from the model's matcher directly."""
    from torchvision.ops import box_iou

    image_list, targets = model.transform(images, targets)
    features = list(model.backbone(image_list.tensors).values())
    anchors = model.anchor_generator(image_list, features)
    return [int((model.proposal_matcher(box_iou(t["boxes"], a)) >= 0).sum()) if len(t["boxes"]) else 0
            for t, a in zip(targets, anchors)]


@requires_torchvision
@pytest.mark.parametrize("architecture", ["tiny", "ssdlite"])
def test_per_image_losses_add_up_to_the_models_loss(architecture):
    from datadiet.pipelines.detection import build_model, per_image_losses

    images, targets = _batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # no object
    model = build_model(64, architecture=architecture, seed=0).train()
    total = float(sum(model(images, targets).values()).detach())
    batch = per_image_losses(model, images, targets)
    assert batch.shape == (3,) and batch.requires_grad
    batch = batch.detach()
    assert math.isclose(float(batch.sum()), total, rel_tol=1e-5)
    assert float(batch[1]) == 0.0  # no matched anchor, so no hard negative either: SSD's rule
    own = per_image_losses(model, images, targets, normalise="image").detach()
    matches = _matched_anchors(model, images, targets)
    assert matches[1] == 0 and min(matches[0], matches[2]) >= 1
    for o, b, m in zip(own.tolist(), batch.tolist(), matches):
        assert math.isclose(o * max(1, m), b * max(1, sum(matches)), rel_tol=1e-5, abs_tol=1e-12)
    weighted = sum(o * max(1, m) for o, m in zip(own.tolist(), matches)) / max(1, sum(matches))
    assert math.isclose(weighted, total, rel_tol=1e-5)
    with pytest.raises(ValueError, match="normalise"):
        per_image_losses(model, images, targets, normalise="anchor")
    with pytest.raises(ValueError, match="2 targets"):
        per_image_losses(model, images, targets[:2])


@requires_torchvision
def test_selection_pass_leaves_the_model_untouched_and_keeps_the_fraction():
    from datadiet.pipelines.detection import _select, build_model
    from datadiet.select import SelectiveBackpropSelector

    images, targets = _batch(n=5)
    model = build_model(64, seed=0).train()  # BatchNorm in the backbone
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for keep in (0.2, 0.5, 0.99):
        kept = _select(model, SelectiveBackpropSelector("composer", keep=keep, seed=0), images, targets)
        assert len(kept) == len(set(kept)) == int(keep * 5) and all(0 <= i < 5 for i in kept)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


@requires_torchvision
def test_map_perfect_none_and_hand_computed():
    from datadiet.pipelines.detection import mean_average_precision as mAP

    targets = [{"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 40, 30]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[5., 5, 25, 25]]), "labels": torch.tensor([1])}]
    perfect = [_pred(t["boxes"].tolist(), [0.9] * len(t["labels"]), t["labels"].tolist()) for t in targets]
    assert mAP(perfect, targets) == 1.0 and mAP(perfect, targets, (0.5,)) == 1.0
    empty = [_pred([], [], [])] * 2
    assert mAP(empty, targets) == 0.0
    # One class, two boxes; detections by score: hit, miss, hit. Precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1: 51 recall points (0..0.5) at precision 1, 50 at 2/3.
    one = [{"boxes": torch.tensor([[0., 0, 10, 10], [50, 50, 60, 60]]), "labels": torch.tensor([1, 1])}]
    hits = [_pred([[0, 0, 10, 10], [80, 80, 90, 90], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 1, 1])]
    assert math.isclose(mAP(hits, one, (0.5,)), (51 + 50 * 2 / 3) / 101, rel_tol=1e-12)
    # IoU 0.62 counts at 0.5, 0.55, 0.6 only: 3 of 10 thresholds. A class without ground truth
    # (label 3) is left out of the mean; class 2 is missed.
    two = [{"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 2])}]
    partial = [_pred([[0, 0, 10, 6.2], [60, 60, 70, 70]], [0.9, 0.5], [1, 3])]
    assert math.isclose(mAP(partial, two), (0.3 + 0.0) / 2, rel_tol=1e-12)
    # A duplicate of a matched detection is a false positive: the same curve as hit, miss, hit.
    duplicate = [_pred([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 1, 1])]
    assert math.isclose(mAP(duplicate, one, (0.5,)), (51 + 50 * 2 / 3) / 101, rel_tol=1e-12)
    with pytest.raises(ValueError, match="1 predictions for 2 targets"):
        mAP(perfect[:1], targets)
    with pytest.raises(ValueError, match="iou_thresholds"):
        mAP(perfect, targets, (0.0,))
    with pytest.raises(ValueError, match="no ground-truth box"):
        mAP(empty[:1], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])


@requires_torchvision
def test_train_detection_runs_small_and_backpropagates_the_kept_share():
    from datadiet.pipelines.detection import train_detection

    tiny = dict(n_train=4, n_test=2, image_size=32, epochs=1, batch_size=4, progress=False)
    full = train_detection(**tiny)
    sb = train_detection(method="composer", keep=0.5, start=0.0, end=1.0, interrupt=0, **tiny)
    for r in (full, sb):
        assert all(math.isfinite(r[k]) for k in ("map50", "map", "train_seconds"))
        assert 0.0 <= r["map"] <= r["map50"] <= 1.0
        assert len(r["curve"]) == 1 and math.isfinite(r["curve"][0]["loss"]) and r["images_seen"] == 4
    assert full["images_backpropagated"] == 4 and full["sb_steps"] == 0
    assert sb["images_backpropagated"] == 2 and sb["sb_steps"] == 1


@requires_torchvision
@pytest.mark.parametrize("kwargs, name", [(dict(method="random"), "method"), (dict(batch_size=0), "batch_size"),
                                          (dict(n_train=2, batch_size=4), "batch_size 4"),
                                          (dict(start=0.9, end=0.5), "start"), (dict(interrupt=-1), "interrupt"),
                                          (dict(lr=0.0), "lr")])
def test_train_detection_rejects_bad_arguments(kwargs, name):
    from datadiet.pipelines.detection import train_detection

    with pytest.raises(ValueError, match=name):
        train_detection(**kwargs)


@requires_torchvision
def test_reproduction_writes_rows_per_keep(tmp_path):
    from datadiet.reproduce import CLAIMS, sb_detection

    assert CLAIMS[sb_detection.CLAIM] == "datadiet.reproduce.sb_detection"
    from datadiet.cli import main as cli

    tiny = [f"--detection-param={k}={v}" for k, v in dict(n_train=4, n_test=2, image_size=32, epochs=1,
                                                            batch_size=4).items()]
    assert cli(["reproduce", "sb-detection", "--keeps", "1.0,0.5", "--seeds", "0", "--sb-start", "0", "--sb-end", "1",
                "--interrupt", "0", "--out", str(tmp_path), *tiny]) == 0
    rows = json.load(open(tmp_path / "sb-detection.json"))["rows"]
    assert [(r["fraction"], r["method"], r["backprop_mean"]) for r in rows] == [(1.0, "none", 4), (0.5, "composer", 2)]
    assert rows[0]["time_vs_full"] == 1.0 and all(math.isfinite(r["map50_mean"]) for r in rows)
    for name in ("sb-detection.json", "sb-detection.csv", "sb-detection.png", "sb-detection-curve.png"):
        assert (tmp_path / name).exists()
    with pytest.raises(ValueError, match="keeps"):
        sb_detection.run(keeps=(0.0,), out=str(tmp_path))
    with pytest.raises(ValueError, match="method"):
        sb_detection.run(method="jiang", out=str(tmp_path))
