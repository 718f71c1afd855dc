"""Shared by the framework-integration tests: the reference Trainer's data split, model and
optimiser rebuilt outside it, and a strategy whose selections are logged."""

import torch
from torch.utils.data import Subset

from datadiet import strategies
from datadiet.train import datasets, models
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import pool_split

EPOCHS = 4


def recording(strategy):
    """Wraps ``strategy.select`` to log every selection it makes: (epoch, indices, weights)."""
    log, select = [], strategy.select

    def recorded(epoch):
        s = select(epoch)
        if s is not None:
            log.append((epoch, s.indices.clone(), None if s.weights is None else s.weights.clone()))
        return s

    strategy.select = recorded
    return log


def setup_run(strategy_name, **params):
    cfg = TrainConfig(epochs=EPOCHS, schedule="constant", batch_size=64).validate()
    bundle = datasets.load(cfg.dataset, cfg.image_size)
    pool, held = pool_split(len(bundle.train), cfg.val_fraction)
    data = dict(train_set=Subset(bundle.train, pool.tolist()), labels=bundle.labels[pool],
                val_set=Subset(bundle.train_eval, held.tolist()), score_set=Subset(bundle.train_eval, pool.tolist()))
    torch.manual_seed(cfg.seed)
    net = models.build(cfg.model, bundle.num_classes, bundle.input_shape, cfg.width)
    return cfg, bundle, data, net, strategies.make(strategy_name, **params)


def sgd(cfg, params):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)
