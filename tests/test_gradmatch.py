"""datadiet.select.gradmatch: per-class / per-batch / global modes on dense and factorised
gradients, validation targets, budgets, the random fill and its report, errors."""

import math

import pytest
import torch

import datadiet
from datadiet.ops import STOP_REASONS
from datadiet.select import gradmatch
from select_helpers import last_layer_case


def data(n=600, classes=4, features=6, seed=0):
    return last_layer_case(n, classes, features, seed)


def full(e, h):
    ht = torch.cat([h, torch.ones(h.shape[0], 1)], 1)
    return (e.unsqueeze(2) * ht.unsqueeze(1)).reshape(e.shape[0], -1)


def test_per_class_budgets_and_class_purity():
    e, _, labels = data()
    sel = gradmatch(e, labels=labels, fraction=0.1)
    counts = torch.bincount(labels).tolist()
    budgets = [math.ceil(60 * c / 600) for c in counts]
    assert sel.found.tolist() == [min(b, f) for b, f in zip(budgets, sel.found.tolist())]
    assert sel.indices.numel() == max(60, int(sel.found.sum())) and sel.filled == max(0, 60 - int(sel.found.sum()))
    assert len(set(sel.indices.tolist())) == sel.indices.numel()
    picked = sel.indices[: int(sel.found.sum())]
    per_class = torch.bincount(labels[picked], minlength=4).tolist()
    assert per_class == sel.found.tolist()  # class c's picks come from class c, in class order
    assert bool((sel.weights >= 0).all()) and bool((sel.residual < 1).all())


def test_per_class_matches_separate_omp_calls():
    e, _, labels = data(seed=1)
    sel = gradmatch(e, labels=labels, budget=40, lam=0.5)
    pos = 0
    for c in range(4):
        members = (labels == c).nonzero().squeeze(1)
        k = math.ceil(40 * members.numel() / 600)
        res = datadiet.ops.omp(e[members], e[members].sum(0), k, lam=0.5)
        got = res.indices[res.indices >= 0]
        assert sel.indices[pos:pos + got.numel()].tolist() == members[got].tolist()
        pos += got.numel()


def test_factorised_equals_materialised_per_class():
    e, h, labels = data(n=300, seed=2)
    a = gradmatch(errors=e, features=h, labels=labels, fraction=0.1)
    b = gradmatch(full(e, h), labels=labels, fraction=0.1)
    assert a.found.tolist() == b.found.tolist()
    assert a.indices[: int(a.found.sum())].tolist() == b.indices[: int(b.found.sum())].tolist()
    torch.testing.assert_close(a.residual, b.residual, rtol=1e-2, atol=1e-3)


def test_validation_target_changes_the_selection():
    e, h, labels = data(n=400, seed=3)
    ev, hv, lv = data(n=100, seed=4)
    own = gradmatch(errors=e, features=h, labels=labels, fraction=0.1)
    val = gradmatch(errors=e, features=h, labels=labels, fraction=0.1, val_errors=ev, val_features=hv, val_labels=lv)
    dense = gradmatch(full(e, h), labels=labels, fraction=0.1, val_embedding=full(ev, hv), val_labels=lv)
    assert val.indices[: int(val.found.sum())].tolist() == dense.indices[: int(dense.found.sum())].tolist()
    assert own.indices.tolist() != val.indices.tolist()


def test_per_batch_gives_whole_batches_their_weight():
    e, _, _ = data(n=320, seed=5)
    sel = gradmatch(e, mode="per_batch", batch_size=32, fraction=0.25, lam=0.0)
    found = int(sel.found[0])
    assert found == 64 and sel.indices.numel() == 80 and sel.filled == 16  # 80 // 32 = 2 whole batches
    assert sel.fill_reasons == {"batch_remainder": 16}
    for b in range(0, found, 32):
        block = sel.indices[b:b + 32]
        assert block.tolist() == list(range(int(block[0]), int(block[0]) + 32)) and int(block[0]) % 32 == 0
        assert len(set(sel.weights[b:b + 32].tolist())) == 1


def test_global_mode_and_fill_report():
    e, _, _ = data(n=200, seed=6)
    sel = gradmatch(e, mode="global", fraction=0.5, tol=0.2)  # the tolerance stops OMP early
    assert sel.filled == 100 - int(sel.found[0]) > 0
    assert sel.indices.numel() == 100 and len(set(sel.indices.tolist())) == 100
    assert bool((sel.weights[-sel.filled:] == 1).all())
    assert float(sel.residual[0]) <= 0.2 + 1e-4
    again = gradmatch(e, mode="global", fraction=0.5, tol=0.2)
    assert torch.equal(again.indices, sel.indices)  # the fill is seeded
    assert sel.fill_reasons == {"tolerance": 1, "rejected": 0, "dropped": 0}


