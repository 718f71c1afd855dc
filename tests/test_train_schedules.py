"""Learning-rate schedules by optimisation step: the formulas at chosen steps, warm-up, the same
curve after a resume from the scheduler's state, and bad arguments."""

import math

import pytest
import torch

from datadiet.train.schedules import factor, schedule


def lrs(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def sgd(lr=0.4):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_with_warmup_follows_the_formula():
    opt = sgd()
    got = lrs(schedule(opt, "cosine", 20, warmup_steps=4, final=0.1), opt, 20)
    for step, lr in enumerate(got):
        if step < 4:
            want = (step + 1) / 5
        else:
            t = (step - 4) / 16
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
        assert lr == pytest.approx(0.4 * want)
    assert got[4] == pytest.approx(0.4)


def test_step_and_constant_and_onecycle():
    f = factor("step", 100, 0, gamma=0.5, milestones=(0.3, 0.6))
    assert [f(s) for s in (0, 29, 30, 59, 60, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert factor("constant", 10, 3)(9) == 1.0 and factor("constant", 10, 3)(0) == 0.25
    opt = sgd()
    got = lrs(schedule(opt, "onecycle", 10), opt, 10)
    assert got.index(max(got)) == 3 and got[0] < got[1] < got[2] < got[3] and got[-1] < got[5]


def test_a_resumed_scheduler_continues_on_the_same_curve():
    opt = sgd()
    sched = schedule(opt, "cosine", 30, warmup_steps=3)
    whole = lrs(sched, opt, 30)
    opt2 = sgd()
    first = schedule(opt2, "cosine", 30, warmup_steps=3)
    lrs(first, opt2, 12)
    saved_opt, saved = opt2.state_dict(), first.state_dict()
    opt3 = sgd()
    resumed = schedule(opt3, "cosine", 30, warmup_steps=3)
    opt3.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    assert lrs(resumed, opt3, 18) == pytest.approx(whole[12:])


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(name="linear", total_steps=10), r"name must be one of"),
    (dict(name="cosine", total_steps=0), r"total_steps must be a positive int, got 0"),
    (dict(name="cosine", total_steps=10, warmup_steps=10), r"warmup_steps must be in \[0, total_steps = 10\)"),
    (dict(name="cosine", total_steps=10, final=1.5), r"final must be in \[0, 1\], got 1.5"),
])
def test_bad_arguments_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        schedule(sgd(), **kwargs)


def test_resize_keeps_the_warmup_and_ends_on_the_new_last_step():
    opt = sgd()
    sched = schedule(opt, "cosine", 20, warmup_steps=2)
    head = lrs(sched, opt, 5)
    sched.resize(30)
    tail = lrs(sched, opt, 25)
    expected = factor("cosine", 30, 2)
    assert head == pytest.approx([0.4 * factor("cosine", 20, 2)(t) for t in range(5)])
    assert tail == pytest.approx([0.4 * expected(t) for t in range(5, 30)])
    opt2 = sgd()
    again = schedule(opt2, "cosine", 20, warmup_steps=2)
    again.load_state_dict(sched.state_dict())  # the plan travels with the state
    assert again.total_steps == 30 and again.get_last_lr() == sched.get_last_lr()
