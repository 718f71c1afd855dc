"""GLISTER against a direct simulation with a real nn.Linear and autograd: each step's gains are
⟨per-sample gradient, validation gradient⟩ and the validation gradient is re-evaluated after one
SGD step on the picked samples' summed gradient."""

import math

import pytest
import torch
from torch import nn

import datadiet
from datadiet.select import glister


def setup(n=120, v=40, classes=5, features=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(features, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, features, generator=g))
        layer.bias.copy_(torch.randn(classes, generator=g))
    h, hv = torch.randn(n, features, generator=g), torch.randn(v, features, generator=g)
    y, yv = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (v,), generator=g)
    return layer, h, y, hv, yv


def simulate(layer, h, y, hv, yv, k, eta):
    """Naive greedy GLISTER with autograd, materialising every per-sample gradient."""
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    per_sample = []
    for i in range(h.shape[0]):
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        nn.functional.cross_entropy(h[i:i + 1] @ w.T + b, y[i:i + 1]).backward()
        per_sample.append(torch.cat([w.grad.reshape(-1), b.grad]))
    grads = torch.stack(per_sample).double()
    w, b, picks = w0.clone(), b0.clone(), []
    for _ in range(k):
        wv, bv = w.clone().requires_grad_(), b.clone().requires_grad_()
        nn.functional.cross_entropy(hv @ wv.T + bv, yv, reduction="sum").backward()
        g_val = torch.cat([wv.grad.reshape(-1), bv.grad]).double()
        gains = grads @ g_val
        gains[picks] = -float("inf")
        j = int(gains.argmax())
        picks.append(j)
        step = grads[j].float()
        w = w - eta * step[: w.numel()].reshape(w.shape)
        b = b - eta * step[w.numel():]
    return picks


@pytest.mark.parametrize("eta", [0.0, 0.05, 0.5])
def test_naive_greedy_matches_an_autograd_simulation(eta):
    layer, h, y, hv, yv = setup(seed=int(eta * 100))
    with torch.no_grad():
        e = datadiet.ce_scores(layer(h), y, return_embedding=True).embedding
        zv = layer(hv)
    got = glister(e, h, zv, yv, hv, budget=15, eta=eta, variant="naive")
    assert got.indices.tolist() == simulate(layer, h, y, hv, yv, 15, eta)
    assert torch.equal(got.weights, torch.ones(15))


def test_stochastic_greedy_is_seeded_and_scores_fewer_candidates():
    layer, h, y, hv, yv = setup(n=300, seed=3)
    with torch.no_grad():
        e = datadiet.ce_scores(layer(h), y, return_embedding=True).embedding
        zv = layer(hv)
    a = glister(e, h, zv, yv, hv, fraction=0.1, eta=0.1, seed=1)
    b = glister(e, h, zv, yv, hv, fraction=0.1, eta=0.1, seed=1)
    c = glister(e, h, zv, yv, hv, fraction=0.1, eta=0.1, seed=2)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert a.indices.numel() == 30 == len(set(a.indices.tolist()))
    naive = glister(e, h, zv, yv, hv, fraction=0.1, eta=0.1, variant="naive")
    assert float(naive.gains[0]) >= float(a.gains[0])  # naive sees every candidate
    assert math.ceil(300 / 30 * math.log(100)) < 300


@pytest.mark.parametrize("kwargs, pattern", [
    ({"budget": 0}, r"budget must be an int in \[1, 120\], got 0"),
    ({"fraction": 0.1, "variant": "lazy"}, "variant must be one of"),
    ({}, "pass exactly one of fraction and budget"),
])
def test_bad_arguments(kwargs, pattern):
    layer, h, y, hv, yv = setup()
    with torch.no_grad():
        e = datadiet.ce_scores(layer(h), y, return_embedding=True).embedding
        zv = layer(hv)
    with pytest.raises(ValueError, match=pattern):
        glister(e, h, zv, yv, hv, **kwargs)
    with pytest.raises(ValueError, match=r"need val_logits \[V, 5\]"):
        glister(e, h, zv[:, :3], yv, hv, budget=3)


def _trained_like(n=6000, v=600, c=10, d=24, seed=0):
    """A classification layer some way from the truth: errors, features and held-out logits."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(d, c, generator=g)
    h, hv = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    y = (h @ truth + 2 * torch.randn(n, c, generator=g)).argmax(1)
    yv = (hv @ truth + 2 * torch.randn(v, c, generator=g)).argmax(1)
    w0 = truth + 1.5 * torch.randn(d, c, generator=g)
    return (h @ w0).softmax(1) - nn.functional.one_hot(y, c), h, hv @ w0, yv, hv


def held_out_loss(e, h, zv, yv, hv, picks, eta):
    """The objective GLISTER climbs: the held-out loss after the picks' one-step updates."""
    ht, hvt = (torch.cat([t, torch.ones(t.shape[0], 1)], 1) for t in (h, hv))
    return float(nn.functional.cross_entropy(zv - eta * (hvt @ (ht[picks].T @ e[picks])), yv))


