"""``DatadietCallback``: any ``datadiet.strategies`` strategy inside PyTorch Lightning's
``Trainer.fit`` — one-shot and every-R-epochs selections swap what the training sampler draws,
per-sample weights go into the loss, per-batch strategies (Selective-Backprop, AdaSelection) mask
each batch, and the strategy's state rides in Lightning's checkpoints.

The LightningModule takes its data from the callback and its loss through it::

    callback = DatadietCallback(make("gradmatch", fraction=0.3, every=5), train_set, labels,
                                num_classes=10, batch_size=64)

    class Model(L.LightningModule):
        def train_dataloader(self):
            return callback.train_dataloader()        # draws the current selection

        def training_step(self, batch, batch_idx):
            x, y, i, w = callback.batch(batch)        # batch mask and weights
            losses = F.cross_entropy(self(x), y, reduction="none")
            return callback.loss(losses, i, w)        # Σ w ℓ / Σ w, losses reported to the strategy

    L.Trainer(max_epochs=20, callbacks=[callback], use_distributed_sampler=False).fit(Model())

``train_set`` yields ``(x, y)``; ``labels`` holds its ``[N]`` class labels. The selection is
made at every epoch start (``on_train_epoch_start``) from the strategy's regime, so an epoch's
length follows the selection. Strategies plan by ``trainer.max_epochs``: set it (Lightning's
default, 1000 when neither ``max_epochs`` nor ``max_steps`` is given, is what they would plan
for). Lightning sizes ``estimated_stepping_batches`` from the first (full) epoch's loader; a
step-based lr schedule should take ``callback.driver.planned_steps()`` instead. Under DDP the
callback's sampler shards the selection itself: pass ``use_distributed_sampler=False``
(refused otherwise); the checkpoint holds every rank's strategy state. The callback's
``state_dict`` (the selection, its weights, the strategy's state and the position in the epoch)
resumes a run exactly from a checkpoint taken at an epoch end or inside an epoch.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from datadiet.strategies.base import Strategy, check_strategy
from datadiet.train.driver import Driver

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback


class DatadietCallback(Callback):
    def __init__(self, strategy: Strategy, train_set, labels: torch.Tensor, *, num_classes: int, batch_size: int = 64,
                 seed: int = 0, lr: float = 0.1, workers: int = 0, val_set=None, score_set=None,
                 head: Optional[str] = None, score_batch_size: int = 256) -> None:
        """``strategy``: e.g. ``datadiet.strategies.make("gradmatch", fraction=0.3, every=5)``;
        ``val_set``: a held-out split strategies may score (GradMatch's validation target);
        ``score_set``: the training samples with evaluation transforms; ``head``: the path of the
        final linear layer when it cannot be found; ``lr``: what the strategy is told (GLISTER's
        one-step update)."""
        super().__init__()
        self.strategy = check_strategy("DatadietCallback", strategy)  # at construction, not at fit's setup
        self.train_set, self.labels = train_set, labels
        self._options = dict(num_classes=num_classes, batch_size=batch_size, seed=seed, lr=lr, workers=workers,
                             val_set=val_set, score_set=score_set, head=head, score_batch_size=score_batch_size)
        self.driver: Optional[Driver] = None
        self._pending: Optional[dict] = None

    # -- Lightning hooks -------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.driver is not None:
            return
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(f"DatadietCallback: Trainer(max_epochs=...) must be set (>= 1), got {epochs}: "
                             "strategies plan their selections over the run's epochs")
        if trainer.world_size > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError("DatadietCallback: pass Trainer(use_distributed_sampler=False); the callback's sampler "
                             "already gives each rank its shard of the selection")
        self.driver = Driver(self.strategy, pl_module, self.train_set, self.labels, epochs=epochs,
                             device=trainer.strategy.root_device, **self._options)
        if self.driver.epochs != epochs:  # an equal-budget baseline trains fewer epochs than Lightning would
            raise ValueError(f"DatadietCallback: strategy {self.strategy.name!r} trains {self.driver.epochs} of the "
                             f"{epochs} epochs: pass Trainer(max_epochs={self.driver.epochs})")
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._driver().begin_epoch(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.driver is None else self.driver.checkpoint_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.driver is None:
            self._pending = state_dict  # restored before setup: applied when the driver exists
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        drv = self._driver()
        drv.load_checkpoint_state(state)
        drv.resume_mid_epoch()  # Lightning restarts a stopped epoch without on_train_epoch_start

    # -- what the LightningModule calls ----------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """The training loader: ``(x, y, index)`` batches drawn from the current selection."""
        return self._driver().loader()

    def batch(self, batch) -> tuple:
        """``(x, y, indices, weights)`` of a training batch, on the device, after the strategy's batch
        mask (``weights`` None when every weight is 1)."""
        x, y, i = batch
        return self._driver().prepare(x, y, i)

    def loss(self, losses: torch.Tensor, indices: torch.Tensor, weights: Optional[torch.Tensor],
             correct: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The batch loss ``Σ w ℓ / Σ w`` from per-sample ``losses``; reports them (and ``correct``,
        for strategies counting correct classifications) to a strategy that observes training."""
        return self._driver().loss(losses, indices, weights, correct)

    def _driver(self) -> Driver:
        if self.driver is None:
            raise RuntimeError("DatadietCallback: not set up yet — pass it in Trainer(callbacks=[...]) and call "
                               "train_dataloader / batch / loss from inside Trainer.fit")
        return self.driver
