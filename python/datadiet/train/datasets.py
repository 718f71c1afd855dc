"""Datasets by name, as a user would load them:

- ``diabetes``: scikit-learn's diabetes regression (442 patients, 10 standardised features, the
  disease progression standardised; a fixed 20% test split): ``task = "regression"``, one output,
  the squared error per sample;
- ``digits``: scikit-learn's handwritten digits (1,797 8×8 grey images, 10 classes; shipped inside
  the package, the embedded default), as ``[1, 8, 8]`` float tensors in [0, 1]; a fixed 20% test
  split; ``digits:xN`` repeats every training image N times (the copies with seeded pixel noise,
  σ = 0.1), a larger pool for timing and reproductions, the same test split;
- ``imagefolder:PATH``: the ImageNet layout ``PATH/train/<class>/...`` and ``PATH/val/<class>/...``
  as ``torchvision.datasets.ImageFolder`` lists it, every image read as 8-bit RGB (16-bit grey
  scaled, transparency over white: ``datadiet.train.images``), at ``image_size``: for training
  the ``augment`` preset — ``imagenet`` (default: RandomResizedCrop + horizontal flip), ``light``
  (the crop's scale from 0.35 instead of 0.08), ``crop`` (Resize(size·8/7) + RandomCrop + flip),
  ``none`` (the evaluation view), ``randaugment`` (imagenet + RandAugment) — or ``module:callable``;
  Resize(size·8/7) + CenterCrop for evaluation; ImageNet normalisation. A split without images, a class folder without images
  or a training split of one class is refused at load; a file that cannot be read raises
  ``SampleError`` (a ValueError naming the split, index, class and file) when it is fetched;
- ``features:PATH``: precomputed embeddings (CLIP / DINO features, a model's penultimate layer) in
  a ``.npz`` (read with ``allow_pickle=False``) or ``.pt`` file (read with ``weights_only=True``)
  holding ``features`` [n, D] (float) and ``labels`` [n] (int, 0..C−1), optionally ``ids`` [n]
  (strings: what ``datadiet select`` writes as each sample's id) and ``test_features`` /
  ``test_labels`` (the test split; without them the test split is empty and runs report no
  test accuracy). Every row of the file is a training sample, so selections index the file's
  rows. Use it with model ``linear`` (a softmax head);
- ``cifar10:PATH``: the ``cifar-10-batches-py`` folder in PATH (never downloaded), as
  torchvision's ``CIFAR10`` gives it, random crop with padding 4 + flip for training. The batches
  are pickles, read without executing code (``datadiet.train.cifar``: only numpy arrays, lists,
  dicts, strings and numbers are rebuilt; a file naming anything else is refused), their shapes
  and labels checked. The files' MD5s are not compared with the official archive's, so a
  re-packed or reduced copy in the same format loads too; a missing or malformed file is an
  error naming it.

- ``text:stdlib`` / ``text:stdlib:N``: byte-level language modelling on the Python standard
  library's source files, split by file (``datadiet.train.text``): ``task = "language"``, inputs
  and targets int64 ``[64]`` byte ids, a sample's loss the mean next-byte cross-entropy.

``load(spec, image_size=224)`` returns a ``DataBundle``: train and test datasets of
``(input, target)``, ``train_eval`` (the training samples with the evaluation transforms, for
scoring passes and held-out splits: no random augmentation there), the class count, the input
shape and the training labels (read from the dataset's ``targets`` without decoding images).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

NAMES = ("digits", "digits:xN", "diabetes", "imagefolder:PATH", "cifar10:PATH", "features:PATH", "text:stdlib",
         "text:stdlib:N")
TASKS = ("classification", "regression", "language")
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    train: Dataset
    train_eval: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple
    labels: torch.Tensor  # int64 [len(train)] (a regression: all 0, one group)
    normalization: Optional[tuple] = None  # (mean, std) per channel the transforms applied; None: inputs in [0, 1]
    task: str = "classification"
    skipped: list = field(default_factory=list)  # unreadable samples left out: {split, index, path, error}

    def require_test(self, what: str, spec: str) -> None:
        """Refuses a dataset without a test split (a features file without test arrays) for ``what``,
        which reports test accuracy."""
        if len(self.test) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{what} reports test accuracy; dataset {spec!r} has no test split (give the features "
                             "file test_features and test_labels)")

    def unusable_train(self) -> list[int]:
        """Training indices no pass may read (unreadable files left out by ``skip_bad``)."""
        return [r["index"] for r in self.skipped if r["split"] == "train"]


class SampleError(ValueError):
    """A sample whose file cannot be read, raised when the loop fetches it; the message names the
    dataset, split, index, class and file. ``path``, ``index`` and ``label`` (the class index) are
    None after the error crossed a DataLoader worker process: torch rebuilds it there from its
    message alone (``type(exc)(message)``, the worker's traceback text, whose last line is ours)."""

    def __init__(self, message: str, path: Optional[str] = None, index: Optional[int] = None,
                 label: Optional[int] = None):
        if message.startswith("Caught SampleError"):  # torch's re-raise: "Caught ... Original Traceback ..."
            last = message.rstrip().splitlines()[-1]
            message = last.split("SampleError: ", 1)[-1]
        super().__init__(message)
        self.path, self.index, self.label = path, index, label


def task_of(spec: str) -> str:
    """The task of dataset ``spec`` without loading it."""
    return "regression" if spec == "diabetes" else "language" if spec.startswith("text:") else "classification"


def require_classification(spec: str, what: str, task: Optional[str] = None) -> None:
    """Refuses a regression or language dataset: ``task`` of a loaded bundle, else the name's."""
    task = task or task_of(spec)
    if task != "classification":
        raise ValueError(f"{what} needs a classification dataset; dataset {spec!r} is a {task} task")


def per_sample_loss(task: str):
    """``loss(outputs, targets) -> [B]`` float32: cross-entropy, the squared error of one output,
    or (language) the mean next-token cross-entropy over each sequence (outputs [B, L, V])."""
    if task == "language":
        return lambda out, y: F.cross_entropy(out.float().transpose(1, 2), y, reduction="none").mean(1)
    if task == "regression":
        return lambda out, y: (out.float().reshape(len(y)) - y.float()) ** 2
    return lambda out, y: F.cross_entropy(out.float(), y, reduction="none")


AUGMENTS = ("imagenet", "light", "crop", "none", "randaugment")


def check_augment(augment: Optional[str], spec: str) -> None:
    """Refuses an ``augment`` that is no preset or ``module:callable``, or one given for a dataset
    other than an image folder (the others have fixed transforms)."""
    if augment is None:
        return
    module_name, sep, attr = augment.partition(":")
    if augment not in AUGMENTS and not (sep and module_name and attr):
        raise ValueError(f"config augment = {augment!r}: must be one of {', '.join(AUGMENTS)} or module:callable")
    if not spec.startswith("imagefolder:"):
        raise ValueError(f"config augment = {augment!r}: applies to imagefolder: datasets; {spec!r} has fixed "
                         "transforms")


def train_transform(augment: Optional[str], image_size: int, normalize):
    """The training transform of an image folder: a preset (module docstring) or ``module:callable``
    (called with the image size, returning a transform of PIL images; ToTensor and the
    normalisation are appended)."""
    import importlib

    transforms = torchvision("--augment").transforms
    s, resize = image_size, round(image_size * 8 / 7)
    steps = {
        "imagenet": lambda: [transforms.RandomResizedCrop(s), transforms.RandomHorizontalFlip()],
        "light": lambda: [transforms.RandomResizedCrop(s, scale=(0.35, 1.0)), transforms.RandomHorizontalFlip()],
        "crop": lambda: [transforms.Resize(resize), transforms.RandomCrop(s), transforms.RandomHorizontalFlip()],
        "none": lambda: [transforms.Resize(resize), transforms.CenterCrop(s)],
        "randaugment": lambda: [transforms.RandomResizedCrop(s), transforms.RandomHorizontalFlip(),
                                transforms.RandAugment()],
    }
    name = augment or "imagenet"
    if name in steps:
        head = steps[name]()
    else:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
            head = [factory(image_size)]
        except Exception as exc:  # noqa: BLE001 - a user's callable: one clear error
            raise ValueError(f"config augment = {name!r}: calling {attr}(image_size) from {module_name} failed "
                             f"({type(exc).__name__}: {exc})") from None
    return transforms.Compose([*head, transforms.ToTensor(), normalize])


def load(spec: str, image_size: int = 224, *, skip_bad: bool = False, workers: int = 0,
         augment: Optional[str] = None) -> DataBundle:
    """The dataset ``spec`` (module docstring). ``skip_bad``: an image folder's files are decoded
    once (on ``workers`` loader processes) and the unreadable ones listed in ``skipped``: left out
    of the test split here, and of the training pool by ``pool_split``'s callers. ``augment``: an
    image folder's training augmentation (``AUGMENTS`` or ``module:callable``; default
    ``imagenet``)."""
    check_augment(augment, spec)
    name, _, path = spec.partition(":")
    if name == "digits" and not path:
        return _digits()
    if spec == "diabetes":
        return _diabetes()
    if name == "digits" and path.startswith("x") and path[1:].isdigit() and int(path[1:]) >= 1:
        return _digits(int(path[1:]))
    if name == "features":
        return _features(spec, path)
    if name == "text":
        return _text(spec, path)
    if name in ("imagefolder", "cifar10"):
        if not path:
            raise ValueError(f"dataset {spec!r}: give a folder, {name}:PATH")
        if not os.path.isdir(path):
            raise ValueError(f"dataset {spec!r}: folder {path!r} does not exist")
        return _imagefolder(path, image_size, skip_bad, workers, augment) if name == "imagefolder" else _cifar10(path)
    raise ValueError(f"unknown dataset {spec!r}; choose one of {', '.join(NAMES)}")


def _text(spec: str, path: str) -> DataBundle:
    corpus, _, size = path.partition(":")
    if corpus != "stdlib":
        raise ValueError(f"unknown dataset {spec!r}; the text corpus is text:stdlib or text:stdlib:N (N training "
                         "bytes)")
    from datadiet.train import text

    if not size:
        return text.load_stdlib(spec)
    if not size.isdigit() or not text.CONTEXT + 1 <= int(size) <= 1 << 30:
        raise ValueError(f"dataset {spec!r}: N must be a whole number of training bytes in [{text.CONTEXT + 1}, "
                         f"{1 << 30}]")
    return text.load_stdlib(spec, int(size))


def torchvision(what: str):
    """torchvision, or a clear error: it may be absent, or built for another torch (its C ops then
    fail to register at import)."""
    try:
        import torchvision as tv
    except Exception as exc:
        raise ValueError(f"{what} needs torchvision, which cannot be imported here ({type(exc).__name__}: {exc}); "
                         "pip install 'datadiet[train]'") from exc
    return tv


def _digits(factor: int = 1) -> DataBundle:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    xt, yt = x[train], y[train]
    if factor > 1:  # every training image ``factor`` times, copies after the first with seeded pixel noise
        noise = 0.1 * torch.randn((factor - 1, *xt.shape), generator=torch.Generator().manual_seed(1))
        xt = torch.cat([xt, (xt.unsqueeze(0) + noise).clamp(0, 1).flatten(0, 1)])
        yt = yt.repeat(factor)
    train_set = TensorDataset(xt, yt)
    return DataBundle(train_set, train_set, TensorDataset(x[test], y[test]), 10, (1, 8, 8), yt)


def _diabetes() -> DataBundle:
    from sklearn.datasets import load_diabetes

    x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:len(y) // 5], perm[len(y) // 5:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    y = (y - y[train].mean()) / y[train].std()
    train_set = TensorDataset(x[train], y[train])
    return DataBundle(train_set, train_set, TensorDataset(x[test], y[test]), 1, (x.shape[1],),
                      torch.zeros(len(train), dtype=torch.int64), task="regression")


def _imagefolder(path: str, image_size: int, skip_bad: bool = False, workers: int = 0,
                 augment: Optional[str] = None) -> DataBundle:
    spec = f"imagefolder:{path}"
    tv = torchvision(f"dataset {spec}")
    from datadiet.train.images import ImageFiles, unreadable  # needs torchvision

    transforms = tv.transforms
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(path, split)):
            raise ValueError(f"dataset {spec}: needs {os.path.join(path, split)}/<class>/<image> (the ImageNet layout)")
    normalize = transforms.Normalize(_MEAN, _STD)
    train_tf = train_transform(augment, image_size, normalize)
    test_tf = transforms.Compose([transforms.Resize(round(image_size * 8 / 7)), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), normalize])
    train = ImageFiles(path, "train", spec, train_tf)
    if len(train.classes) < 2:
        raise ValueError(f"dataset {spec}: train has 1 class ({train.classes[0]!r}); classification needs at least 2")
    train_eval = _with_transform(train, test_tf)
    test = ImageFiles(path, "val", spec, test_tf)
    if train.classes != test.classes:
        raise ValueError(f"dataset {spec}: train and val hold different classes "
                         f"({len(train.classes)} vs {len(test.classes)})")
    skipped = unreadable(train, workers) + unreadable(test, workers) if skip_bad else []
    bad_test = {r["index"] for r in skipped if r["split"] == "val"}
    if bad_test:
        test = Subset(test, [i for i in range(len(test)) if i not in bad_test])
    return DataBundle(train, train_eval, test, len(train.classes), (3, image_size, image_size),
                      torch.tensor(train.targets, dtype=torch.int64), (_MEAN, _STD), skipped=skipped)


