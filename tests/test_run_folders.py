"""Runs people can trust with their folders: a finished run is never overwritten unless asked,
one folder has one writer, temporary names are never followed, a compare grid is checked whole
before anything trains and reuses its finished cells, non-finite training stops, an unreadable
sample stops the run after a checkpoint, and a run folder never makes datadiet import code.
CLI cases run in-process (``datadiet.cli.main``)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from datadiet import runfolder
from datadiet.cli import main
from datadiet.train import compare as compare_module
from datadiet.train.trainer import Trainer
from tests.subprocesses import env
from tests.train_fixtures import image_folder, requires_torchvision

TINY = ["--epochs", "1", "--batch-size", "256", "--no-progress"]


def _strict(text: str):
    """JSON as a strict reader sees it: NaN / Infinity are errors."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def _snapshot(folder) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name != runfolder.LOCK}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, never a traceback
    return err[0]


@pytest.fixture
def counted_fits(monkeypatch):
    """How many models train (every Trainer.fit call), the real loop still running."""
    calls = []
    real = Trainer.fit

    def fit(self):
        calls.append(self.config.strategy)
        return real(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    return calls


# -- a finished run is never overwritten ------------------------------------------------------------
def test_a_finished_run_is_refused_then_resumed_or_overwritten_on_purpose(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    before = _snapshot(out)
    assert main(["train", *TINY, "--out", out]) == 2
    line = _error(capsys)
    assert f"--out {out}: holds a previous run" in line and "--resume" in line and "--overwrite" in line
    assert _snapshot(out) == before  # untouched
    assert main(["train", *TINY, "--out", out, "--lr", "0.2", "--overwrite"]) == 0
    assert json.load(open(os.path.join(out, "config.json")))["lr"] == 0.2
    assert main(["train", *TINY, "--resume", out, "--overwrite"]) == 2
    assert "choose one" in _error(capsys)
    assert main(["train", "--resume", out, "--epochs", "2", "--no-progress"]) == 2  # the identity differs ...
    assert "epochs: checkpoint 1, this run 2" in _error(capsys)
    assert main(["train", "--resume", out, "--no-progress"]) == 0  # ... a run made with --overwrite resumes


def test_one_process_cannot_claim_a_folder_twice_unless_the_claim_is_shared(tmp_path):
    path = str(tmp_path / "f")
    first = runfolder.claim(path)
    with pytest.raises(runfolder.RunFolderError, match="in use by another run of this process"):
        runfolder.claim(path)
    first.release()
    with runfolder.claim(path, shared=True):
        runfolder.claim(path).release()  # a run inside the pipeline holding it: a no-op
        child = subprocess.run([sys.executable, "-c", f"from datadiet import runfolder; runfolder.claim({path!r})"],
                               env=env(), capture_output=True, text=True, timeout=60)
        assert child.returncode != 0 and "in use by another datadiet run" in child.stderr  # another process: refused
    del first
    runfolder.claim(path)  # dropped without release: garbage collection releases it
    runfolder.claim(path).release()


def test_a_second_writer_is_refused_naming_the_holders_pid(tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from datadiet import runfolder
        folder = runfolder.claim({str(out)!r})
        print("held", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", *TINY, "--out", str(out)]) == 2
        assert f"in use by another datadiet run (pid {holder.pid})" in _error(capsys)
        assert not os.path.exists(out / "config.json")
    finally:
        holder.communicate("", timeout=60)
    assert main(["train", *TINY, "--out", str(out)]) == 0  # the lock died with its holder


def test_temporary_names_are_never_followed_and_leftovers_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, out / runfolder.LOCK)  # a lock name planted as a link is not followed
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert victim.read_text() == "precious"
    os.unlink(out / runfolder.LOCK)
    leftover = out / ".tmp-killed.part"
    leftover.write_text("half a file")
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert victim.read_text() == "precious"
    assert not leftover.exists()
    assert not [n for n in os.listdir(out) if n.endswith(".part")]
    # A result name that is a symlink is replaced, not written through.
    os.unlink(out / "summary.json")
    os.symlink(victim, out / "summary.json")
    runfolder.write_json(str(out / "summary.json"), {"a": 1})
    assert victim.read_text() == "precious" and not os.path.islink(out / "summary.json")


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("mine")
    assert main(["compare", *TINY, "--strategies", "full", "--seeds", "0", "--out", str(path)]) == 2
    assert f"--out {path}: is a file" in _error(capsys)
    assert path.read_text() == "mine"


# -- compare: the whole grid is checked first; finished cells are reused -----------------------------
@pytest.mark.parametrize("argv, message", [
    (["--fractions", "0.1,1.5"], "--fractions: config fraction = 1.5"),
    (["--seeds", "0,-1"], "--seeds"),
    (["--seeds", ""], "--seeds: give at least one value"),
    (["--strategies", "full,nope"], "nope"),
    (["--param", "random.nope=1"], "nope"),
    (["--param", "gradmatch.lam=-1"], "lam"),
])
def test_a_compare_grid_with_one_bad_cell_trains_nothing(tmp_path, capsys, counted_fits, argv, message):
    out = tmp_path / "cmp"
    code = main(["compare", *TINY, "--strategies", "full,random,gradmatch", "--fractions", "0.1", "--seeds", "0",
                 *argv, "--out", str(out)])
    assert code == 2
    assert message in _error(capsys)
    assert counted_fits == []
    assert not out.exists()


def test_compare_reuses_its_finished_cells_and_refuses_another_configuration(tmp_path, capsys, counted_fits):
    out = str(tmp_path / "cmp")
    grid = ["compare", *TINY, "--strategies", "full,random", "--fractions", "0.2", "--no-budget-baselines", "--out",
            out]
    assert main([*grid, "--seeds", "0"]) == 0
    assert counted_fits == ["full", "random"]
    first = _strict(open(os.path.join(out, "compare.json")).read())
    assert [r["seed"] for r in first["runs"]] == [0, 0]
    assert main([*grid, "--seeds", "0"]) == 0  # the same command again: nothing trains, same table
    assert counted_fits == ["full", "random"]
    assert _strict(open(os.path.join(out, "compare.json")).read())["rows"] == first["rows"]
    assert main([*grid, "--seeds", "0,1"]) == 0  # a larger grid trains only the new cells
    assert counted_fits == ["full", "random", "full", "random"]
    capsys.readouterr()
    assert main([*grid, "--seeds", "0", "--lr", "0.2"]) == 2
    assert "another configuration (lr: folder 0.05, this run 0.2)" in _error(capsys)
    assert main([*grid, "--seeds", "1", "--lr", "0.2", "--overwrite"]) == 0
    assert counted_fits[-2:] == ["full", "random"]
    assert [r["seed"] for r in _strict(open(os.path.join(out, "compare.json")).read())["runs"]] == [1, 1]


def test_compare_retrains_cells_timed_the_old_way(tmp_path, counted_fits):
    """Runs written before walls left the test evaluations out (no "timing") are not mixed with
    new ones: the same grid trains them again."""
    out = str(tmp_path / "cmp")
    grid = ["compare", *TINY, "--strategies", "full,random", "--fractions", "0.2", "--seeds", "0",
            "--no-budget-baselines", "--out", out]
    assert main(grid) == 0 and counted_fits == ["full", "random"]
    path = os.path.join(out, "compare.json")
    saved = _strict(open(path).read())
    del saved["runs"][1]["timing"]  # random's run, as an older datadiet wrote it
    with open(path, "w") as f:
        json.dump(saved, f)
    assert main(grid) == 0 and counted_fits == ["full", "random", "random"]


def test_compare_resume_continues_a_folder_cell_by_cell(tmp_path, capsys, monkeypatch):
    """A compare killed after its first cell: that cell is on disk and ``--resume`` skips it."""
    out = str(tmp_path / "cmp")
    real, calls = Trainer.fit, []

    def dies_on_the_second(self):
        calls.append(self.config.strategy)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "fit", dies_on_the_second)
    grid = [*TINY, "--strategies", "full,random", "--fractions", "0.2", "--seeds", "0", "--no-budget-baselines"]
    with pytest.raises(KeyboardInterrupt):
        main(["compare", *grid, "--out", out])
    saved = _strict(open(os.path.join(out, "compare.json")).read())
    assert [r["strategy"] for r in saved["runs"]] == ["full"]
    assert main(["compare", *grid, "--resume", out]) == 0
    assert calls == ["full", "random", "random"]
    assert main(["compare", *grid, "--resume", str(tmp_path / "nothing")]) == 2
    assert "no compare.json there" in _error(capsys)


def test_the_grid_is_planned_with_every_strategys_parameters_checked():
    from datadiet.train.config import TrainConfig

    with_baselines = compare_module.plan(TrainConfig(epochs=1), ["full", "random"], [0.1, 0.3], [0])
    assert [(c.strategy, c.fraction, c.strategy_params) for c in with_baselines] == [
        ("full", None, {}), ("random", 0.1, {}), ("random", 0.3, {}), ("full", None, {"budget": 0.1}),
        ("full", None, {"budget": 0.3})]
    cells = compare_module.plan(TrainConfig(epochs=1), ["full", "random"], [0.1, 0.3], [0, 1], baselines=False)
    assert [(c.strategy, c.fraction, c.seed) for c in cells] == [
        ("full", None, 0), ("random", 0.1, 0), ("random", 0.3, 0), ("full", None, 1), ("random", 0.1, 1),
        ("random", 0.3, 1)]
    with pytest.raises(ValueError, match="--fractions: 0.1 given more than once"):
        compare_module.plan(TrainConfig(epochs=1), ["random"], [0.1, 0.1], [0])


# -- ensemble / reproduce: the same rules ---------------------------------------------------------------
def test_reproduce_refuses_bad_lists_before_training_and_reuses_the_same_command(tmp_path, capsys, counted_fits):
    out = str(tmp_path / "rep")
    base = ["reproduce", "infobatch", *TINY, "--seeds", "0", "--out", out]
    assert main([*base, "--prunes", "0.3,-0.1"]) == 2
    assert "--prunes: -0.1" in _error(capsys)
    assert main(["reproduce", "cached-gradmatch", *TINY, "--replay-model", "nope", "--out", out]) == 2
    assert "--replay-model 'nope'" in _error(capsys)
    assert counted_fits == [] and not os.path.exists(out)
    assert main([*base, "--prunes", "0.3"]) == 0
    trained = len(counted_fits)
    assert main([*base, "--prunes", "0.3"]) == 0
    assert len(counted_fits) == trained  # reused
    assert _strict(open(os.path.join(out, "infobatch.json")).read())["setting"]["prunes"] == [0.3]
    capsys.readouterr()
    assert main([*base, "--prunes", "0.5"]) == 2
    assert "another setting (prunes: folder [0.3], this run [0.5])" in _error(capsys)


def test_ensemble_refuses_more_members_than_samples_before_the_warm_up(tmp_path, capsys, counted_fits):
    assert main(["ensemble", *TINY, "--epochs", "2", "--warmup-epochs", "0", "--phases", "1", "--members", "5000",
                 "--out", str(tmp_path / "e")]) == 2
    assert "n_models = 5000" in _error(capsys)
    assert counted_fits == []


# -- non-finite training stops; every JSON file is JSON ------------------------------------------------
def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step(tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(["train", *TINY, "--batch-size", "64", "--lr", "inf", "--out", str(out)]) == 2
    assert "config lr = inf" in _error(capsys)  # refused before training
    assert main(["train", *TINY, "--batch-size", "64", "--lr", "1e30", "--checkpoint-every", "1",
                 "--out", str(out)]) == 1
    line = _error(capsys)
    assert "stopped: the training loss is nan at epoch 0, step 2" in line and "the last checkpoint" in line
    assert not (out / "summary.json").exists()
    from datadiet.train import checkpoint

    assert checkpoint.load(str(out / "checkpoint.pt"))["step"] == 1  # the last good one, not step 2's


def test_skipped_non_finite_steps_leave_valid_json(tmp_path):
    out = tmp_path / "diverged"
    assert main(["train", *TINY, "--lr", "1e30", "--nonfinite-steps", "1000000", "--out", str(out)]) == 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = _strict(line)
        assert record["test_loss"] is None  # NaN written as null
    summary = _strict((out / "summary.json").read_text())
    assert summary["test_loss"] is None
    assert runfolder.dumps({"x": [float("inf"), 1.0, {"y": float("nan")}]}) == '{"x": [null, 1.0, {"y": null}]}'


# -- a bad sample stops the run after a checkpoint ------------------------------------------------------
def _broken_image_run(tmp_path, split: str, folder: str, epochs: int):
    """An image folder with one file of ``split``/``folder`` emptied, the ``train`` command on it,
    and a function that puts the file back."""
    root = pathlib.Path(image_folder(str(tmp_path / "img"), classes=2, per_class=8))
    victim = sorted((root / split / folder).iterdir())[0]
    good = victim.read_bytes()
    victim.write_bytes(b"")
    argv = ["train", "--dataset", f"imagefolder:{root}", "--model", "cnn", "--image-size", "16", "--epochs",
            str(epochs), "--batch-size", "4", "--val-fraction", "0", "--no-progress", "--out", str(tmp_path / "run")]
    return victim, argv, lambda: victim.write_bytes(good)


@requires_torchvision
def test_an_unreadable_image_stops_training_after_a_checkpoint_and_resumes_once_fixed(tmp_path, capsys):
    victim, argv, repair = _broken_image_run(tmp_path, "train", "class_1", epochs=2)
    out = tmp_path / "run"
    assert main(argv) == 1
    line = _error(capsys)
    assert f"class_1/{victim.name}" in line and "cannot be read" in line and f"--resume {out}" in line
    assert (out / "checkpoint.pt").exists()
    repair()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@requires_torchvision
def test_an_unreadable_test_image_stops_after_the_trained_epoch_is_checkpointed(tmp_path, capsys):
    _, argv, repair = _broken_image_run(tmp_path, "val", "class_0", epochs=1)
    out = tmp_path / "run"
    assert main(argv) == 1
    assert "val sample" in _error(capsys)
    repair()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # evaluates; trains nothing again
    record = _strict((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["steps"] == 4 and record["samples"] == 16


# -- a run folder never imports code ----------------------------------------------------------------
def test_resume_never_imports_a_model_named_by_the_folder(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_models.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": "evil_models:make", "epochs": 1}))
    assert main(["train", "--resume", str(out)]) == 2
    line = _error(capsys)
    assert "'evil_models:make' imports code" in line and "--model evil_models:make" in line
    assert not marker.exists()
    for bad, message in (("[1, 2]", "holds list"), ("{nope", "cannot be read as JSON"),
                         ('{"modle": "mlp"}', "unknown option 'modle'")):
        (out / "config.json").write_text(bad)
        assert main(["train", "--resume", str(out)]) == 2
        assert message in _error(capsys)


@requires_torchvision
def test_skip_bad_samples_leaves_unreadable_files_out_and_lists_them(tmp_path):
    root = pathlib.Path(image_folder(str(tmp_path / "img"), classes=2, per_class=8))
    broken = [sorted((root / "train" / "class_1").iterdir())[0], sorted((root / "val" / "class_0").iterdir())[0]]
    for path in broken:
        path.write_bytes(b"")
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"imagefolder:{root}", "--model", "cnn", "--image-size", "16", "--epochs", "1",
            "--batch-size", "4", "--val-fraction", "0", "--no-progress", "--out", str(out), "--skip-bad-samples"]
    assert main(argv) == 0
    summary = _strict((out / "summary.json").read_text())
    assert sorted(os.path.basename(r["path"]) for r in summary["skipped_samples"]) == sorted(p.name for p in broken)
    assert {r["split"] for r in summary["skipped_samples"]} == {"train", "val"}
    assert summary["samples"] == 15  # 16 training images, one left out
    assert _strict((out / "metrics.jsonl").read_text().splitlines()[0])["skipped_samples"] == 2


def test_under_torchrun_rank_0s_refusal_reaches_every_rank_at_once(tmp_path):
    """Only rank 0 claims the folder; the others must learn of its refusal (not wait in their next
    collective until the timeout)."""
    from tests.subprocesses import TORCHRUN

    out = tmp_path / "ddp"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    done = subprocess.run([*TORCHRUN, "-m", "datadiet", "train", *TINY, "--out", str(out), "--dist-timeout", "600"],
                          env=env(), timeout=300, capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.count(f"--out {out}: holds a previous run") == 2, done.stderr[-3000:]  # both ranks
    assert (out / "summary.json").read_text() == "{}"


def test_a_killed_runs_lingering_children_are_waited_for_not_reported_as_a_writer(tmp_path):
    """Forked loader workers share the lock and outlive a SIGKILLed parent by a few seconds; the
    next run waits for them instead of refusing (a live holder is refused at once, above)."""
    path = str(tmp_path / "killed")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from datadiet import runfolder
        folder = runfolder.claim({path!r})
        if os.fork() == 0:
            time.sleep(1.5)
            os._exit(0)
        print("held", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, env=env(), text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=60)
    runfolder.claim(path).release()
