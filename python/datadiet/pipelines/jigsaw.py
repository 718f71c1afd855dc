"""The pieces of LiPT's local worker training (the LiPT study): a fixed set of tile permutations, images
cut into a ``grid × grid`` jigsaw and re-assembled in a permuted order (the self-supervised task:
predict which permutation of the set was applied), strong per-image RandAugment, and swapping a
model's classification layer for another head on the same features.

The permutation set follows Noroozi & Favaro (2016): all ``(grid²)!`` orders when ``count`` reaches
that many, otherwise a greedy maximal-Hamming-distance set (each next permutation the one
farthest, in minimum Hamming distance, from those chosen), started from a seeded random one, among
every order (up to 7 tiles) or a seeded pool of 100,000 random orders (a 3 × 3 grid: 9! orders).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Optional

import torch
from torch import nn

from datadiet._seeds import seeded_global_rng
from datadiet.scores.scoring import final_linear

_ENUMERATE = 5040  # up to this many orders (7 tiles) are enumerated; beyond, a seeded candidate pool
_POOL = 100_000


def permutation_set(grid: int, count: int, *, seed: int = 0) -> torch.Tensor:
    """``[count', grid²]`` int64 rows, each a permutation of ``range(grid²)``, all distinct;
    ``count' = min(count, (grid²)!)``. Row order is the class index of the jigsaw task."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"jigsaw: grid must be an int >= 2 (tiles per side), got {grid!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"jigsaw: permutations must be an int >= 2, got {count!r}")
    tiles = grid * grid
    total = math.factorial(tiles)
    g = torch.Generator().manual_seed(seed)
    if total <= _ENUMERATE:
        candidates = torch.tensor(list(itertools.permutations(range(tiles))), dtype=torch.int8)
        if count >= total:
            return candidates.long()
    else:  # random orders as argsorts of uniforms: one vectorised draw
        candidates = torch.unique(torch.rand(_POOL, tiles, generator=g).argsort(1).to(torch.int8), dim=0)
    first = int(torch.randint(len(candidates), (1,), generator=g))
    chosen = [first]
    distance = (candidates != candidates[first]).sum(1)
    for _ in range(min(count, len(candidates)) - 1):
        nxt = int(distance.argmax())  # the first of the farthest: deterministic
        chosen.append(nxt)
        distance = torch.minimum(distance, (candidates != candidates[nxt]).sum(1))
    return candidates[chosen].long()


def default_grid(input_shape: tuple) -> int:
    """3 × 3 tiles (Noroozi's jigsaw) for images of at least 24 pixels a side, else 2 × 2."""
    return 3 if min(input_shape[-2:]) >= 24 else 2


def shuffle_tiles(x: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, H, W] with its ``g × g`` tiles re-assembled so that output tile ``j`` (row-major)
    is input tile ``perms[b, j]``; ``g = sqrt(perms.shape[1])``. Pixels beyond the last whole tile
    (H or W not divisible by g) stay in place."""
    if x.dim() != 4:
        raise ValueError(f"jigsaw: images must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    grid = math.isqrt(perms.shape[1])
    if grid * grid != perms.shape[1] or perms.shape[0] != b:
        raise ValueError(f"jigsaw: perms must be [{b}, g²], got {tuple(perms.shape)}")
    th, tw = h // grid, w // grid
    if th == 0 or tw == 0:
        raise ValueError(f"jigsaw: {h}×{w} images cannot be cut into {grid}×{grid} tiles")
    tiles = x[:, :, :grid * th, :grid * tw].reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(b, grid * grid, c, th, tw)
    index = perms.to(x.device).long().view(b, -1, 1, 1, 1).expand(-1, -1, c, th, tw)
    moved = tiles.gather(1, index).view(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    out = x.clone()
    out[:, :, :grid * th, :grid * tw] = moved.reshape(b, c, grid * th, grid * tw)
    return out


def jigsaw(x: torch.Tensor, perm_set: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A jigsaw batch: each image's tiles permuted by a permutation drawn from ``perm_set`` with
    ``generator``; returns (inputs, permutation indices = targets)."""
    ids = torch.randint(len(perm_set), (x.shape[0],), generator=generator)
    return shuffle_tiles(x, perm_set[ids]), ids.to(x.device)


def randaugment(x: torch.Tensor, *, num_ops: int, magnitude: int, seed: int,
                normalization: Optional[tuple] = None) -> torch.Tensor:
    """torchvision.transforms.v2.RandAugment drawn per image (one call per image, so every image
    gets its own ops; one call on the batch would apply one op to all), from torchvision's pool of
    14 ops, seeded. Inputs are the dataset's tensors: normalised ones (``normalization`` = (mean,
    std)) are un-normalised to [0, 1] first; the ops run on uint8 images as on decoded files."""
    v2 = transforms_v2()
    if x.dim() != 4:
        raise ValueError(f"randaugment: images must be [B, C, H, W], got shape {tuple(x.shape)}")
    augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if normalization is not None:
        mean = torch.tensor(normalization[0], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(normalization[1], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x * std + mean
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    with seeded_global_rng(seed):  # v2 transforms draw from the global generator
        out = torch.stack([augment(img) for img in images]).to(x.dtype) / 255
    if normalization is not None:
        out = (out - mean) / std
    return out


def transforms_v2():
    """``torchvision.transforms.v2``, or a clear error naming what needs it."""
    from datadiet.train.datasets import torchvision

    torchvision("LiPT's per-image RandAugment (augment_ops > 0)")
    import torchvision.transforms.v2 as v2

    return v2


def head_path(model: nn.Module, head: Optional[str] = None) -> str:
    """The dotted name of the model's classification layer (``final_linear``)."""
    layer = final_linear(model, head)
    return next(name for name, m in model.named_modules() if m is layer)


def with_head(model: nn.Module, path: str, out_features: int, *, seed: int) -> nn.Module:
    """A copy of ``model`` whose layer at ``path`` (an ``nn.Linear``) is a fresh ``nn.Linear`` with
    the same inputs and ``out_features`` outputs, initialised from ``seed``."""
    old = model.get_submodule(path)
    with seeded_global_rng(seed):
        new = nn.Linear(old.in_features, out_features, bias=old.bias is not None)
    model = copy.deepcopy(model)
    model.set_submodule(path, new.to(old.weight.device, old.weight.dtype))
    return model
