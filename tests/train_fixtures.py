"""Tiny on-disk datasets in the formats users have: an ImageNet-layout ImageFolder (grey and
colour PNGs) and a CIFAR-10 ``cifar-10-batches-py`` folder (pickled batches), built on the fly."""

import os
import pickle

import numpy as np
import pytest


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or built for another torch (scripts/check_wheel.sh)
        return False
    return True


requires_torchvision = pytest.mark.skipif(not _has_torchvision(), reason="torchvision cannot be imported")


def image_folder(root, classes=3, per_class=6, size=20, grey_every=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class_{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 60 + c * 60).astype(np.uint8)
                image = Image.fromarray(pixels)
                if i % grey_every == 0:
                    image = image.convert("L")
                image.save(os.path.join(folder, f"{i}.png"))
    return str(root)


def cifar10(root, per_batch=20):
    rng = np.random.default_rng(1)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = (rng.random((per_batch, 3072)) * 255).astype(np.uint8)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return str(root)
