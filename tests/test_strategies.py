"""Every strategy's contract through the one interface (sizes, per-class budgets, weights,
seeds, the regimes' timing), the ranking rule against a sort, forgetting against a plain-Python
count, and bad parameters refused by name."""

import math

import pytest
import torch

from datadiet import strategies
from datadiet.scores import ForgettingCounter, ScoreTable
from datadiet.ops.ce_scores import ce_scores
from datadiet.strategies.base import Context
from datadiet.strategies.static import rank_select

N, C, D = 240, 4, 6


def _table(n, seed, logits=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, C, generator=g) * 2
    y = torch.arange(n) % C
    h = torch.randn(n, D, generator=g)
    s = ce_scores(z, y, h, return_embedding=True)
    return ScoreTable(s.loss, s.el2n, s.grad_norm, s.confidence, s.margin, s.entropy, s.correct, y, s.embedding, h,
                      z if logits else None)


def context(seed=0, epochs=10, n=N, has_val=True, calls=None):
    def score(split="train", features=False, errors=False, logits=False):
        if calls is not None:
            calls.append(split)
        return _table(n if split == "train" else 40, 1 if split == "train" else 2, logits)

    return Context(n=n, labels=torch.arange(n) % C, num_classes=C, epochs=epochs, seed=seed, batch_size=16, lr=0.1,
                   score=score, proxy_scores=lambda epochs, init: _table(n, 10 + init), has_val=has_val)


REQUIRED = {"strata": {"stratum": 1}}  # refused without one


def _make(name, seed=0, **params):
    allowed = strategies.parameters(name)
    params = {**REQUIRED.get(name, {}), **params}
    if "fraction" in allowed:
        params.setdefault("fraction", 0.25)
    s = strategies.make(name, **params)
    s.setup(context(seed))
    return s


SUBSET_STRATEGIES = [n for n in strategies.STRATEGIES if "fraction" in strategies.parameters(n)]


def _first_selection(s, epochs=10):
    for epoch in range(epochs):
        sel = s.select(epoch)
        if sel is not None and len(sel) < N:
            return epoch, sel
        if s.observes:
            s.observe(torch.arange(N), torch.rand(N, generator=torch.Generator().manual_seed(epoch)),
                      torch.rand(N, generator=torch.Generator().manual_seed(epoch + 50)) > 0.5)
    raise AssertionError(f"{type(s).name} never selected a subset")


@pytest.mark.parametrize("name", SUBSET_STRATEGIES)
def test_subset_contract(name, tmp_path):
    params = {}
    if name == "cached_gradmatch":  # replays what a gradmatch run recorded
        params["cache"] = str(tmp_path / "gm.cache")
        _first_selection(_make("gradmatch", cache=params["cache"]))
    epoch, sel = _first_selection(_make(name, **params))
    sel = sel.validate(N)
    k = math.ceil(0.25 * N)
    # per-class budgets round up by at most one per class; whole batches by less than one batch
    assert k <= len(sel) <= k + (C if name != "random_pb" else 15)
    if sel.weights is not None:
        assert bool((sel.weights > 0).all())
    _, again = _first_selection(_make(name, **params))
    assert torch.equal(sel.indices, again.indices)  # one seed, one subset