class FeatureRows(TensorDataset):
    """Rows of a features file: ``(features[i], labels[i])``; ``ids`` names each row."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, ids: Optional[list[str]] = None):
        super().__init__(features, labels)
        self.ids = ids


def _features(spec: str, path: str) -> DataBundle:
    if not path:
        raise ValueError(f"dataset {spec!r}: give a file, features:PATH (.npz or .pt)")
    if not os.path.isfile(path):
        raise ValueError(f"dataset {spec!r}: file {path!r} does not exist")
    arrays = _read_arrays(spec, path)

    def table(key: str, floating: bool, required: bool = True) -> Optional[torch.Tensor]:
        value = arrays.get(key)
        if value is None:
            if required:
                raise ValueError(f"dataset {spec!r}: needs an array {key!r} (found {', '.join(sorted(arrays)) or 'none'})")
            return None
        t = torch.as_tensor(value)
        if floating and not (t.is_floating_point() and t.dim() == 2 and t.shape[0] > 0 and t.shape[1] > 0):
            raise ValueError(f"dataset {spec!r}: {key} must be a float array [n, D], got {t.dtype} {tuple(t.shape)}")
        if not floating and not (t.dim() == 1 and not t.is_floating_point() and t.dtype != torch.bool):
            raise ValueError(f"dataset {spec!r}: {key} must be an int array [n], got {t.dtype} {tuple(t.shape)}")
        return t.float() if floating else t.long()

    x, y = table("features", True), table("labels", False)
    tx, ty = table("test_features", True, False), table("test_labels", False, False)
    if (tx is None) != (ty is None):
        raise ValueError(f"dataset {spec!r}: give both test_features and test_labels, or neither")
    pairs = [("features", x, "labels", y)] + ([("test_features", tx, "test_labels", ty)] if tx is not None else [])
    for xk, xv, yk, yv in pairs:
        if xv.shape[0] != yv.shape[0]:
            raise ValueError(f"dataset {spec!r}: {xk} has {xv.shape[0]} rows, {yk} {yv.shape[0]}")
        for start in range(0, xv.shape[0], 1 << 14):  # in blocks: isfinite's temporaries are x-sized
            bad = (~torch.isfinite(xv[start:start + (1 << 14)])).nonzero()
            if bad.numel():
                raise ValueError(f"dataset {spec!r}: {xk} row {start + int(bad[0, 0])} is not finite")
    if tx is not None and tx.shape[1] != x.shape[1]:
        raise ValueError(f"dataset {spec!r}: test_features have {tx.shape[1]} columns, features {x.shape[1]}")
    classes = int(y.max()) + 1
    for key, labels in (("labels", y), ("test_labels", ty)):
        if labels is not None and labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < classes):
            raise ValueError(f"dataset {spec!r}: {key} must lie in 0..{classes - 1} (the training labels' classes), "
                             f"got {int(labels.min())}..{int(labels.max())}")
    if classes < 2:
        raise ValueError(f"dataset {spec!r}: labels hold 1 class; classification needs at least 2")
    ids = _ids(spec, arrays.get("ids"), x.shape[0])
    train = FeatureRows(x, y, ids)
    test = TensorDataset(tx, ty) if tx is not None else TensorDataset(x[:0], y[:0])
    return DataBundle(train, train, test, classes, (x.shape[1],), y)


def _ids(spec: str, ids, rows: int) -> Optional[list[str]]:
    """A features file's ``ids``: one string (or UTF-8 bytes) per row, or None."""
    if ids is None:
        return None
    values = ids.tolist() if hasattr(ids, "tolist") else ids
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, (str, bytes)) for v in values):
        raise ValueError(f"dataset {spec!r}: ids must be a 1-D array of strings, one per row")
    if len(values) != rows:
        raise ValueError(f"dataset {spec!r}: ids has {len(values)} entries, features {rows} rows")
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in values]


