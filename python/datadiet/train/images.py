"""The image files of ``imagefolder:PATH``, read as 8-bit RGB, and the faults of a folder named.

Reading (``read_rgb``): 16-bit grey (PIL modes ``I;16*`` and ``I``, e.g. 16-bit PNGs) is scaled
to 8 bits (the top byte; PIL's own conversion clips every value above 255, so such images came
out white); images with transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent
colour) are composited over white (the page most such images were drawn for); any other mode
goes through PIL's conversion. A file that cannot be opened or decoded to its end (corrupt,
truncated, empty, unreadable) raises ``SampleError`` when the loop fetches it, naming the split,
the index, the class and the file.

Folders (``ImageFiles``): a split with no class folder, or a class folder with no image file, is
refused when the dataset is loaded, by name.

``unreadable(dataset, workers)`` decodes every file once (``--skip-bad-samples``) and lists those
that fail, so a run can leave them out of every pass instead of stopping at the first.
"""

from __future__ import annotations

import collections
import copy
import functools
import os
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from datadiet._dist import world
from datadiet.train.datasets import SampleError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WHITE = (255, 255, 255, 255)


def read_rgb(path: str, draft: Optional[int] = None) -> Image.Image:
    """The image in ``path`` as 8-bit RGB, decoded completely (a truncated file fails here, not
    half-way through a transform). ``draft``: a JPEG is decoded at the smallest of 1/1, 1/2, 1/4,
    1/8 scale whose sides are still at least ``draft`` pixels (PIL's draft mode: the decoder skips
    the detail, so a scoring pass at a reduced size decodes faster); other formats are unaffected."""
    with Image.open(path) as image:
        if draft is not None and image.format == "JPEG":
            image.draft("RGB", (draft, draft))
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.int64)
        # 32-bit "I" also holds 8-bit-range greys (some TIFFs): only values beyond 255 are 16-bit.
        eight = values >> 8 if image.mode != "I" or values.max(initial=0) > 255 else values
        return Image.fromarray(eight.clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


class ImageFiles(ImageFolder):
    """``ROOT/split/<class>/<image>`` as torchvision's ImageFolder reads it (same classes, samples
    and order), through ``read_rgb``, a file that cannot be read a ``SampleError``."""

    def __init__(self, root: str, split: str, spec: str, transform):
        folder = os.path.join(root, split)
        with os.scandir(folder) as entries:
            has_class = any(entry.is_dir() for entry in entries)
        if not has_class:
            raise ValueError(f"dataset {spec}: {split} is empty: {folder} holds no class folder (<class>/<image>)")
        super().__init__(folder, transform=transform, loader=read_rgb, allow_empty=True)
        self.spec, self.split = spec, split
        counts = collections.Counter(self.targets)
        for label, name in enumerate(self.classes):
            if not counts[label]:
                raise ValueError(f"dataset {spec}: class folder {os.path.join(folder, name)} holds no image (files "
                                 f"ending {', '.join(IMG_EXTENSIONS)})")

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as exc:  # PIL raises OSError, SyntaxError, EOFError, struct.error... on a broken file
            raise self.unreadable(index, exc) from exc
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def unreadable(self, index: int, exc: Exception) -> SampleError:
        path, label = self.samples[index]
        where = os.path.relpath(path, self.root)
        return SampleError(f"dataset {self.spec}: {self.split} sample {index} (class {self.classes[label]!r}, {where}) "
                           f"cannot be read: {str(exc) or type(exc).__name__}", path=path, index=index, label=label)


def scoring_view(dataset: ImageFiles, size: int, transforms, normalize) -> ImageFiles:
    """The same files for a scoring pass at ``size`` pixels: Resize(size·8/7) + CenterCrop(size),
    JPEGs decoded in draft mode at that scale."""
    view = copy.copy(dataset)
    resize = round(size * 8 / 7)
    view.transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size),
                                         transforms.ToTensor(), normalize])
    view.loader = functools.partial(read_rgb, draft=resize)
    return view


class _Probe(Dataset):
    """``probe[i]``: None when sample i decodes, else the record of why it does not."""

    def __init__(self, dataset: ImageFiles):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            read_rgb(self.dataset.samples[index][0])
            return None
        except Exception as exc:
            error = self.dataset.unreadable(index, exc)
            return {"split": self.dataset.split, "index": index, "path": error.path, "error": str(error)}


def unreadable(dataset: ImageFiles, workers: int = 0) -> list[dict]:
    """Every sample of ``dataset`` that cannot be read, as ``{split, index, path, error}``, from
    one decoding pass over its files on ``workers`` loader processes; under torchrun each rank
    decodes its share (``rank::world``) and the lists are gathered."""
    size, rank = world()
    shard = Subset(_Probe(dataset), range(rank, len(dataset), size))
    loader = DataLoader(shard, batch_size=64, num_workers=workers, collate_fn=list)
    found = [record for batch in loader for record in batch if record is not None]
    if size > 1:
        parts = [None] * size
        torch.distributed.all_gather_object(parts, found)
        found = sorted((r for part in parts for r in part), key=lambda r: r["index"])
    return found
