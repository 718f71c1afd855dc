"""A datadiet strategy in a Hugging Face ``accelerate`` loop: ``accelerated_driver`` builds the
``Driver`` on the accelerator's device and precision and registers it for
``accelerator.save_state`` / ``load_state``, so a resumed run continues the same selections::

    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    driver = accelerated_driver(accelerator, make("selective_backprop", keep=0.3), model, train_set,
                                labels, num_classes=10, epochs=10)
    # accelerator.load_state(folder) here to resume a run
    for epoch in range(driver.next_epoch, driver.epochs):
        for x, y, i, w in driver.batches(epoch):      # selection at the epoch start, batch masks
            with accelerator.autocast():
                losses = F.cross_entropy(model(x), y, reduction="none")
            accelerator.backward(driver.loss(losses, i, w))
            optimizer.step()
            optimizer.zero_grad()
        accelerator.save_state(folder)                # the driver's state goes with it

The training data goes through the driver, not ``accelerator.prepare``: its sampler already
gives each process its shard of the selection (a prepared loader would shard it again). The
model may be the prepared (DDP-wrapped) one; scoring passes unwrap it. The saved state holds
every process's strategy state (gathered when saving, each process restores its own); a state
saved at an epoch end resumes exactly (``driver.next_epoch`` is where to continue), one saved
inside an epoch restarts that epoch.
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

    precision = str(getattr(accelerator, "mixed_precision", "no"))
    if precision in _AUTOCAST:
        options.setdefault("autocast_dtype", getattr(torch, _AUTOCAST[precision]))
    driver = Driver(strategy, model, train_set, labels, num_classes=num_classes, epochs=epochs,
                    device=accelerator.device, **options)
    accelerator.register_for_checkpointing(_Checkpointed(driver))
    return driver


class _Checkpointed:
    """The driver as accelerate checkpoints it: every process's strategy state in the one file
    the main process writes."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def state_dict(self) -> dict[str, Any]:
        return self.driver.checkpoint_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.driver.load_checkpoint_state(state)
