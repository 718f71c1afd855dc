"""``datadiet.integrations.lightning.DatadietCallback`` inside PyTorch Lightning on CPU (embedded
digits, the small MLP): its GradMatch selections equal the reference Trainer's for the same
seed, a per-batch strategy masks batches, and a run resumed from a Lightning checkpoint (taken
at an epoch end or inside an epoch) ends where an uninterrupted one does."""

import copy

import pytest
import torch
import torch.nn.functional as F

from datadiet import strategies
from datadiet.train.trainer import Trainer
from integration_helpers import EPOCHS, sgd, recording, setup_run

L = pytest.importorskip("lightning")

from datadiet.integrations.lightning import DatadietCallback  # noqa: E402

class _Module(L.LightningModule):
    def __init__(self, net, cfg, callback):
        super().__init__()
        self.net, self.cfg, self.callback = net, cfg, callback
        self.trained = 0  # samples the loss was taken over

    def forward(self, x):
        return self.net(x)

    def train_dataloader(self):
        return self.callback.train_dataloader()

    def training_step(self, batch, batch_idx):
        x, y, i, w = self.callback.batch(batch)
        self.trained += i.numel()
        logits = self(x)
        return self.callback.loss(F.cross_entropy(logits, y, reduction="none"), i, w, logits.argmax(1) == y)

    def configure_optimizers(self):
        return sgd(self.cfg, self.parameters())


class _StopAfter(L.Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _lightning(cfg, bundle, data, net, strategy, *, extra=(), ckpt_path=None, root=None):
    callback = DatadietCallback(strategy, data["train_set"], data["labels"], num_classes=bundle.num_classes,
                                batch_size=cfg.batch_size, seed=cfg.seed, lr=cfg.lr, val_set=data["val_set"],
                                score_set=data["score_set"], score_batch_size=cfg.eval_batch_size)
    module = _Module(net, cfg, callback)
    from lightning.pytorch.callbacks import ModelCheckpoint

    trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[callback, *extra], accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in extra),
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module, callback


def test_lightning_gradmatch_selections_equal_the_reference_trainers():
    cfg, bundle, data, net, strategy = setup_run("gradmatch", fraction=0.3, every=2)
    ours = recording(strategy)
    _lightning(cfg, bundle, data, net, strategy)
    reference_strategy = strategies.make("gradmatch", fraction=0.3, every=2)
    theirs = recording(reference_strategy)
    trainer = Trainer(cfg, reference_strategy, data=bundle)
    trainer.fit()
    assert [e for e, _, _ in ours] == [e for e, _, _ in theirs] == [0, 2]
    for (_, i_ours, w_ours), (_, i_ref, w_ref) in zip(ours, theirs):
        assert torch.equal(i_ours, i_ref)
        assert torch.equal(w_ours, w_ref)
    for p, q in zip(net.parameters(), trainer.model.parameters()):
        assert torch.equal(p, q)


def _same_state(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


RESUMES = [("selective_backprop", dict(rule="jiang", keep=0.5), 2),  # epoch end, per-batch state
           ("random_online", dict(fraction=0.3, every=2), 3),            # epoch end, inside a selection
           ("random_online", dict(fraction=0.3, every=2), None)]         # inside epoch 1 (7 steps each)


@pytest.mark.parametrize("name,params,stop", RESUMES, ids=["sb-epoch-end", "subset-epoch-end", "subset-mid-epoch"])
def test_lightning_resume_from_a_checkpoint_ends_as_the_run_never_stopped(tmp_path, name, params, stop):
    """A run stopped at an epoch end and resumed from its Lightning checkpoint — or resumed from
    a checkpoint ModelCheckpoint took inside an epoch — ends with the parameters and strategy
    state of the run never stopped."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    mid = ModelCheckpoint(dirpath=tmp_path, filename="mid-{step}", every_n_train_steps=9, save_top_k=-1)
    cfg, bundle, data, net, strategy = setup_run(name, **params)
    _, module, callback = _lightning(cfg, bundle, data, net, strategy, extra=[mid] if stop is None else [])
    if name == "selective_backprop":  # batches were masked: fewer samples trained than drawn
        assert 0 < module.trained < 0.8 * EPOCHS * len(data["train_set"])
    full = {k: v.clone() for k, v in net.state_dict().items()}
    full_state = copy.deepcopy(callback.state_dict())

    if stop is None:
        path = tmp_path / "mid-step=9.ckpt"  # saved after step 9: 2 of epoch 1's 7 batches done
        assert torch.load(path, weights_only=False)["callbacks"]["DatadietCallback"]["batch"] == 2
    else:
        cfg, bundle, data, net, strategy = setup_run(name, **params)
        trainer, _, _ = _lightning(cfg, bundle, data, net, strategy, extra=[_StopAfter(stop)])
        assert trainer.current_epoch == stop
        path = tmp_path / "stopped.ckpt"
        trainer.save_checkpoint(path)
    cfg, bundle, data, net, strategy = setup_run(name, **params)
    torch.nn.init.zeros_(next(net.parameters()))  # the checkpoint, not the seed, must restore it
    _, _, callback = _lightning(cfg, bundle, data, net, strategy, ckpt_path=path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, full[k]), k
    resumed = callback.state_dict()
    assert _same_state(resumed["strategy_by_rank"], full_state["strategy_by_rank"])
    assert _same_state(resumed["sampler"], full_state["sampler"])


def test_lightning_refuses_what_it_cannot_run():
    cfg, bundle, data, net, strategy = setup_run("random_online", fraction=0.5)
    with pytest.raises(TypeError, match="must be a datadiet.strategies.Strategy"):
        DatadietCallback("gradmatch", data["train_set"], data["labels"], num_classes=10)
    callback = DatadietCallback(strategy, data["train_set"], data["labels"], num_classes=10)
    with pytest.raises(RuntimeError, match="not set up yet"):
        callback.train_dataloader()
    module = _Module(net, cfg, callback)
    trainer = L.Trainer(max_epochs=-1, max_steps=3, callbacks=[callback], accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"max_epochs=\.\.\.\) must be set"):
        trainer.fit(module)


def test_lightning_refuses_epochs_an_equal_budget_baseline_would_not_train():
    from datadiet import strategies

    cfg, bundle, data, net, _ = setup_run("random_online", fraction=0.5)
    callback = DatadietCallback(strategies.make("full", budget=0.5), data["train_set"], data["labels"],
                                num_classes=10)
    module = _Module(net, cfg, callback)
    trainer = L.Trainer(max_epochs=4, callbacks=[callback], accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"strategy 'full' trains 2 of the 4 epochs: pass Trainer\(max_epochs=2\)"):
        trainer.fit(module)
