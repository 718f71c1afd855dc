"""Soups: uniform = torch.optim.swa_utils.AveragedModel's average (parameters and buffers), the
streaming soup = the uniform one, greedy acceptance on models with known held-out scores (with
and without an interpolation grid), BatchNorm re-estimation, state dicts, errors."""

import pytest
import torch
from torch import nn

from datadiet.soup import RunningSoup, greedy_soup, uniform_soup


def net(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    m[1].num_batches_tracked.fill_(10 + seed)
    return m


def test_uniform_soup_equals_averaged_model():
    models = [net(s) for s in range(4)]
    swa = torch.optim.swa_utils.AveragedModel(models[0], use_buffers=True)
    for m in models:  # the first update copies, the others average
        swa.update_parameters(m)
    soup = uniform_soup(models)
    for (name, got), want in zip(soup.state_dict().items(), swa.module.state_dict().values()):
        if got.dtype.is_floating_point:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=name)
    assert int(soup[1].num_batches_tracked) == round(sum(10 + s for s in range(4)) / 4)  # the integer rule
    assert torch.equal(models[0][0].weight, net(0)[0].weight)  # a new model; the ingredients are untouched


def test_state_dicts_weights_and_running_soup():
    states = [net(s).state_dict() for s in range(3)]
    soup = uniform_soup(states, weights=[2, 1, 1])
    torch.testing.assert_close(soup["4.weight"], (2 * states[0]["4.weight"] + states[1]["4.weight"]
                                                 + states[2]["4.weight"]) / 4, rtol=1e-6, atol=1e-6)
    running = RunningSoup()
    for s in states:
        running.add(s)
    uniform = uniform_soup(states)
    for k, v in running.result().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, uniform[k], rtol=1e-5, atol=1e-6)


def test_bn_statistics_are_re_estimated_on_a_loader():
    models = [net(s) for s in range(2)]
    data = [torch.randn(16, 3, 8, 8) for _ in range(3)]
    soup = uniform_soup(models, bn_loader=data)
    x = torch.cat(data)
    feats = soup[0](x)
    torch.testing.assert_close(soup[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


class Scalar(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([float(v)]))


def held_out(model):
    """A held-out score with its optimum at w = 2."""
    return -abs(float(model.w.detach()) - 2.0)


def test_greedy_soup_accepts_only_improvements():
    # Ranked by score: 2.5 (-0.5), 1.0 (-1.0), 4.0 (-2.0), -3.0 (-5.0).
    ingredients = [Scalar(1.0), Scalar(4.0), Scalar(2.5), Scalar(-3.0)]
    out = greedy_soup(ingredients, held_out)
    # 2.5 first; +1.0 -> 1.75 (-0.25) accepted; +4.0 -> (2.5+1+4)/3 = 2.5 rejected; +(-3) rejected.
    assert out.accepted == [2, 0]
    assert float(out.soup.w.detach()) == pytest.approx(1.75)
    assert out.score == pytest.approx(-0.25)
    assert [h[3] for h in out.history] == [True, False, False]
    assert all(float(m.w.detach()) == v for m, v in zip(ingredients, [1.0, 4.0, 2.5, -3.0]))  # inputs untouched


def test_greedy_soup_searches_the_interpolation_grid():
    out = greedy_soup([Scalar(1.0), Scalar(4.0)], held_out, alphas=[0.0, 0.25, 0.5, 0.75, 1.0])
    # from 1.0 towards 4.0: alpha 1/3 would be exact; on the grid 0.25 gives 1.75 (-0.25), 0.5 gives 2.5 (-0.5)
    assert out.accepted == [0, 1] and out.history[0][1] == 0.25
    assert float(out.soup.w.detach()) == pytest.approx(1.75)


def test_errors():
    with pytest.raises(ValueError, match="no ingredients"):
        uniform_soup([])
    with pytest.raises(ValueError, match="does not match the first ingredient's keys"):
        uniform_soup([net(0), Scalar(1.0)])
    with pytest.raises(ValueError, match="weights with a positive sum"):
        uniform_soup([net(0), net(1)], weights=[1, -1])
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\]"):
        greedy_soup([Scalar(1.0)], held_out, alphas=[1.5])
    with pytest.raises(TypeError, match="bn_loader re-estimates BatchNorm statistics and needs nn.Module"):
        uniform_soup([net(0).state_dict()], bn_loader=[torch.randn(2, 3, 8, 8)])


def test_greedy_soup_refuses_an_evaluator_returning_nan():
    ingredients = [Scalar(1.0), Scalar(4.0)]
    with pytest.raises(ValueError, match="evaluate returned NaN for ingredient 0"):
        greedy_soup(ingredients, lambda model: float("nan"))
    # A candidate scoring NaN is simply not an improvement.
    calls = []

    def nan_after_ranking(model):
        calls.append(1)
        return held_out(model) if len(calls) <= 2 else float("nan")

    out = greedy_soup(ingredients, nan_after_ranking)
    assert out.accepted == [0] and [h[3] for h in out.history] == [False]
