"""Models by name: ``mlp`` and ``cnn`` (small, for the embedded dataset and tests), ``linear`` (a
softmax head on flat inputs, for ``features:`` datasets of precomputed embeddings), any torchvision
classification model (``resnet18``, ``resnet50``, ``mobilenet_v3_small``, ...; randomly
initialised with ``num_classes``), or ``module:callable`` (called with ``num_classes=`` and
``input_shape=``). The classification layer is found by ``datadiet.scores.final_linear``.
"""

from __future__ import annotations

import importlib
import math

from torch import nn

from datadiet.train.datasets import torchvision


def mlp(num_classes: int, input_shape: tuple, width: int = 128) -> nn.Module:
    d = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width // 2), nn.ReLU(),
                         nn.Linear(width // 2, num_classes))


def cnn(num_classes: int, input_shape: tuple, width: int = 32) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


class Transformer(nn.Module):
    """A small causal (GPT-style) transformer language model: token and position embeddings,
    ``layers`` pre-norm blocks of ``heads``-head self-attention over earlier positions only and a
    4× MLP, a final LayerNorm and the ``nn.Linear`` head to the vocabulary; ``[B, L]`` token ids
    in, ``[B, L, vocab]`` logits out. No dropout: a sample's loss is a function of the weights."""

    def __init__(self, vocab: int, context: int, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x):
        length = x.shape[1]
        h = self.tokens(x) + self.positions.weight[:length]
        h = self.blocks(h, mask=self.mask[:length, :length], is_causal=True)
        return self.head(self.norm(h))


def transformer(num_classes: int, input_shape: tuple, width: int = 64) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"model 'transformer' needs token sequences [L] (a text: dataset), got input shape "
                         f"{input_shape}")
    return Transformer(num_classes, input_shape[0], width)


def linear(num_classes: int, input_shape: tuple) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def check_name(name: str, option: str = "model") -> None:
    """Refuses a model name ``build`` cannot resolve, without building it or importing a
    ``module:callable`` (checked when built)."""
    if name in ("mlp", "cnn", "linear", "transformer"):
        return
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not module_name or not attr:
            raise ValueError(f"{option} {name!r}: expected module:callable")
        return
    tv = torchvision(f"unknown {option} {name!r}: not mlp, cnn, linear or module:callable, and a torchvision model")
    if name not in tv.models.list_models(module=tv.models):
        raise ValueError(f"unknown {option} {name!r}; use mlp, cnn, linear, a torchvision classification model "
                         "(resnet18, resnet50, ...) or module:callable")


def build(name: str, num_classes: int, input_shape: tuple, width: int = 0) -> nn.Module:
    if name == "linear":
        if width:
            raise ValueError(f"config width = {width}: model 'linear' is one layer, it has no width (drop --width)")
        return linear(num_classes, input_shape)
    if name == "transformer":
        return transformer(num_classes, input_shape, **({"width": width} if width else {}))
    if name in ("mlp", "cnn"):
        if len(input_shape) != 3 and name == "cnn":
            raise ValueError(f"model 'cnn' needs image inputs [C, H, W], got input shape {input_shape}")
        return (mlp if name == "mlp" else cnn)(num_classes, input_shape, **({"width": width} if width else {}))
    if ":" in name:
        module_name, _, attr = name.partition(":")
        check_name(name)
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, TypeError) as exc:  # TypeError: a relative name (".mod")
            raise ValueError(f"model {name!r}: cannot import {attr} from {module_name} ({exc})") from exc
        if not callable(factory):
            raise ValueError(f"model {name!r}: {module_name}.{attr} is a {type(factory).__name__}, not a callable")
        try:
            model = factory(num_classes=num_classes, input_shape=input_shape)
        except TypeError as exc:  # not a model factory: it takes other arguments
            raise ValueError(f"model {name!r}: calling it as {attr}(num_classes=..., input_shape=...) failed "
                             f"({exc})") from exc
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {name!r}: the callable returned {type(model).__name__}, not an nn.Module")
        return model
    check_name(name)
    tv = torchvision(f"model {name!r}")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(f"model {name!r}: torchvision classification models expect 3-channel images; the dataset "
                         f"has {input_shape[0] if len(input_shape) == 3 else input_shape} (use mlp or cnn)")
    return tv.models.get_model(name, weights=None, num_classes=num_classes)
