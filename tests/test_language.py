"""The language task: ``text:stdlib`` (byte sequences of the standard library's sources, split by
file) and the ``transformer`` model, trained by the loop with the strategies that apply to it."""

import math
import os
import sysconfig

import pytest
import torch

from datadiet.train import datasets, models, text
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer


def test_the_corpus_is_split_by_file_and_cut_into_shifted_windows():
    files = text.stdlib_files()
    assert files == sorted(files) and "os.py" in files and not any(f.startswith("test/") for f in files)
    tested = [f for f in files if text.is_test_file(f)]
    assert 0.05 < len(tested) / len(files) < 0.15  # about 10% of the files, fixed by their paths
    bundle = datasets.load("text:stdlib:6500")
    assert bundle.task == "language" and bundle.num_classes == 256 and bundle.input_shape == (64,)
    assert len(bundle.train) == 6500 // 65 and len(bundle.test) == (6500 // 8) // 65
    x, y = bundle.train[3]
    assert x.dtype == torch.int64 and x.shape == (64,) and torch.equal(x[1:], y[:-1])
    first_file = next(f for f in files if not text.is_test_file(f))
    with open(os.path.join(sysconfig.get_paths()["stdlib"], first_file), "rb") as f:
        first = f.read()
    assert bytes(bundle.train.windows[0].tolist()) == first[:65]  # the first training file, from its start
    again = datasets.load("text:stdlib:6500")
    assert torch.equal(again.train.windows, bundle.train.windows) and torch.equal(again.test.windows,
                                                                                  bundle.test.windows)
    assert torch.equal(bundle.labels, torch.zeros(len(bundle.train), dtype=torch.int64))


@pytest.mark.parametrize("spec, match", [("text:stdlib:12", "N must be a whole number of training bytes"),
                                         ("text:stdlib:abc", "N must be a whole number"),
                                         ("text:wiki", "the text corpus is text:stdlib")])
def test_bad_text_specs_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        datasets.load(spec)


def test_the_transformer_is_causal_and_outputs_a_distribution_per_position():
    torch.manual_seed(0)
    model = models.build("transformer", 256, (16,))
    x = torch.randint(0, 256, (3, 16))
    out = model(x)
    assert out.shape == (3, 16, 256)
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 256
    later = model(changed)
    torch.testing.assert_close(out[:, :9], later[:, :9])  # positions before 9 never see it
    assert not torch.allclose(out[:, 9:], later[:, 9:])
    loss = datasets.per_sample_loss("language")(out, x)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss[1], torch.nn.functional.cross_entropy(out[1], x[1]))


@pytest.mark.parametrize("config, match", [
    (dict(dataset="text:stdlib:4096", model="mlp"), "config model = 'mlp': must be transformer"),
    (dict(dataset="digits", model="transformer"), "transformer is a language model"),
])
def test_models_that_do_not_fit_the_data_are_refused(config, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**config).validate()


@pytest.mark.parametrize("strategy, params", [("full", {}), ("adaselection", {"keep": 0.5}),
                                              ("selective_backprop", {"start": 0.0}), ("infobatch", {}),
                                              ("random_online", {"fraction": 0.5})])
def test_the_loop_trains_the_language_model_and_reports_perplexity(strategy, params, tmp_path):
    fraction = params.pop("fraction", None)
    config = TrainConfig(dataset="text:stdlib:8192", model="transformer", strategy=strategy, fraction=fraction,
                         strategy_params=params, epochs=2, batch_size=16, lr=0.01, optimizer="adamw",
                         val_fraction=0.0, progress=False, device="cpu", out=str(tmp_path))
    summary = Trainer(config).fit()
    assert summary["test_acc"] is None and math.isfinite(summary["test_loss"])
    assert summary["test_perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    assert 1 < summary["test_perplexity"] < 256  # below a uniform guess over bytes


def test_strategies_that_score_classes_are_refused_on_text():
    config = TrainConfig(dataset="text:stdlib:4096", model="transformer", strategy="el2n", fraction=0.5, every=1,
                         strategy_params={"pretrain_epochs": 0}, epochs=2, val_fraction=0.0, progress=False,
                         device="cpu")
    with pytest.raises(ValueError, match="this run is a language"):
        Trainer(config).fit()
