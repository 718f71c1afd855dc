"""Seed 000's ensembles on difficulty subsets: the epoch plan conserves the budget, members start
from the base model and train on disjoint difficulty strata of the configured size, the merge is
the mean of the members, the no-ensemble baseline spends the same sample budget, and the
command runs."""

import json
import math

import pytest
import torch

from datadiet.cli import main as cli
from datadiet.pipelines import difficulty_ensembles as ensemble_module
from datadiet.pipelines import plan
from datadiet.strategies.static import FixedSubset
from datadiet.train.config import TrainConfig


@pytest.mark.parametrize("epochs, phases, warmup", [(60, 2, 5), (13, 3, 1), (8, 4, 0), (61, 5, 3)])
def test_plan_conserves_the_budget(epochs, phases, warmup):
    p = plan(epochs, phases, warmup)
    assert p.total() == epochs and len(p.base_epochs) == len(p.member_epochs) == phases
    assert all(b >= 1 and m >= b for b, m in zip(p.base_epochs, p.member_epochs))
    lengths = [b + m for b, m in zip(p.base_epochs, p.member_epochs)]
    assert max(lengths) - min(lengths) <= 1


def test_plan_refuses_budgets_too_small():
    with pytest.raises(ValueError, match="fewer than 2 per phase"):
        plan(5, 3, 1)
    with pytest.raises(ValueError, match="phases must be an int >= 1"):
        plan(10, 0, 1)


class _Spy:
    """Records every stage the pipeline builds: its strategy and the state it starts from."""

    def __init__(self, monkeypatch):
        self.stages = []
        real = ensemble_module.Trainer

        def build(config, strategy=None, **kw):
            trainer = real(config, strategy, **kw)
            start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            self.stages.append((strategy, start, trainer))
            return trainer

        monkeypatch.setattr(ensemble_module, "Trainer", build)


def test_members_start_from_the_base_and_merge_to_their_mean(monkeypatch):
    spy = _Spy(monkeypatch)
    config = TrainConfig(epochs=9, fraction=0.3, progress=False)
    summary = ensemble_module.ensemble(config, phases=2, n_models=3, warmup_epochs=1, log=lambda *a: None)
    # per phase: the probe (scores the base choice), the base stage, three members
    assert len(spy.stages) == 1 + 2 * 5
    warm = spy.stages[0][2].scheduler
    assert warm.warmup_steps == warm.total_steps - 1  # the warm-up's lr rises over all its steps
    # after it, one cosine over the 8 remaining epochs: phase p's base stage starts at its slice
    p = plan(9, 2, 1)
    starts = [0, p.base_epochs[0], 4, 4 + p.base_epochs[1]]  # base 0, members 0, base 1, members 1
    got = [spy.stages[i][2].config.lr for i in (2, 3, 7, 8)]
    assert got == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * a / 8))
                                 for a in starts])
    for phase in range(2):
        probe, base, *members = spy.stages[1 + 5 * phase:6 + 5 * phase]
        base_final = base[2].model.state_dict()
        sizes = []
        for strategy, start, trainer in members:
            assert isinstance(strategy, FixedSubset)
            assert all(torch.equal(start[k], base_final[k]) for k in start)  # from the base model
            sizes.append(len(strategy.selection))
        idx = [set(s.selection.indices.tolist()) for s, _, _ in members]
        assert not (idx[0] & idx[1]) and not (idx[1] & idx[2]) and not (idx[0] & idx[2])  # disjoint strata
        n = base[2].driver.sampler.n
        assert abs(sum(sizes) - 0.3 * n) <= 3 and summary["phases"][phase]["member_sizes"] == sizes
        if phase == 0:  # the next phase starts from the merge: the members' mean
            merged = spy.stages[6][1]
            finals = [m[2].model.state_dict() for m in members]
            for k in merged:
                assert torch.allclose(merged[k], torch.stack([f[k] for f in finals]).mean(0), atol=1e-6)


def test_without_warmup_the_base_starts_from_the_scored_initialisation(monkeypatch):
    spy = _Spy(monkeypatch)
    ensemble_module.ensemble(TrainConfig(epochs=4, fraction=0.3, progress=False), phases=1, n_models=2,
                             warmup_epochs=0, base="grand", log=lambda *a: None)
    probe, base = spy.stages[0], spy.stages[1]
    assert all(torch.equal(probe[1][k], base[1][k]) for k in probe[1])


