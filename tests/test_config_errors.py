"""Every user input error is one line naming the option, its value and what is expected: wrong
types and ranges in a TOML file, in a run folder's config.json and in flags (``datadiet train``
in-process: exit code 2, nothing written), every strategy parameter (checked when
``strategies.make`` constructs the strategy, before any model trains) and LiPT's options."""

import dataclasses
import json
import re

import pytest
import torch

from datadiet import strategies
from datadiet.cli import main
from datadiet.pipelines.lightweight_pretraining import LiptOptions
from datadiet.strategies.base import Context
from datadiet.train.config import TrainConfig
from datadiet.train.options import parse_params

# What a TOML or JSON file (or a --param literal) can hold that a parameter may not accept.
BAD_VALUES = ["half", [1, 2], None, -1, 2 ** 70, float("nan"), True]


def _error_line(capsys, argv) -> str:
    """Runs ``datadiet ARGV``; asserts exit code 2 and one line on stderr, returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("toml, message", [
    ('lr = "0.1"', "config lr = '0.1': must be a finite number"),
    ("epochs = 2.5", "config epochs = 2.5: must be an int"),
    ('nesterov = "yes"', "config nesterov = 'yes': must be true or false"),
    ("nesterov = true\nmomentum = 0", "config nesterov = True: must be false when momentum = 0"),
    ("width = 100000000", "config width = 100000000: must be an int in [0, 65536]"),
    ("momentum = -1", "config momentum = -1: must be in [0, 1)"),
    ("weight_decay = -1", "config weight_decay = -1: must be >= 0"),
    ('schedule = "foo"', "config schedule = 'foo': must be one of ('constant', 'cosine', 'step', 'onecycle')"),
    ("image_size = 1000000", "config image_size = 1000000: must be an int in [1, 4096]"),
    ("dist_timeout = inf", "config dist_timeout = inf: must be a finite number"),
    ("dist_timeout = 1e300", "config dist_timeout = 1e+300: must be in (0, 604800] seconds"),
    ("lr = inf", "config lr = inf: must be a finite number"),
    ("lr = nan", "config lr = nan: must be a finite number"),
    ("lr = 0", "config lr = 0: must be a finite number > 0"),
    ('final_lr = "low"', "config final_lr = 'low': must be a finite number"),
    ("final_lr = 2", "config final_lr = 2: must be in [0, 1]"),
    ("eval_batch_size = 0", "config eval_batch_size = 0: must be an int in [1, 1048576]"),
    ("batch_size = 1180591620717411303424", "config batch_size = 1180591620717411303424: must be an int in"),
    ("epochs = 1180591620717411303424", "config epochs = 1180591620717411303424: must be an int in [1, 100000]"),
    ("seed = -1", "config seed = -1: must be an int in [0, 2**63)"),
    ("head = 5", "config head = 5: must be a string or None"),
    ("dataset = 5", "config dataset = 5: must be a string"),
    ('model = ["x"]', "config model = ['x']: must be a string"),
    ("strategy = 3", "config strategy = 3: must be a string"),
    ('strategy = "random"\nfraction = "half"', "config fraction = 'half': must be a finite number or None"),
    ("every = 0", "config every = 0: must be an int >= 1"),
    ('device = "tpu"', "config device = 'tpu': must be 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"),
    ("strategy_params = 3", "strategy_params = 3: must be a table"),
    ('strategy = "selective_backprop"\n[strategy_params]\nkeep = "half"',
     "strategy 'selective_backprop': keep = 'half': must be a finite number"),
])
def test_a_bad_toml_value_is_one_line_and_writes_nothing(tmp_path, capsys, toml, message):
    path, out = tmp_path / "run.toml", tmp_path / "out"
    path.write_text(toml + "\n")
    flags = [] if toml.startswith("epochs") else ["--epochs", "1"]  # a flag would override the file
    line = _error_line(capsys, ["train", "--config", str(path), *flags, "--out", str(out), "--no-progress"])
    assert message in line
    assert not out.exists()


@pytest.mark.parametrize("saved, message", [
    ({"lr": "0.1"}, "config lr = '0.1': must be a finite number"),
    ({"epochs": 2.5}, "config epochs = 2.5: must be an int"),
    ({"nesterov": "yes"}, "config nesterov = 'yes': must be true or false"),
    ({"seed": 2 ** 70}, f"config seed = {2 ** 70}: must be an int in [0, 2**63)"),
])
def test_a_bad_value_in_a_run_folders_config_json_is_one_line(tmp_path, capsys, saved, message):
    (tmp_path / "config.json").write_text(json.dumps(saved))
    line = _error_line(capsys, ["train", "--resume", str(tmp_path), "--no-progress"])
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no checkpoint, no metrics


@pytest.mark.parametrize("flags, message", [
    (["--device", "tpu"], "config device = 'tpu': must be 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (N in 0..127"),
    (["--device", "cuda:x"], "config device = 'cuda:x': must be"),
    (["--device", "cuda:007"], "config device = 'cuda:007': must be"),
    (["--device", "cuda:128"], "config device = 'cuda:128': must be"),
    (["--seed", str(2 ** 70)], f"config seed = {2 ** 70}: must be an int in [0, 2**63)"),
    (["--strategy", "selective_backprop", "--param", "keep=half"],
     "strategy 'selective_backprop': keep = 'half': must be a finite number"),
    (["--strategy", "selective_backprop", "--param", "beta=[1,2]"],
     "strategy 'selective_backprop': beta = [1, 2]: must be a finite number"),
    (["--strategy", "selective_backprop", "--param", "history=1e9"],
     "strategy 'selective_backprop': history = 1000000000.0: must be an int"),
    (["--strategy", "adaselection", "--param", "eta=-1"], "strategy 'adaselection': eta = -1: must be >= 0"),
    (["--strategy", "adaselection", "--param", "methods={1, 2}"], "methods must be distinct names"),
    (["--strategy", "random", "--fraction", "0.5", "--param", "every={[1]: 2}"],
     "strategy 'random': every = '{[1]: 2}': must be an int or None"),
    (["--strategy", "gradmatch", "--fraction", "0.5", "--param", "tol=1e400"],
     "strategy 'gradmatch': tol = inf: must be a finite number"),
])
def test_a_bad_flag_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    line = _error_line(capsys, ["train", *flags, "--epochs", "1", "--out", str(out), "--no-progress"])
    assert message in line
    assert not out.exists()


def test_argparse_refuses_what_is_no_number_itself(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--epochs", "x"])
    assert stop.value.code == 2 and "--epochs: invalid int value: 'x'" in capsys.readouterr().err


def test_param_values_are_literals_or_else_text():
    assert parse_params(["a=[1, 2]", "b={'x': 1}", "c={1, 2}", "d=(1, 2)", "e=0.5", "f=half", "g={[1]: 2}"]) == {
        "a": [1, 2], "b": {"x": 1}, "c": {1, 2}, "d": (1, 2), "e": 0.5, "f": "half", "g": "{[1]: 2}"}
    assert parse_params(["a=true", "b=False", "c=NONE", "d=null", "e=True"]) == {
        "a": True, "b": False, "c": None, "d": None, "e": True}  # TOML's words and Python's
    deep = "-" * 100_000 + "1"  # beyond the parser's stack
    assert parse_params([f"h={deep}"]) == {"h": deep}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_params([" =1"])


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(TrainConfig)])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_every_config_field_is_checked(key, value):
    """Each field set to each bad value is refused with one line naming it, or is valid."""
    try:
        TrainConfig(**{key: value}).validate()
    except ValueError as exc:
        assert f"config {key} = {value!r}: " in str(exc) and "\n" not in str(exc)


def _context() -> Context:
    n = 40
    return Context(n=n, labels=torch.arange(n) % 4, num_classes=4, epochs=10, seed=0, batch_size=8, lr=0.1,
                   proxy_scores=lambda *a, **k: None, has_val=True)


REQUIRED = {"cached_gradmatch": {"cache": "recorded.cache"}, "strata": {"stratum": 0}}  # refused without one


@pytest.mark.parametrize("name, key", [(name, key) for name in strategies.STRATEGIES
                                       for key in strategies.parameters(name)])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_every_strategy_parameter_is_checked_at_construction(name, key, value):
    """``make`` refuses a bad value with a ValueError naming the strategy, the parameter and the
    value (never a TypeError from deep inside); one it accepts fails at most with a ValueError at
    set-up (which needs the run: its epochs, pool and held-out split)."""
    try:
        strategy = strategies.make(name, **{**REQUIRED.get(name, {}), key: value})
    except ValueError as exc:
        message = str(exc)
        assert name in message and key in message and repr(value) in message and "\n" not in message, message
        return
    try:
        strategy.setup(_context())
    except ValueError:
        pass


@pytest.mark.parametrize("params, message", [
    ({"history": 2 ** 70}, f"strategy 'selective_backprop': history = {2 ** 70}: must be an int in [1, 1048576]"),
    ({"start": 1.5}, "strategy 'selective_backprop': start = 1.5: must be in [0, 1]"),
    ({"keep": 0}, "strategy 'selective_backprop': keep = 0: must be in (0, 1]"),
    ({"rule": "jiang", "end": 0.05}, "need 0 <= start <= end <= 1, got start=0.1, end=0.05"),  # at set-up
])
def test_selective_backprop_ranges(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        strategies.make("selective_backprop", **params).setup(_context())


def test_gradmatch_per_batch_batch_size_is_checked_against_the_pool():
    strategy = strategies.make("gradmatch", fraction=0.5, mode="per_batch", embedding="bias", batch_size=41)
    with pytest.warns(UserWarning, match="bias-only"), \
            pytest.raises(ValueError, match="gradmatch': batch_size = 41: must be at most the pool's 40 samples"):
        strategy.setup(_context())


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(LiptOptions)])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_every_lipt_option_is_checked(key, value):
    try:
        LiptOptions(**{key: value}).validate()
    except ValueError as exc:
        assert f"lipt: {key}" in str(exc) and repr(value) in str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize("options, message", [
    ({"augment_ops": 15}, "lipt: augment_ops = 15: must be an int in [0, 14]"),
    ({"magnitude": 31}, "lipt: magnitude = 31: must be an int in [0, 30]"),
    ({"magnitude": "high"}, "lipt: magnitude = 'high': must be an int"),
    ({"grid": 12}, "lipt: grid = 12: must be an int in [2, 11]"),
    ({"permutations": 1}, "lipt: permutations = 1: must be an int >= 2"),
    ({"worker_lr": float("inf")}, "lipt: worker_lr = inf: must be a finite number or None"),
    ({"density": (0.5, "x")}, "lipt: density must be a pair of numbers (low, high), got (0.5, 'x')"),
    ({"alphas": (float("nan"),)}, "lipt: alphas must be ratios in (0, 1], got (nan,)"),
])
def test_lipt_options_name_what_is_wrong(options, message):
    with pytest.raises(ValueError) as caught:
        LiptOptions(**options).validate()
    assert message in str(caught.value)
