"""``datadiet.integrations.accelerate.accelerated_driver`` in a Hugging Face accelerate loop on
CPU (embedded digits, the small MLP): an every-R-epochs subset and a loss-based per-batch
strategy train exactly as the plain Driver loop does, and ``accelerator.save_state`` /
``load_state`` resume the selection where it was."""

import pytest
import torch
import torch.nn.functional as F

from datadiet.train.driver import Driver
from integration_helpers import EPOCHS, setup_run, sgd

accelerate = pytest.importorskip("accelerate")

from datadiet.integrations.accelerate import accelerated_driver  # noqa: E402

CASES = [("random_online", dict(fraction=0.3, every=2)), ("selective_backprop", dict(rule="jiang", keep=0.4))]


def _train(driver, model, optimizer, epochs, backward, start=0):
    trained = 0
    for epoch in range(start, epochs):
        for x, y, i, w in driver.batches(epoch):
            losses = F.cross_entropy(model(x), y, reduction="none")
            backward(driver.loss(losses, i, w))
            optimizer.step()
            optimizer.zero_grad()
            trained += i.numel()
    return trained


def _accelerated(name, params, epochs=EPOCHS):
    cfg, bundle, data, net, strategy = setup_run(name, **params)
    accelerator = accelerate.Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(net, sgd(cfg, net.parameters()))
    driver = accelerated_driver(accelerator, strategy, model, data["train_set"], data["labels"],
                                num_classes=bundle.num_classes, epochs=EPOCHS, batch_size=cfg.batch_size,
                                seed=cfg.seed)
    return accelerator, net, model, optimizer, driver, data


@pytest.mark.parametrize("name,params", CASES)
def test_accelerate_loop_trains_as_the_plain_driver_loop(name, params):
    accelerator, net, model, optimizer, driver, data = _accelerated(name, params)
    trained = _train(driver, model, optimizer, EPOCHS, accelerator.backward)
    cfg, bundle, data, plain, strategy = setup_run(name, **params)
    reference = Driver(strategy, plain, data["train_set"], data["labels"], num_classes=bundle.num_classes,
                       epochs=EPOCHS, batch_size=cfg.batch_size, seed=cfg.seed)
    trained_ref = _train(reference, plain, sgd(cfg, plain.parameters()), EPOCHS, lambda loss: loss.backward())
    assert trained == trained_ref < EPOCHS * len(data["train_set"])
    for p, q in zip(net.parameters(), plain.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name,params,stop", [(*CASES[1], 2), (*CASES[0], 3)], ids=["sb", "subset"])
def test_accelerate_save_state_and_load_state_resume_the_selection(tmp_path, name, params, stop):
    """Saved at the end of epoch ``stop`` (for the subset: inside a 2-epoch selection) and resumed
    from ``driver.next_epoch``: the parameters of the run never stopped."""
    accelerator, net, model, optimizer, driver, _ = _accelerated(name, params)
    _train(driver, model, optimizer, EPOCHS, accelerator.backward)
    full = [p.detach().clone() for p in net.parameters()]

    accelerator, net, model, optimizer, driver, _ = _accelerated(name, params)
    _train(driver, model, optimizer, stop, accelerator.backward)
    accelerator.save_state(str(tmp_path / "state"))
    accelerator, net, model, optimizer, driver, _ = _accelerated(name, params)
    assert driver.next_epoch == 0
    accelerator.load_state(str(tmp_path / "state"))
    assert driver.next_epoch == stop
    _train(driver, model, optimizer, EPOCHS, accelerator.backward, start=driver.next_epoch)
    for p, q in zip(net.parameters(), full):
        assert torch.equal(p, q)


def test_accelerated_driver_refuses_a_strategy_name():
    accelerator = accelerate.Accelerator(cpu=True)
    with pytest.raises(TypeError, match="must be a datadiet.strategies.Strategy"):
        accelerated_driver(accelerator, "gradmatch", torch.nn.Linear(2, 2), [], torch.zeros(0), num_classes=2,
                           epochs=1)
