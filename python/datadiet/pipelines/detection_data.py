"""A small synthetic detection set for the Cached-GradMatch study's experiment on CPU: solid-coloured rectangles,
ellipses and triangles on a noise background, with their boxes.

Every image is drawn from its own ``torch.Generator`` seeded by ``derive_seed(seed, index)``, so
item ``i`` is the same whenever and in whatever order it is read, and the global RNG is never
touched. Objects never overlap (a placement that would is re-drawn, at most ``_TRIES`` times,
then dropped; every image keeps at least one object), so each box is exactly the tight bounding
box of its shape's visible pixels. Object colours are a permutation of (1, 0, u): every object
pixel has a channel at 0 or 1 while the background stays inside [0.25, 0.75], so objects are
visible and their pixels can be told from the background.
"""

from __future__ import annotations

import torch

from datadiet._seeds import derive_seed

CLASSES = ("background", "rectangle", "ellipse", "triangle")
_TRIES = 20


class ShapesDetection(torch.utils.data.Dataset):
    """``n`` images of ``image_size``² pixels with 1 to ``max_objects`` shapes each, sides between
    ``min_side`` and ``max_side`` of the image. Item ``i`` is ``(image, target)``: a float
    ``[3, H, W]`` image in [0, 1] and ``{"boxes": float [k, 4] xyxy in pixels, "labels": int64
    [k]}`` with labels 1 (rectangle), 2 (ellipse), 3 (triangle) — 0 is the background, as
    torchvision's detectors expect. ``draw(i)`` also returns the shapes' pixel masks."""

    def __init__(self, n: int, image_size: int = 96, seed: int = 0, max_objects: int = 3,
                 min_side: float = 0.2, max_side: float = 0.5) -> None:
        for name, value, low in (("n", n, 1), ("image_size", image_size, 16), ("max_objects", max_objects, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ShapesDetection: {name} must be an int >= {low}, got {value!r}")
        if not 0.0 < min_side <= max_side <= 1.0:
            raise ValueError(f"ShapesDetection: need 0 < min_side <= max_side <= 1, got min_side={min_side!r}, "
                             f"max_side={max_side!r}")
        if min_side * image_size < 6:
            raise ValueError(f"ShapesDetection: min_side * image_size must be at least 6 pixels, got "
                             f"{min_side} * {image_size}")
        self.n, self.image_size, self.seed, self.max_objects = n, image_size, int(seed), max_objects
        self.min_side, self.max_side = float(min_side), float(max_side)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        image, target, _ = self.draw(index)
        return image, target

    def draw(self, index: int):
        """``(image, target, masks)``; ``masks`` is bool ``[k, H, W]``, one per box."""
        if not -self.n <= index < self.n:
            raise IndexError(f"ShapesDetection: index {index} out of range for {self.n} images")
        index %= self.n
        g = torch.Generator().manual_seed(derive_seed(self.seed, index))
        s = self.image_size
        coarse = torch.rand(3, 1, max(2, s // 8), max(2, s // 8), generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        image = 0.25 + 0.5 * (0.7 * smooth + 0.3 * torch.rand(3, s, s, generator=g))
        centre = torch.arange(s, dtype=torch.float32) + 0.5
        ys, xs = centre[:, None], centre[None, :]
        count = int(torch.randint(1, self.max_objects + 1, (1,), generator=g))
        boxes, labels, masks = [], [], []
        taken = torch.zeros(s, s, dtype=torch.bool)
        for _ in range(count):
            for _ in range(_TRIES):
                label, mask = self._shape(g, xs, ys)
                if not (mask & _dilate(taken)).any():
                    break
            else:
                continue
            colour = torch.tensor([1.0, 0.0, float(torch.rand(1, generator=g))])[torch.randperm(3, generator=g)]
            image[:, mask] = colour[:, None]
            taken |= mask
            rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)])
            labels.append(label)
            masks.append(mask)
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64)}
        return image, target, torch.stack(masks)

    def _shape(self, g: torch.Generator, xs: torch.Tensor, ys: torch.Tensor):
        """One random shape: its label and pixel mask (pixel centres inside the shape)."""
        s = self.image_size
        lo, hi = round(self.min_side * s), round(self.max_side * s)
        w, h = (int(v) for v in torch.randint(lo, hi + 1, (2,), generator=g))
        x0 = float(torch.randint(0, s - w + 1, (1,), generator=g))
        y0 = float(torch.randint(0, s - h + 1, (1,), generator=g))
        label = int(torch.randint(1, len(CLASSES), (1,), generator=g))
        if label == 1:
            mask = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
        elif label == 2:
            mask = ((xs - x0 - w / 2) / (w / 2)) ** 2 + ((ys - y0 - h / 2) / (h / 2)) ** 2 <= 1.0
        else:  # apex on the top edge, base along the bottom edge
            apex = x0 + w * float(torch.rand(1, generator=g))
            left = (xs - x0) * h >= (apex - x0) * (y0 + h - ys)
            right = (x0 + w - xs) * h >= (x0 + w - apex) * (y0 + h - ys)
            mask = left & right & (ys >= y0) & (ys < y0 + h)
        return label, mask


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` grown by one pixel, so that accepted shapes never touch."""
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)
    return grown[0, 0] > 0


def collate(batch):
    """DataLoader ``collate_fn``: a list of images and a list of targets (sizes may differ)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