def test_baseline_spends_the_same_sample_budget(monkeypatch):
    spy = _Spy(monkeypatch)
    config = TrainConfig(epochs=9, fraction=0.3, progress=False)
    ensemble_module.ensemble(config, phases=1, n_models=3, warmup_epochs=1, log=lambda *a: None)
    samples_ens = sum(sum(r["samples"] for r in t.history) for _, _, t in spy.stages)
    spy.stages.clear()
    base = ensemble_module.ensemble(config, phases=1, n_models=3, warmup_epochs=1, ensemble=False,
                                    log=lambda *a: None)
    samples_base = sum(sum(r["samples"] for r in t.history) for _, _, t in spy.stages)
    assert not base["ensemble"] and "member_accs" not in base["phases"][0]
    assert abs(samples_ens - samples_base) <= 0.02 * samples_base  # strata rounding only


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="base must be one of"):
        ensemble_module.ensemble(TrainConfig(epochs=6, progress=False), base="hardest")
    with pytest.raises(ValueError, match="n_models must be an int >= 1"):
        ensemble_module.ensemble(TrainConfig(epochs=6, progress=False), n_models=0)
    with pytest.raises(ValueError, match="grand_inits must be an int >= 0"):
        ensemble_module.ensemble(TrainConfig(epochs=6, progress=False), grand_inits=-1)


def test_command_with_batchnorm_reestimated(tmp_path, capsys):
    out = tmp_path / "ens"
    assert cli(["ensemble", "--model", "cnn", "--epochs", "6", "--warmup-epochs", "0", "--phases", "1", "--members",
                "2", "--bn", "reestimate", "--base", "grand", "--grand-inits", "2", "--out", str(out),
                "--no-progress"]) == 0
    saved = json.load(open(out / "ensemble.json"))
    assert saved["bn"] == "reestimate" and len(saved["phases"][0]["member_accs"]) == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ensemble"] is True


def test_under_torchrun_every_stage_is_a_ddp_run(tmp_path):
    import subprocess

    from tests.subprocesses import TORCHRUN, env

    out = tmp_path / "ddp"
    done = subprocess.run([*TORCHRUN, "-m", "datadiet", "ensemble", "--epochs", "5", "--warmup-epochs", "1", "--phases", "1",
                           "--members", "2", "--no-member-ranks", "--out", str(out), "--no-progress", "--dist-timeout", "120"],
                          env=env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.load(open(out / "ensemble.json"))
    assert len(saved["phases"][0]["member_accs"]) == 2 and 0.0 <= saved["test_acc"] <= 1.0


def test_one_member_per_rank_merged_by_one_collective(tmp_path):
    import os
    import subprocess

    from tests.subprocesses import REPO, TORCHRUN, env

    done = subprocess.run([*TORCHRUN, os.path.join(REPO, "tests", "ensemble_ranks.py"), str(tmp_path)], env=env(),
                          timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.load(open(tmp_path / "ensemble.json"))["phases"][0]
    assert saved["member_ranks"] == [0, 1, 0] and len(saved["member_accs"]) == 3
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [len(r["members"]) for r in ranks] == [2, 1]
    members = ranks[0]["members"] + ranks[1]["members"]
    assert not torch.equal(members[0]["0.weight"], members[2]["0.weight"])  # members trained apart
    for key, merged in ranks[0]["merged"].items():
        assert torch.equal(merged, ranks[1]["merged"][key])  # every rank holds the same merge
        stack = torch.stack([m[key].double() for m in members])
        expected = stack.mean(0) if merged.dtype.is_floating_point else stack.mean(0).round()
        assert torch.allclose(merged.double(), expected, atol=1e-6), key


def test_reproduction_reports_what_it_observes(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli(["reproduce", "ensemble-fractions", "--fractions", "0.1,0.3", "--seeds", "0,1", "--epochs", "6",
                "--warmup-epochs", "1", "--out", str(out), "--no-progress"]) == 0
    rows = json.load(open(out / "ensemble-fractions.json"))["rows"]
    assert [r["fraction"] for r in rows] == [0.1, 0.3] and all(r["seeds"] == 2 for r in rows)
    assert all(r["gain"] == pytest.approx(r["ensemble_mean"] - r["no_ensemble_mean"]) for r in rows)
    assert (out / "ensemble-fractions.csv").read_text().count("\n") == 3
    assert (out / "ensemble-fractions.png").stat().st_size > 1000
    assert "gain" in capsys.readouterr().out
