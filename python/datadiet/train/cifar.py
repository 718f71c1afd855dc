"""CIFAR-10's python batches (``cifar-10-batches-py``) read without executing code.

The batches are pickles, and ``pickle.load`` runs whatever callable a file names: a crafted
``data_batch_1`` would run code the moment ``--dataset cifar10:PATH`` is loaded. They are read
here by an unpickler that can rebuild numpy arrays of plain numbers or strings and nothing else
(lists, dicts, strings and numbers need no callable); any other global a file names, any object
or structured dtype, and any state restored onto anything but those arrays is refused before it
takes effect, with the file named. Python 2 pickles (the official files) are read with
``encoding="latin1"``, as torchvision reads them; keys may be strings or bytes.

The result is ``CIFAR10Batches``, the dataset torchvision's ``CIFAR10`` would give: ``data`` uint8
``[N, 32, 32, 3]``, ``targets`` (ints), ``classes``, samples ``(transform(PIL image), target)``.
"""

from __future__ import annotations

import codecs
import os
import pickle

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

FOLDER = "cifar-10-batches-py"
TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST = ("test_batch",)
META = "batches.meta"

try:  # numpy >= 2 pickles name numpy._core, numpy 1 (and the official files) numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to store bytes (numpy's raw data); no other
    codec (some decompress or rewrite their input)."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


# Plain numbers and strings only. An object dtype (or a structured one, which may hold objects)
# would let the file's bytes stand for Python object pointers: a crafted file could then crash
# the interpreter or corrupt its memory without calling any forbidden global.
_PLAIN_KINDS = "biufcSU"


def _plain(dtype) -> np.dtype:
    """``dtype`` if it is a plain numeric or string dtype exactly as numpy itself would build it
    (its flags included: a pickle's dtype state can set them), else refused."""
    d = np.dtype(dtype)
    if d.kind not in _PLAIN_KINDS or d.fields is not None or d.subdtype is not None \
            or d.flags != np.dtype(d.str).flags:
        raise _Refused(f"an array of dtype {d.str!r} (only plain numbers and strings are allowed)")
    return d


def _dtype(*args) -> np.dtype:
    return _plain(np.dtype(*args))


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise _Refused(f"an array of type {getattr(subtype, '__name__', subtype)!r}")
    return _multiarray._reconstruct(np.ndarray, shape, _plain(dtype))


def _scalar(dtype, *data):
    return _multiarray.scalar(_plain(dtype), *data)


def _frombuffer(buffer, dtype, shape, order):
    return _numeric._frombuffer(buffer, _plain(dtype), shape, order)


# Everything a pickled ndarray, dtype or numpy scalar calls, under both numpy package names, each checked.
_NUMPY = {("multiarray", "_reconstruct"): _reconstruct, ("multiarray", "scalar"): _scalar,
          ("numeric", "_frombuffer"): _frombuffer}
_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _dtype, ("_codecs", "encode"): _latin1,
            **{(f"{core}.{module}", name): callable_ for core in ("numpy.core", "numpy._core")
               for (module, name), callable_ in _NUMPY.items()}}


class _Refused(pickle.UnpicklingError):
    """A global outside ``_ALLOWED`` or a dtype that is not plain: the message says what."""


class _ArraysOnly(pickle._Unpickler):  # the Python unpickler: its BUILD step can be checked
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def load_build(self) -> None:
        """BUILD (``__setstate__``) only on the dtypes and arrays the allowed calls made, and only
        to a plain dtype: a dtype's state can rewrite its flags, an array's can swap its dtype."""
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, np.dtype):
            super().load_build()
            _plain(target)
        elif type(target) is np.ndarray and isinstance(state, tuple) and len(state) == 5:
            _plain(state[2])
            super().load_build()
        else:
            raise _Refused(f"restoring the state of a {type(target).__name__}")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def unpickle(path: str, spec: str):
    """The object pickled in ``path``; a file that names any other callable, or is no pickle, is a
    ValueError naming it."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except _Refused as exc:
        raise ValueError(f"dataset {spec}: {name} refers to {exc}; refusing to load it (only numpy arrays, lists, "
                         "dicts, strings and numbers are allowed)") from None
    except Exception as exc:  # truncated or not a pickle: EOFError, UnpicklingError, a numpy error...
        raise ValueError(f"dataset {spec}: {name} cannot be read as a pickled batch "
                         f"({type(exc).__name__}: {exc})") from exc


def _field(entry, keys: tuple, name: str, spec: str):
    """``entry[key]`` for the first of ``keys`` present, as a string (a Python 2 pickle read as
    latin1) or bytes (one re-pickled after reading with ``encoding='bytes'``)."""
    if isinstance(entry, dict):
        for key in keys:
            for candidate in (key, key.encode()):
                if candidate in entry:
                    return entry[candidate]
    raise ValueError(f"dataset {spec}: {name} is not a CIFAR batch (a dict with {' or '.join(map(repr, keys))}), got "
                     + (f"keys {sorted(map(str, entry))}" if isinstance(entry, dict) else type(entry).__name__))


def read_classes(root: str, spec: str) -> list[str]:
    names = _field(unpickle(os.path.join(root, FOLDER, META), spec), ("label_names",), META, spec)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"dataset {spec}: {META}: label_names must be a list of strings, got {type(names).__name__}")
    if len(names) < 2:
        raise ValueError(f"dataset {spec}: {META} names {len(names)} class(es); classification needs at least 2")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_batch(root: str, name: str, spec: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """(images uint8 ``[N, 32, 32, 3]``, labels) of one batch file, its shapes and labels checked."""
    entry = unpickle(os.path.join(root, FOLDER, name), spec)
    data = _field(entry, ("data",), name, spec)
    labels = _field(entry, ("labels", "fine_labels"), name, spec)  # CIFAR-100's name too, as torchvision reads
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
        got = f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"dataset {spec}: {name}: data must be a uint8 array of N × 3072 values (N images "
                         f"3 × 32 × 32), got {got}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(images):
        raise ValueError(f"dataset {spec}: {name}: {len(images)} images but "
                         + (f"{len(labels)} labels" if isinstance(labels, (list, np.ndarray))
                            else f"labels of type {type(labels).__name__}"))
    for i, label in enumerate(labels):
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) \
                or not 0 <= label < num_classes:
            found = int(label) if isinstance(label, (int, np.integer)) else repr(label)
            raise ValueError(f"dataset {spec}: {name}: labels must be ints in [0, {num_classes}) (batches.meta names "
                             f"{num_classes} classes), found {found} (image {i})")
    return images, [int(label) for label in labels]


class CIFAR10Batches(Dataset):
    """Images as torchvision's ``CIFAR10`` gives them: a PIL RGB image through ``transform``, and
    the int target."""

    def __init__(self, data: np.ndarray, targets: list[int], classes: list[str], transform=None):
        self.data, self.targets, self.classes, self.transform = data, targets, classes, transform
        self.class_to_idx = {name: i for i, name in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return (image if self.transform is None else self.transform(image)), self.targets[index]


def load_split(root: str, names: tuple, classes: list[str], spec: str, transform) -> CIFAR10Batches:
    parts = [read_batch(root, name, spec, len(classes)) for name in names]
    return CIFAR10Batches(np.concatenate([images for images, _ in parts]),
                          [label for _, labels in parts for label in labels], classes, transform)


def missing_files(root: str) -> list[str]:
    folder = os.path.join(root, FOLDER)
    return [name for name in TRAIN + TEST + (META,) if not os.path.isfile(os.path.join(folder, name))]