def test_per_batch_past_the_rank_stops_and_says_why():
    # Bias-only gradients p − onehot of 4 classes span 3 dimensions: a per-batch OMP with λ = 0
    # (CORDS' per-batch default) and a budget of 30 batches runs out of admissible batches.
    e, _, _ = data(n=600, seed=8)
    sel = gradmatch(e, mode="per_batch", batch_size=10, fraction=0.5, lam=0.0, positive=False)
    batches = int(sel.found[0]) // 10
    assert 3 <= batches < 30 and sel.filled == 300 - 10 * batches
    reason = STOP_REASONS[int(sel.stop[0])]
    assert reason in ("no_correlation", "rank") and sel.fill_reasons[reason] == 1
    assert sel.fill_reasons["rejected"] == int(sel.rejected[0])
    assert int(sel.iterations[0]) == batches + int(sel.rejected[0])  # no NNLS: every pick admitted or rejected
    full = gradmatch(e, labels=torch.arange(600) % 4, fraction=0.1)  # within budget: nothing to explain
    assert full.filled == 0 and full.fill_reasons == {} and full.stop.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("kwargs, pattern", [
    ({}, "pass exactly one of fraction and budget"),
    ({"fraction": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
    ({"budget": 1000}, r"budget must be an int in \[1, 600\], got 1000"),
    ({"fraction": 0.1, "mode": "per_sample"}, "mode must be one of"),
    ({"fraction": 0.1, "labels": None}, r"per_class needs integer labels of shape \[600\]"),
])
def test_bad_arguments(kwargs, pattern):
    e, _, labels = data()
    kwargs = {"labels": labels} | kwargs
    with pytest.raises(ValueError, match=pattern):
        gradmatch(e, **kwargs)


def test_the_validation_target_must_come_in_the_training_gradients_form():
    e, h, labels = data()
    with pytest.raises(ValueError, match="must be val_embedding"):
        gradmatch(e, labels=labels, fraction=0.1, val_errors=e[:50], val_labels=labels[:50])
    with pytest.raises(ValueError, match="must be val_embedding"):
        gradmatch(e, labels=labels, fraction=0.1, mode="global", val_features=h[:50])
    with pytest.raises(ValueError, match="must be both val_errors and val_features"):
        gradmatch(errors=e, features=h, labels=labels, fraction=0.1, val_embedding=e[:50], val_labels=labels[:50])
    with pytest.raises(ValueError, match="must be both val_errors and val_features"):
        gradmatch(errors=e, features=h, fraction=0.1, mode="global", val_errors=e[:50])


def test_needs_one_gradient_form():
    e, h, labels = data()
    with pytest.raises(ValueError, match="pass embedding, or errors and features"):
        gradmatch(e, errors=e, features=h, labels=labels, fraction=0.1)
    with pytest.raises(ValueError, match="per_batch needs a dense embedding"):
        gradmatch(errors=e, features=h, mode="per_batch", fraction=0.1)
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        gradmatch(e, labels=torch.where(labels == 2, 3, labels), fraction=0.1)


def test_last_layer_embeddings_are_the_autograd_gradients():
    from datadiet.select import last_layer_embedding

    g = torch.Generator().manual_seed(7)
    layer = torch.nn.Linear(5, 3)
    h, y = torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g)
    with torch.no_grad():
        e = datadiet.ce_scores(layer(h), y, return_embedding=True).embedding
    full_emb = last_layer_embedding(e, h, kind="full")
    per_class = last_layer_embedding(e, h, y, kind="per_class")
    for i in range(6):
        layer.zero_grad()
        torch.nn.functional.cross_entropy(layer(h[i:i + 1]), y[i:i + 1]).backward()
        grad_w, grad_b = layer.weight.grad, layer.bias.grad  # [3, 5], [3]
        want_full = torch.cat([grad_w, grad_b.unsqueeze(1)], 1).reshape(-1)
        torch.testing.assert_close(full_emb[i], want_full, rtol=1e-5, atol=1e-6)
        c = int(y[i])
        torch.testing.assert_close(per_class[i], torch.cat([grad_b[c:c + 1], grad_w[c]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last_layer_embedding(e), e)
    with pytest.raises(ValueError, match="kind='per_class' needs labels"):
        last_layer_embedding(e, h, kind="per_class")