@pytest.mark.parametrize("batch", [16, 7])
def test_random_pb_draws_whole_batches(batch):
    s = strategies.make("random_pb", fraction=0.25, every=2, batch_size=batch)
    s.setup(context(epochs=6))
    rounds = [s.select(e) for e in range(6)]
    assert [e for e, r in enumerate(rounds) if r is not None] == [0, 2, 4]
    budget = math.ceil(0.25 * N)
    for r in filter(None, rounds):
        idx = r.validate(N).indices
        ids = (idx // batch).unique()
        assert budget <= idx.numel() < budget + batch and r.weights is None  # the budget met, by whole batches
        assert ids.numel() in (math.ceil(budget / batch), math.ceil(budget / batch) + 1)
        whole = torch.cat([torch.arange(b * batch, min(N, (b + 1) * batch)) for b in ids.tolist()])
        assert torch.equal(idx, whole)  # each chosen batch complete, nothing else
    assert not torch.equal(rounds[0].indices, rounds[2].indices)  # re-drawn every R epochs
    again = strategies.make("random_pb", fraction=0.25, every=2, batch_size=batch)
    again.setup(context(epochs=6))
    assert torch.equal(again.select(0).indices, rounds[0].indices)


@pytest.mark.parametrize("name", ["random", "random_online", "random_pb"])
def test_other_seed_other_subset(name):
    _, a = _first_selection(_make(name, seed=0))
    _, b = _first_selection(_make(name, seed=1))
    assert not torch.equal(a.indices.sort().values, b.indices.sort().values)


@pytest.mark.parametrize("keep", ["hard", "easy", "middle"])
@pytest.mark.parametrize("per_class", [True, False])
def test_rank_select_against_a_sort(keep, per_class):
    g = torch.Generator().manual_seed(3)
    d = torch.randn(N, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    k = 50
    picks = rank_select(d, k, keep, labels if per_class else None)
    groups = [torch.nonzero(labels == c).squeeze(1) for c in range(C)] if per_class else [torch.arange(N)]
    expected = []
    for idx in groups:
        kc = min(idx.numel(), math.ceil(k * idx.numel() / N)) if per_class else k
        order = idx[torch.argsort(d[idx], descending=True, stable=True)]
        start = {"hard": 0, "easy": idx.numel() - kc, "middle": (idx.numel() - kc) // 2}[keep]
        expected.append(order[start:start + kc])
    assert torch.equal(picks.sort().values, torch.cat(expected).sort().values)


def test_score_orientation_and_proxy_average():
    s = _make("least_confidence", pretrain_epochs=2, repeats=3, per_class=False, fraction=0.1)
    _, sel = _first_selection(s)
    mean_conf = torch.stack([_table(N, 10 + i).confidence for i in range(3)]).mean(0)
    expected = torch.argsort(mean_conf, stable=True)[:math.ceil(0.1 * N)]  # least confident first
    assert torch.equal(sel.indices.sort().values, expected.sort().values)


def test_one_shot_and_every_r_timing():
    calls = []
    s = strategies.make("el2n", fraction=0.5, every=3, warm=0.5, pretrain_epochs=0)
    s.setup(context(epochs=12, calls=calls))
    warm = math.ceil(0.5 * 12 * 0.5)
    out = [s.select(e) for e in range(12)]
    assert s.warm_epochs == warm == 3
    assert len(out[0]) == N and all(o is None for o in out[1:warm])  # warm epochs: the full pool
    chosen = [e for e, o in enumerate(out) if o is not None and len(o) < N]
    assert chosen == [3, 6, 9]
    assert len(calls) == 3  # one scoring pass per selection, none between
    one_shot = strategies.make("random", fraction=0.5)
    one_shot.setup(context(epochs=12))
    assert [e for e in range(12) if one_shot.select(e) is not None] == [0]


def test_training_loss_regime_waits_for_every_sample():
    s = strategies.make("loss", fraction=0.5, source="training")
    s.setup(context())
    assert s.observes and len(s.select(0)) == N  # epoch 0 trains on the full pool to fill the table
    s.observe(torch.arange(N // 2), torch.rand(N // 2), torch.zeros(N // 2, dtype=torch.bool))
    assert s.select(1) is None  # half the pool has no loss yet
    losses = torch.rand(N, generator=torch.Generator().manual_seed(0))
    s.observe(torch.arange(N), losses, torch.zeros(N, dtype=torch.bool))
    sel = s.select(2)
    per_class = [torch.nonzero(torch.arange(N) % C == c).squeeze(1) for c in range(C)]
    expected = torch.cat([idx[torch.argsort(losses[idx], descending=True)][:30] for idx in per_class])
    assert torch.equal(sel.indices.sort().values, expected.sort().values)


def test_forgetting_counts_match_plain_python():
    g = torch.Generator().manual_seed(0)
    n, rounds = 30, 12
    counter = ForgettingCounter(n)
    last, events, learned = [None] * n, [0] * n, [False] * n
    for _ in range(rounds):
        idx = torch.randperm(n, generator=g)[:20]
        correct = torch.rand(20, generator=g) > 0.4
        counter.update(idx, correct)
        for i, c in zip(idx.tolist(), correct.tolist()):
            if last[i] is True and not c:
                events[i] += 1
            learned[i] |= c
            last[i] = c
    top = max(events) + 1
    expected = [float(e) if seen else float(top) for e, seen in zip(events, learned)]
    assert counter.scores().tolist() == expected


def test_forgetting_counts_two_epochs_then_selects():
    s = _make("forgetting", warm=0.0)
    assert s.warm_epochs == 2 and len(s.select(0)) == N and s.select(1) is None and len(s.select(2)) < N
    with pytest.raises(ValueError, match="count_epochs must be an int >= 2"):
        _make("forgetting", count_epochs=1)
    with pytest.raises(ValueError, match="leave none of the 10"):
        _make("forgetting", count_epochs=10)


def test_selective_backprop_window_and_interrupt():
    s = strategies.make("selective_backprop", rule="composer", start=0.2, end=0.6, interrupt=3, keep=0.5)
    s.setup(context(epochs=10))
    calls = []

    def losses(scale):
        calls.append(scale)
        return torch.rand(16, generator=torch.Generator().manual_seed(len(calls)))

    results = [s.batch_mask(p / 10, losses) for p in range(10)]
    # batches 1..10 (counter); progress 0.2..0.5 inside the window; batch 3, 6, 9 interrupted
    inside = [p for p in range(10) if 0.2 <= p / 10 < 0.6 and (p + 1) % 3 != 0]
    assert [p for p, r in enumerate(results) if r is not None] == inside
    assert len(calls) == len(inside)  # no selection pass outside the window
    assert all(int(results[p].sum()) == 8 for p in inside)


def test_selective_backprop_state_resumes_the_same_draws():
    a = strategies.make("selective_backprop", rule="jiang", start=0.0)
    a.setup(context())
    batches = [torch.rand(16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    for b in batches[:4]:
        a.batch_mask(0.5, lambda _s, b=b: b)
    b_ = strategies.make("selective_backprop", rule="jiang", start=0.0)
    b_.setup(context())
    b_.load_state_dict(a.state_dict())
    for b in batches[4:]:
        assert torch.equal(a.batch_mask(0.5, lambda _s, b=b: b), b_.batch_mask(0.5, lambda _s, b=b: b))


@pytest.mark.parametrize("name, params, message", [
    ("nope", {}, "unknown strategy 'nope'"),
    ("random", {"fraction": 0.0}, r"random: fraction must be in \(0, 1\], got 0.0"),
    ("random", {"fraction": 1.5}, r"fraction must be in \(0, 1\], got 1.5"),
    ("random_online", {"fraction": 0.5, "every": 0}, "every must be an int >= 1"),
    ("gradmatch", {"fraction": 0.5, "mode": "per_batch", "embedding": "per_class"}, "needs mode='per_class'"),
    ("gradmatch", {"fraction": 0.5, "target": "val"}, "needs a held-out selection split"),
    ("glister", {"fraction": 0.5}, "needs a held-out selection split"),
    ("el2n", {"fraction": 0.5, "keep": "most"}, "keep must be one of"),
    ("el2n", {"fraction": 0.5, "colour": 1}, "has no parameter 'colour'"),
    ("selective_backprop", {"start": 0.9, "end": 0.1}, "need 0 <= start <= end <= 1"),
    ("random_pb", {"fraction": 0.5, "batch_size": 0}, "batch_size must be an int >= 1"),
    ("adaselection", {"methods": "big_loss,tiny_loss"}, "methods must be distinct names"),
    ("adaselection", {"start": 1.0}, r"start must be in \[0, 1\)"),
    ("infobatch", {"prune": -0.5}, r"prune must be in \[0, 1\)"),
])
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        s = strategies.make(name, **params)
        s.setup(context(has_val=False))


def test_gradmatch_weights_and_target_val():
    s = strategies.make("gradmatch", fraction=0.25, target="val", every=None)
    s.setup(context())
    sel = s.select(0)
    assert sel.weights is not None and len(sel) >= math.ceil(0.25 * N)
    assert s.report()["size"] == len(sel)


def test_bias_embedding_warns():
    with pytest.warns(UserWarning, match="bias-only embedding"):
        _make("gradmatch", mode="global", embedding="bias")


def test_gradmatch_per_class_embedding_from_the_loss_equals_the_errors_table():
    """The per-class embedding built from the loss (e_y = expm1(−ℓ), no [n, C] table) equals
    ``last_layer_embedding`` of the full errors table."""
    from datadiet.select.gradmatch import last_layer_embedding

    table = _table(N, 4)
    s = _make("gradmatch", embedding="per_class")
    assert s._wanted() == {"features": True}
    ours = s._embed(table)["embedding"]
    torch.testing.assert_close(ours, last_layer_embedding(table.errors, table.features, table.labels, "per_class"),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, params", [("gradmatch", {"mode": "global"}), ("gradmatch", {"target": "val",
                                                                                           "mode": "global"})])
def test_under_ddp_only_rank_0_runs_the_solver(name, params, monkeypatch):
    """GradMatch's one global problem: every rank joins the scoring passes (their collectives); a
    rank other than 0 skips the solve and returns the stand-in the Driver replaces with rank 0's
    selection. (Per class the ranks share the problems, and GLISTER runs sharded on every rank:
    both are checked under torchrun in test_distributed.)"""
    from datadiet.strategies import adaptive

    calls = []
    s = strategies.make(name, fraction=0.25, **params)
    ctx = context(calls=calls)
    ctx.rank, ctx.world_size = 1, 2
    s.setup(ctx)
    monkeypatch.setattr(adaptive, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("solved on rank 1")))
    sel = s.select(0)
    assert len(sel) == 0 and calls == (["train", "val"] if "target" in params else ["train"])
    ctx.rank = 0
    monkeypatch.undo()
    assert len(s.select(0)) > 0