def _read_arrays(spec: str, path: str) -> dict:
    """The named arrays of a ``.npz`` (no pickled objects) or ``.pt`` (tensors only) file."""
    import numpy as np

    if path.endswith(".npz"):
        import zipfile

        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array under an .npz name
                raise ValueError("one array, not named arrays")
            with data:
                return {k: data[k] for k in data.files}
        except ValueError as exc:  # an object array needs pickle: refused
            raise ValueError(f"dataset {spec!r}: holds something other than named plain arrays ({exc})") from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"dataset {spec!r}: not a readable .npz file ({type(exc).__name__})") from None
    if path.endswith(".pt"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file: one clear error
            raise ValueError(f"dataset {spec!r}: not a file torch reads with weights_only=True "
                             f"({type(exc).__name__})") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise ValueError(f"dataset {spec!r}: must hold a dict of named tensors (features, labels, ...)")
        return data
    raise ValueError(f"dataset {spec!r}: a features file must end in .npz or .pt")


def scoring_view(bundle: DataBundle, spec: str, size: Optional[int]):
    """The samples scoring passes read: ``bundle.train_eval``, or with ``size`` an image folder's
    at that image size, for a faster pass (JPEGs decoded at reduced scale)."""
    if size is None:
        return bundle.train_eval
    if not spec.startswith("imagefolder:"):
        raise ValueError(f"--score-image-size applies to imagefolder: datasets; {spec!r} is not one")
    transforms = torchvision("--score-image-size").transforms
    from datadiet.train.images import scoring_view as view

    return view(bundle.train_eval, size, transforms, transforms.Normalize(*bundle.normalization))


def _with_transform(dataset, transform):
    """The same samples (no second folder scan or file read) seen through other transforms."""
    view = copy.copy(dataset)
    view.transform = transform
    if hasattr(dataset, "transforms"):  # a torchvision dataset keeps both, combined with target_transform
        view.transforms = type(dataset.transforms)(transform, dataset.target_transform)
    return view


def _cifar10(path: str) -> DataBundle:
    spec = f"cifar10:{path}"
    transforms = torchvision(f"dataset {spec}").transforms
    from datadiet.train import cifar  # needs PIL, which comes with torchvision

    missing = cifar.missing_files(path)
    if missing:
        raise ValueError(f"dataset {spec}: needs {os.path.join(path, cifar.FOLDER)} with data_batch_1..5, test_batch "
                         f"and batches.meta; missing {', '.join(missing)}")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    normalize = transforms.Normalize(mean, std)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    classes = cifar.read_classes(path, spec)
    train = cifar.load_split(path, cifar.TRAIN, classes, spec, train_tf)
    test = cifar.load_split(path, cifar.TEST, classes, spec, test_tf)
    return DataBundle(train, _with_transform(train, test_tf), test, len(classes), (3, 32, 32),
                      torch.tensor(train.targets, dtype=torch.int64), (mean, std))
