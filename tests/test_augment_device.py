"""``--augment`` presets for image folders (and a user's ``module:callable``), refusals for other
datasets, and ``--device auto`` (CUDA when available) as every command's default."""

import sys

import pytest
import torch

from datadiet._dist import resolve
from datadiet.cli import main as cli
from datadiet.train.config import TrainConfig
from datadiet.train.datasets import AUGMENTS, load
from train_fixtures import image_folder, requires_torchvision


@requires_torchvision
@pytest.mark.parametrize("augment", [*AUGMENTS, "train_fixtures_augment:flip_only"])
def test_each_augment_preset_gives_training_tensors_of_the_image_size(tmp_path, monkeypatch, augment):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "train_fixtures_augment.py").write_text(
        "import torchvision.transforms as T\n\ndef flip_only(size):\n"
        "    return T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip()])\n")
    sys.modules.pop("train_fixtures_augment", None)
    image_folder(tmp_path / "imgs")
    bundle = load(f"imagefolder:{tmp_path / 'imgs'}", image_size=16, augment=augment)
    x, y = bundle.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    steps = [type(t).__name__ for t in bundle.train.transform.transforms]
    expected = {"imagenet": "RandomResizedCrop", "light": "RandomResizedCrop", "crop": "RandomCrop",
                "none": "CenterCrop", "randaugment": "RandAugment"}.get(augment, "Compose")
    assert expected in steps and steps[-2:] == ["ToTensor", "Normalize"]
    assert [type(t).__name__ for t in bundle.train_eval.transform.transforms][:2] == ["Resize", "CenterCrop"]
    if augment == "light":
        assert bundle.train.transform.transforms[0].scale == (0.35, 1.0)


@requires_torchvision
def test_imagefolder_default_is_imagenet_and_the_light_preset_trains(tmp_path):
    image_folder(tmp_path / "imgs")
    default = load(f"imagefolder:{tmp_path / 'imgs'}", image_size=16)
    assert default.train.transform.transforms[0].scale == (0.08, 1.0)
    assert cli(["train", "--dataset", f"imagefolder:{tmp_path / 'imgs'}", "--model", "cnn", "--image-size", "16",
                "--augment", "light", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--augment", "light"], "applies to imagefolder: datasets"),
    (["--augment", "heavy"], "must be one of imagenet, light, crop, none, randaugment or module:callable"),
    (["--device", "gpu"], "'auto' (CUDA when available)"),
])
def test_bad_augment_or_device_is_refused_in_one_line(tmp_path, capsys, argv, message):
    assert cli(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_device_auto_is_the_default_and_picks_cuda_when_available(monkeypatch):
    assert TrainConfig().device == "auto"
    assert resolve("cpu") == "cpu" and resolve("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("auto") == "cpu"
    from datadiet.train.trainer import Trainer

    assert Trainer(TrainConfig(epochs=1, progress=False)).device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("auto") == "cuda"
