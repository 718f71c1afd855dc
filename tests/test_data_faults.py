"""Faults in users' data are named, and a dataset folder never runs code: CIFAR batches are read
by an unpickler that rebuilds numpy arrays only (a crafted batch is refused and provably runs
nothing), malformed batches are refused by file; ImageFolder files that cannot be read raise
``SampleError`` naming split, index, class and file (also through a DataLoader worker), 16-bit
and transparent images are converted without saturating, empty or one-class folders are refused;
Driver refuses labels outside [0, num_classes); stratified_select refuses a non-number fraction."""

import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from datadiet import strategies
from datadiet.ops.stratified_select import stratified_select
from datadiet.train import datasets
from datadiet.train.datasets import SampleError
from datadiet.train.driver import Driver
from tests.train_fixtures import cifar10, image_folder, requires_torchvision


# -- CIFAR ---------------------------------------------------------------------------------------
class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpensFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the official batches hold their keys, names
    and numpy's raw data: read back with encoding='latin1' they are ``str``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote CIFAR-10 (protocol 2, numpy.core globals)."""
    import io

    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")


def _official_like(root, per_batch=4):
    """A cifar-10-batches-py folder in the official files' form; returns the arrays written."""
    rng = np.random.default_rng(2)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(os.path.join(folder, name), "wb") as f:
            f.write(_py2_pickle({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}))
        written[name] = (data, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        f.write(_py2_pickle({b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                             b"label_names": [f"class{i}".encode() for i in range(10)]}))
    return str(root), written


def _replace(root, name, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(os.path.join(root, "cifar-10-batches-py", name), "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@requires_torchvision
def test_official_python2_batches_load_as_torchvision_reads_them(tmp_path):
    root, written = _official_like(tmp_path)
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_1"), "rb") as f:
        plain = pickle.load(f, encoding="latin1")  # torchvision's read, on a file we made
    assert isinstance(plain["data"], np.ndarray) and plain["batch_label"] == "data_batch_1"
    bundle = datasets.load(f"cifar10:{root}")
    assert bundle.train.classes == [f"class{i}" for i in range(10)] and bundle.num_classes == 10
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert bundle.train.data.dtype == np.uint8 and bundle.train.data.shape == (20, 32, 32, 3)
    assert np.array_equal(bundle.train.data, expected.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert bundle.train.targets == [v for i in range(1, 6) for v in written[f"data_batch_{i}"][1]]
    assert torch.equal(bundle.labels, torch.tensor(bundle.train.targets))
    x, y = bundle.train_eval[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == bundle.train.targets[3]
    assert bundle.train[3][0].shape == (3, 32, 32) and len(bundle.test) == 4
    assert bundle.train.transform is not bundle.train_eval.transform


@requires_torchvision
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_pickled_by_python3_load_with_any_protocol(tmp_path, protocol):
    root = cifar10(tmp_path, per_batch=3)
    data = np.arange(3 * 3072, dtype=np.int64).astype(np.uint8).reshape(3, 3072)
    _replace(root, "data_batch_2", {b"data": data, b"labels": [np.int64(1), 2, 3]}, protocol)  # bytes keys
    _replace(root, "batches.meta", {"label_names": [f"n{i}" for i in range(10)]}, protocol)
    bundle = datasets.load(f"cifar10:{root}")
    assert np.array_equal(bundle.train.data[3:6], data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    assert bundle.train.targets[3:6] == [1, 2, 3] and all(type(t) is int for t in bundle.train.targets)


@requires_torchvision
@pytest.mark.parametrize("name", ["data_batch_1", "batches.meta", "test_batch"])
@pytest.mark.parametrize("payload, refused", [(_RunsCommand, "posix.system"), (_OpensFile, "io.open")])
def test_a_crafted_batch_is_refused_and_runs_nothing(tmp_path, name, payload, refused):
    root = cifar10(tmp_path / "data", per_batch=2)
    marker = tmp_path / "marker"
    _replace(root, name, {"data": payload(marker), "labels": [0]})
    with pytest.raises(ValueError, match=rf"dataset cifar10:{root}: {name} refers to {refused}; refusing to load "
                                         r"it \(only numpy arrays, lists, dicts, strings and numbers are allowed\)"):
        datasets.load(f"cifar10:{root}")
    assert not marker.exists()
    with open(os.path.join(root, "cifar-10-batches-py", name), "rb") as f:
        loaded = pickle.load(f, encoding="latin1")  # the same file through pickle.load: the payload runs
    getattr(loaded["data"], "close", lambda: None)()
    assert marker.exists()


def _object_dtype_payload(kind: str) -> bytes:
    """A batch naming only admitted globals that still forges objects: ``dtype('O8')`` whose BUILD
    state clears its flags (numpy then treats it as raw bytes), fed to ``scalar`` or to an array's
    state, so the file's bytes become object pointers."""
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    dtype = (glob("numpy", "dtype") + b"X\x02\x00\x00\x00O8\x89\x88\x87R"
             + b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    if kind == "scalar":
        body = glob("numpy._core.multiarray", "scalar") + dtype + b"C\x08AAAAAAAA\x86R"
    else:
        body = (glob("numpy._core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + b"K\x00\x85C\x01b\x87R"
                + b"(K\x01K\x01\x85" + dtype + b"\x89C\x08AAAAAAAAtb")
    return b"\x80\x02}(X\x04\x00\x00\x00data" + body + b"u."


@requires_torchvision
@pytest.mark.parametrize("kind", ["scalar", "array"])
def test_a_forged_object_dtype_is_refused_though_every_global_is_admitted(tmp_path, kind):
    import subprocess
    import sys

    root = cifar10(str(tmp_path))
    path = os.path.join(root, "cifar-10-batches-py", "batches.meta")
    with open(path, "wb") as f:
        f.write(_object_dtype_payload(kind))
    # The payload is real: plain pickle builds an object array of forged pointers and crashes on use.
    crashed = subprocess.run([sys.executable, "-c", f"import pickle; x = pickle.load(open({path!r}, 'rb'), "
                              "encoding='latin1')['data']; print(repr(list(x.ravel()) if hasattr(x, 'ravel') "
                              "else x))"], capture_output=True, timeout=120)
    assert crashed.returncode != 0
    with pytest.raises(ValueError, match="batches.meta refers to an array of dtype '\\|O'"):
        datasets.load(f"cifar10:{root}")


@requires_torchvision
def test_only_the_latin1_codec_is_admitted(tmp_path):
    root = cifar10(tmp_path, per_batch=2)
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_1"), "wb") as f:
        f.write(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00eJX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(ValueError, match="data_batch_1 refers to _codecs.encode with encoding 'zlib'"):
        datasets.load(f"cifar10:{root}")


@requires_torchvision
@pytest.mark.parametrize("name, entry, message", [
    ("data_batch_3", {"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]},
     r"data_batch_3: data must be a uint8 array of N × 3072 values .*got float32 of shape \(2, 3072\)"),
    ("data_batch_3", {"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, r"got uint8 of shape \(2, 3000\)"),
    ("data_batch_3", {"data": [1, 2], "labels": [0, 1]}, "data must be a uint8 array .*got list"),
    ("test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "test_batch: 2 images but 1 labels"),
    ("data_batch_1", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},
     r"data_batch_1: labels must be ints in \[0, 10\) \(batches.meta names 10 classes\), found 10 \(image 1\)"),
    ("data_batch_1", {"data": np.zeros((2, 3072), np.uint8), "labels": [-1, 0]}, r"found -1 \(image 0\)"),
    ("data_batch_1", {"data": np.zeros((2, 3072), np.uint8), "labels": ["a", 0]}, r"found 'a' \(image 0\)"),
    ("data_batch_1", {"pixels": 1}, r"data_batch_1 is not a CIFAR batch \(a dict with 'data'\), got keys \['pixels'\]"),
    ("data_batch_1", [1, 2], r"data_batch_1 is not a CIFAR batch \(a dict with 'data'\), got list"),
    ("batches.meta", {"label_names": ["only"]}, "batches.meta names 1 class"),
    ("batches.meta", {"label_names": "cat"}, "label_names must be a list of strings, got str"),
])
def test_malformed_batches_are_refused_by_file(tmp_path, name, entry, message):
    root = cifar10(tmp_path, per_batch=2)
    _replace(root, name, entry)
    with pytest.raises(ValueError, match=message):
        datasets.load(f"cifar10:{root}")


@requires_torchvision
def test_a_missing_or_broken_batch_file_is_named(tmp_path):
    root = cifar10(tmp_path, per_batch=2)
    os.remove(os.path.join(root, "cifar-10-batches-py", "data_batch_4"))
    with pytest.raises(ValueError, match="data_batch_1..5, test_batch and batches.meta; missing data_batch_4"):
        datasets.load(f"cifar10:{root}")
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_4"), "wb") as f:
        f.write(os.urandom(64))
    with pytest.raises(ValueError, match="data_batch_4 cannot be read as a pickled batch"):
        datasets.load(f"cifar10:{root}")


# -- ImageFolder ---------------------------------------------------------------------------------
def _png_bytes(tmp_path) -> bytes:
    from PIL import Image

    path = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _broken_folder(tmp_path, contents: bytes):
    root = image_folder(tmp_path / "data", classes=2, per_class=3)
    with open(os.path.join(root, "train", "class_1", "bad.png"), "wb") as f:
        f.write(contents)
    return root


@requires_torchvision
@pytest.mark.parametrize("fault, reason", [
    ("random", "cannot identify image file"), ("truncated", "image file is truncated"),
    ("empty", "cannot identify image file")])
def test_an_unreadable_image_is_a_sample_error_naming_file_and_class(tmp_path, fault, reason):
    png = _png_bytes(tmp_path)
    contents = {"random": np.random.default_rng(1).bytes(200), "truncated": png[:len(png) // 2], "empty": b""}[fault]
    root = _broken_folder(tmp_path, contents)
    bundle = datasets.load(f"imagefolder:{root}", image_size=16)  # loads: files are read when fetched
    index = [os.path.basename(p) for p, _ in bundle.train.samples].index("bad.png")
    for view in (bundle.train, bundle.train_eval):
        with pytest.raises(SampleError) as caught:
            view[index]
        message = str(caught.value)
        assert message.startswith(f"dataset imagefolder:{root}: train sample {index} (class 'class_1', "
                                  f"{os.path.join('class_1', 'bad.png')}) cannot be read: {reason}")
        assert "\n" not in message
        assert caught.value.path == os.path.join(root, "train", "class_1", "bad.png")
        assert caught.value.index == index and caught.value.label == 1
        assert isinstance(caught.value, ValueError)
    assert bundle.train[0][0].shape == (3, 16, 16)  # the others still read


@requires_torchvision
def test_a_file_that_cannot_be_opened_is_a_sample_error(tmp_path):
    root = image_folder(tmp_path / "data", classes=2, per_class=2)
    os.symlink(tmp_path / "nowhere.png", os.path.join(root, "val", "class_0", "gone.png"))
    bundle = datasets.load(f"imagefolder:{root}", image_size=16)
    index = [os.path.basename(p) for p, _ in bundle.test.samples].index("gone.png")
    with pytest.raises(SampleError, match=rf"val sample {index} \(class 'class_0', class_0/gone.png\) cannot be read: "
                                          r"\[Errno 2\] No such file"):
        bundle.test[index]


@requires_torchvision
def test_a_sample_error_keeps_its_message_through_a_loader_worker(tmp_path):
    root = _broken_folder(tmp_path, b"")
    bundle = datasets.load(f"imagefolder:{root}", image_size=16)
    loader = torch.utils.data.DataLoader(bundle.train_eval, batch_size=len(bundle.train), num_workers=1)
    with pytest.raises(SampleError, match=r"\(class 'class_1', class_1/bad.png\) cannot be read") as caught:
        next(iter(loader))
    assert caught.value.path is None  # rebuilt from the message in this process


@requires_torchvision
def test_sixteen_bit_grey_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    from datadiet.train.images import read_rgb

    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16).repeat(2, 0)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode.startswith("I")  # PIL keeps the 16 bits
    rgb = np.asarray(read_rgb(str(tmp_path / "grey16.png")))
    assert rgb.shape == (2, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb == rgb[..., :1]).all()
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "grey32.tif")  # mode "I"
    assert np.asarray(read_rgb(str(tmp_path / "grey32.tif")))[0, :, 1].tolist() == [0, 1, 128, 255]


@requires_torchvision
def test_transparent_images_are_composited_over_white(tmp_path):
    from PIL import Image

    from datadiet.train.images import read_rgb

    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent: the background
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black: mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = np.asarray(read_rgb(str(tmp_path / "rgba.png"))).astype(int)
    assert pixels[0, 0].tolist() == [200, 10, 10] and pixels[0, 1].tolist() == [255, 255, 255]
    assert (abs(pixels[0, 2] - 127) <= 1).all()
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)
    assert np.asarray(read_rgb(str(tmp_path / "palette.png"))).tolist() == [[[255, 255, 255], [10, 20, 30]]]
    Image.new("LA", (1, 1), (40, 255)).save(tmp_path / "la.png")
    assert np.asarray(read_rgb(str(tmp_path / "la.png"))).tolist() == [[[40, 40, 40]]]


@requires_torchvision
def test_empty_folders_and_one_class_are_refused_at_load(tmp_path):
    root = image_folder(tmp_path / "a", classes=2, per_class=2)
    os.makedirs(os.path.join(root, "train", "class_2"))
    with open(os.path.join(root, "train", "class_2", "notes.txt"), "w") as f:
        f.write("not an image")
    with pytest.raises(ValueError, match=rf"dataset imagefolder:{root}: class folder "
                                         rf"{os.path.join(root, 'train', 'class_2')} holds no image \(files ending "
                                         r"\.jpg, \.jpeg"):
        datasets.load(f"imagefolder:{root}")

    root = image_folder(tmp_path / "b", classes=1, per_class=2)
    with pytest.raises(ValueError, match=rf"dataset imagefolder:{root}: train has 1 class \('class_0'\); "
                                         "classification needs at least 2"):
        datasets.load(f"imagefolder:{root}")

    root = image_folder(tmp_path / "c", classes=2, per_class=2)
    for name in os.listdir(os.path.join(root, "val", "class_1")):
        os.remove(os.path.join(root, "val", "class_1", name))
    with pytest.raises(ValueError, match=f"class folder {os.path.join(root, 'val', 'class_1')} holds no image"):
        datasets.load(f"imagefolder:{root}")

    root = tmp_path / "d"
    image_folder(root, classes=2, per_class=2)
    for split in ("train", "val"):
        for folder in ("class_0", "class_1"):
            for name in os.listdir(root / split / folder):
                os.remove(root / split / folder / name)
            os.rmdir(root / split / folder)
        with pytest.raises(ValueError, match=rf"dataset imagefolder:{root}: {split} is empty: "
                                             rf"{os.path.join(root, split)} holds no class folder"):
            datasets.load(f"imagefolder:{root}")
        image_folder(root, classes=2, per_class=2)  # restores train for the val case


# -- labels and arguments --------------------------------------------------------------------------
@pytest.mark.parametrize("labels, num_classes, message", [
    (torch.tensor([0, 1, 2, 12, 4]), 10, r"Driver: labels must be in \[0, num_classes = 10\), found 12 \(sample 3\)"),
    (torch.tensor([0, -1, 2, 3, 4]), 10, r"found -1 \(sample 1\)"),
    (torch.tensor([0, 1, 0, 1, 2 ** 40]), 2, rf"found {2 ** 40} \(sample 4\)"),
    (torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0]), 2, "labels must be an integer tensor of class ids, got torch.float32"),
    (torch.zeros(5, dtype=torch.long), 0, "num_classes must be an int >= 1, got 0"),
])
def test_driver_refuses_labels_outside_the_classes(labels, num_classes, message):
    data = torch.utils.data.TensorDataset(torch.randn(5, 3), labels)
    with pytest.raises(ValueError, match=message):
        Driver(strategies.make("full"), nn.Linear(3, 2), data, labels, num_classes=num_classes, epochs=1)


def test_driver_takes_a_regression_with_one_group():
    data = torch.utils.data.TensorDataset(torch.randn(5, 3), torch.randn(5))
    driver = Driver(strategies.make("random", fraction=0.4), nn.Linear(3, 1), data, torch.zeros(5, dtype=torch.long),
                    num_classes=1, epochs=1, task="regression")
    assert sum(len(i) for _, _, i, _ in driver.batches(0)) == 2


@pytest.mark.parametrize("fraction", ["0.5", True, None])
def test_stratified_select_refuses_a_fraction_that_is_not_a_number(fraction):
    with pytest.raises(ValueError, match=rf"fraction must be in \(0, 1\], got {fraction!r}"):
        stratified_select(torch.randn(10), 2, fraction)
