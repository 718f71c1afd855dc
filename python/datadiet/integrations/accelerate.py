"""A datadiet strategy in a Hugging Face ``accelerate`` loop: ``accelerated_driver`` builds the
``Driver`` on the accelerator's device and precision and registers it for
``accelerator.save_state`` / ``load_state``, so a resumed run continues the same selections::

    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    driver = accelerated_driver(accelerator, make("selective_backprop", keep=0.3), model, train_set,
                                labels, num_classes=10, epochs=10)
    for epoch in range(start_epoch, 10):
        for x, y, i, w in driver.batches(epoch):      # selection at the epoch start, batch masks
            with accelerator.autocast():
                losses = F.cross_entropy(model(x), y, reduction="none")
            accelerator.backward(driver.loss(losses, i, w))
            optimizer.step()
            optimizer.zero_grad()

The training data goes through the driver, not ``accelerator.prepare``: its sampler already
gives each process its shard of the selection (a prepared loader would shard it again). The
model may be the prepared (DDP-wrapped) one; scoring passes unwrap it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from datadiet.strategies.base import Strategy
from datadiet.train.driver import Driver

_AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}


def accelerated_driver(accelerator: Any, strategy: Strategy, model: nn.Module, train_set, labels, *, num_classes: int,
                       epochs: int, **options: Any) -> Driver:
    """A ``Driver`` (``datadiet.train.driver``; ``options`` as its keyword arguments) on
    ``accelerator.device``, scoring under the accelerator's mixed precision, registered with
    ``accelerator.register_for_checkpointing``."""
    import torch

    if not isinstance(strategy, Strategy):
        raise TypeError(f"accelerated_driver: strategy must be a datadiet.strategies.Strategy, got "
                        f"{type(strategy).__name__} (make one with datadiet.strategies.make(name, ...))")
    precision = str(getattr(accelerator, "mixed_precision", "no"))
    if precision in _AUTOCAST:
        options.setdefault("autocast_dtype", getattr(torch, _AUTOCAST[precision]))
    driver = Driver(strategy, model, train_set, labels, num_classes=num_classes, epochs=epochs,
                    device=accelerator.device, **options)
    accelerator.register_for_checkpointing(driver)
    return driver