@pytest.mark.parametrize("variant", ["naive", "stochastic"])
def test_refreshing_every_b_picks_keeps_the_objective_of_the_exact_greedy(variant):
    e, h, zv, yv, hv = _trained_like()
    k, eta = 600, 0.002
    exact = glister(e, h, zv, yv, hv, budget=k, eta=eta, variant=variant, seed=1, refresh=1)
    f_exact = held_out_loss(e, h, zv, yv, hv, exact.indices, eta)
    f_random = held_out_loss(e, h, zv, yv, hv, torch.randperm(6000, generator=torch.Generator().manual_seed(0))[:k],
                             eta)
    for refresh in (7, 75, None):  # None: ceil(600 / 64) = 10
        got = glister(e, h, zv, yv, hv, budget=k, eta=eta, variant=variant, seed=1, refresh=refresh)
        assert got.indices.unique().numel() == k and got.gains.shape == (k,)
        f = held_out_loss(e, h, zv, yv, hv, got.indices, eta)
        assert f <= f_exact * 1.01 and f < f_random, (refresh, f, f_exact, f_random)


def test_refresh_one_is_the_per_pick_greedy_and_bad_refresh_is_refused():
    layer, h, y, hv, yv = setup()
    e = (layer(h).softmax(1) - nn.functional.one_hot(y, 5)).detach()
    zv = layer(hv).detach()
    a = glister(e, h, zv, yv, hv, budget=15, eta=0.05, variant="naive")  # k <= 64: the default is 1
    b = glister(e, h, zv, yv, hv, budget=15, eta=0.05, variant="naive", refresh=1)
    assert torch.equal(a.indices, b.indices) and a.indices.tolist() == simulate(layer, h, y, hv, yv, 15, 0.05)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="refresh must be an int >= 1"):
            glister(e, h, zv, yv, hv, budget=15, refresh=bad)


def reference_rounds(e, h, zv, yv, hv, k, eta, b):
    """Naive greedy refreshed every b picks, written plainly: per round the b largest gains at the
    round's validation gradient, then the b one-step updates applied one after another."""
    ht, hvt = (torch.cat([t, torch.ones(t.shape[0], 1)], 1).double() for t in (h, hv))
    e, z, picks = e.double(), zv.double().clone(), []
    onehot = nn.functional.one_hot(yv, zv.shape[1]).double()
    while len(picks) < k:
        g_val = (z.softmax(1) - onehot).T @ hvt
        gains = ((e @ g_val) * ht).sum(1)
        gains[picks] = -float("inf")
        round_ = torch.topk(gains, min(b, k - len(picks))).indices.tolist()
        for j in round_:
            z = z - eta * torch.outer(hvt @ ht[j], e[j])
        picks += round_
    return picks


@pytest.mark.parametrize("b", [2, 3, 7])
def test_rounds_of_b_picks_match_a_plain_reference(b):
    e, h, zv, yv, hv = _trained_like(n=300, v=60, c=5, d=6, seed=2)
    got = glister(e, h, zv, yv, hv, budget=20, eta=0.5, variant="naive", refresh=b)
    assert got.indices.tolist() == reference_rounds(e, h, zv, yv, hv, 20, 0.5, b)


def test_validation_gradient_in_blocks_and_shard_checks(monkeypatch):
    """The validation gradient summed block by block equals the one product (up to rounding), the
    greedy with blocks of 7 rows picks what it picks with one block here; a shard whose validation
    rows are not whole blocks is refused."""
    import importlib

    module = importlib.import_module("datadiet.select.glister")
    layer, h, y, hv, yv = setup(v=40)
    with torch.no_grad():
        z, zv = layer(h), layer(hv)
    e = z.softmax(1) - nn.functional.one_hot(y, 5).float()
    whole = glister(e, h, zv, yv, hv, budget=12, eta=0.1, variant="naive", refresh=1)
    monkeypatch.setattr(module, "VAL_BLOCK", 7)
    hvt = torch.cat([hv, torch.ones(40, 1)], 1)
    residual = zv.softmax(1) - nn.functional.one_hot(yv, 5).float()
    torch.testing.assert_close(module._ValBlocks(hvt, None).gradient(residual), residual.T @ hvt)
    blocked = glister(e, h, zv, yv, hv, budget=12, eta=0.1, variant="naive", refresh=1)
    assert torch.equal(blocked.indices, whole.indices)
    assert module.val_block_owner(torch.arange(15), 2).tolist() == [0] * 7 + [1] * 7 + [0]
    half = module.Shard(torch.arange(120), 120, torch.arange(3), 40, lambda t, op: None)
    with pytest.raises(ValueError, match="whole blocks of 7"):
        glister(e, h, zv[:3], yv[:3], hv[:3], budget=12, shard=half)
