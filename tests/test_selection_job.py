"""``datadiet select`` / ``datadiet.selection``: a subset selected once, written, checked on load,
trained by ``train --subset`` exactly as through the Python API, and every refusal one line."""

import csv
import dataclasses
import io
import json
import os

import numpy as np
import pytest
import torch

from datadiet import runfolder
from datadiet.cli import main as cli
from datadiet.selection import files, load, select_dataset
from datadiet.strategies import FixedSubset
from datadiet.train.config import TrainConfig
from datadiet.train.datasets import load as load_data
from datadiet.train.trainer import Trainer
from train_fixtures import image_folder, requires_torchvision

DIGITS_TRAIN = 1438


def config(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", epochs=2, batch_size=64, seed=0, progress=False, device="cpu",
                out=None if out is None else str(out))
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch MLP run folder on digits: the scorer given by --weights."""
    out = tmp_path_factory.mktemp("run") / "mlp"
    Trainer(config(out)).fit()
    return out


def test_select_writes_a_checked_subset_and_train_uses_it(tmp_path, capsys):
    sel = tmp_path / "sel"
    assert cli(["select", "--strategy", "el2n", "--proxy-epochs", "2", "--fraction", "0.3", "--out", str(sel),
                "--no-progress"]) == 0
    assert f"wrote {sel}/subset.csv" in capsys.readouterr().out
    chosen = load(str(sel))
    bundle = load_data("digits")
    m = chosen.manifest
    assert m["dataset"]["samples"] == DIGITS_TRAIN and m["model"]["source"] == "proxy"
    assert m["strategy"]["name"] == "el2n" and m["strategy"]["params"]["pretrain_epochs"] == 0
    assert len(chosen.indices) == m["size"] and torch.equal(chosen.indices, torch.sort(chosen.indices).values)
    assert abs(len(chosen.indices) - 0.3 * DIGITS_TRAIN) <= 10  # per-class budgets round up
    assert torch.equal(chosen.labels, bundle.labels[chosen.indices]) and bool((chosen.weights == 1).all())
    assert set(chosen.scores) >= {"loss", "el2n", "grad_norm", "margin"}
    el2n = torch.from_numpy(chosen.scores["el2n"])
    assert el2n.shape == (DIGITS_TRAIN,) and bool(torch.isfinite(el2n).all())
    # per class, the kept samples are the hardest by the recorded EL2N
    for c in range(10):
        of_class = (bundle.labels == c).nonzero().flatten()
        kept = set(chosen.indices.tolist()) & set(of_class.tolist())
        threshold = min(float(el2n[i]) for i in kept)
        assert all(float(el2n[i]) <= threshold for i in set(of_class.tolist()) - kept)
    # the CSV alone, as a tool without datadiet reads it
    with open(sel / "subset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == chosen.indices.tolist()
    assert cli(["train", "--subset", str(sel), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == -(-len(chosen.indices) // 64)


def test_train_subset_equals_the_python_api(tmp_path, trained):
    chosen = select_dataset(config(tmp_path / "sel", strategy="gradmatch", fraction=0.2), weights=str(trained),
                            progress=False)
    assert not bool((chosen.weights == 1).all())  # GradMatch's weights travel with the subset
    by_cli = Trainer(config(tmp_path / "a", subset=str(tmp_path / "sel"))).fit()
    by_api = Trainer(config(tmp_path / "b", val_fraction=0.0),
                     FixedSubset(indices=chosen.indices, weights=chosen.weights)).fit()
    assert by_cli["steps"] == by_api["steps"] and by_cli["test_acc"] == by_api["test_acc"]
    a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_weights_from_a_run_folder_its_checkpoint_or_a_state_dict_agree(tmp_path, trained):
    model = Trainer(config(None)).model
    from datadiet.train import checkpoint

    model.load_state_dict(checkpoint.load(str(trained / "checkpoint.pt"))["model"])
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    picks = []
    for i, weights in enumerate((trained, trained / "checkpoint.pt", tmp_path / "plain.pt")):
        chosen = select_dataset(config(tmp_path / f"s{i}", strategy="margin", fraction=0.1), weights=str(weights),
                                progress=False)
        assert chosen.manifest["model"]["source"] == "weights"
        picks.append((chosen.indices, chosen.manifest["model"]["fingerprint"]))
    assert all(torch.equal(p[0], picks[0][0]) and p[1] == picks[0][1] for p in picks)


def test_random_and_glister_select_without_and_with_a_held_out_split(tmp_path, trained):
    rnd = select_dataset(config(tmp_path / "r", strategy="random", fraction=0.1), progress=False)
    again = select_dataset(config(tmp_path / "r2", strategy="random", fraction=0.1), progress=False)
    assert torch.equal(rnd.indices, again.indices) and rnd.scores == {}
    assert rnd.manifest["pool"]["held_out"] == 0
    gl = select_dataset(config(tmp_path / "g", strategy="glister", fraction=0.1), weights=str(trained),
                        progress=False)
    held = gl.manifest["pool"]["held_out"]
    assert held == int(0.1 * DIGITS_TRAIN) and np.isnan(gl.scores["loss"]).sum() == held
    assert np.isfinite(gl.scores["loss"][gl.indices.numpy()]).all()  # chosen from the pool, by dataset index


def test_the_subset_round_trips_and_any_change_is_refused(tmp_path):
    folder = tmp_path / "sel"
    select_dataset(config(folder, strategy="random", fraction=0.05), progress=False)
    chosen = load(str(folder))
    bundle = load_data("digits")
    assert len(chosen.subset(bundle.train)) == len(chosen.indices)
    order = list(chosen.sampler(torch.Generator().manual_seed(0)))
    assert sorted(order) == chosen.indices.tolist()
    with pytest.raises(ValueError, match="this dataset has 10"):
        chosen.subset(torch.utils.data.TensorDataset(torch.zeros(10)))

    data = (folder / "subset.csv").read_bytes()
    (folder / "subset.csv").write_bytes(data.replace(b",1.0\r\n", b",2.0\r\n", 1))
    with pytest.raises(ValueError, match="subset.csv does not match the digest"):
        load(str(folder))

    def rewrite(rows_text: str) -> None:  # a consistent folder with these rows: the row checks must catch it
        data = rows_text.encode()
        runfolder.write_bytes(str(folder / "subset.csv"), data)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["subset.csv"] = files.sha256(data)
        runfolder.write_json(str(folder / "manifest.json"), manifest)

    header = "index,id,label,weight\n"
    for rows, message in ((f"{DIGITS_TRAIN},x,0,1.0\n", "outside the dataset's 1438"), ("3,3,0,1.0\n3,3,0,1.0\n",
                          "lists a sample twice"), ("3,3,0,nan\n", "weight 'nan'"), ("3,3,0\n", "line 2"),
                          ("3,3,zero,1.0\n", "line 2")):
        rewrite(header + rows)
        with pytest.raises(ValueError, match=message):
            load(str(folder))
    rewrite("idx,id,label,weight\n")
    with pytest.raises(ValueError, match="must start with the header"):
        load(str(folder))
    (folder / "manifest.json").write_text('{"format": "something/2"}')
    with pytest.raises(ValueError, match="format 'something/2'"):
        load(str(folder))
    os.remove(folder / "manifest.json")
    with pytest.raises(ValueError, match="manifest.json is missing"):
        load(str(folder))


def test_scores_are_plain_arrays(tmp_path, trained):
    chosen = select_dataset(config(tmp_path / "s", strategy="loss", fraction=0.1), weights=str(trained),
                            progress=False)
    with np.load(io.BytesIO((tmp_path / "s" / "scores.npz").read_bytes()), allow_pickle=False) as arrays:
        assert sorted(arrays.files) == sorted(chosen.scores) and arrays["loss"].dtype == np.float32


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "infobatch", "--fraction", "0.3"], "strategy 'infobatch' is not one-shot"),
    (["--strategy", "el2n", "--fraction", "0.3"], "give --weights PATH"),
    (["--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "1", "--weights", "x"], "not both"),
    (["--strategy", "random", "--fraction", "0.3", "--proxy-epochs", "1"], "scores no model"),
    (["--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "0"], "must be an int >= 1"),
    (["--strategy", "el2n", "--fraction", "0.3", "--weights", "/nonexistent/w.pt"], "does not exist"),
    (["--strategy", "el2n", "--proxy-epochs", "1"], "give --fraction"),
    (["--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "1", "--param", "pretrain_epochs=3"],
     "use --proxy-epochs"),
    (["--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "1", "--param", "warm=0.5"],
     "warm = 0.5 is not used here (a selection job selects once)"),
    (["--strategy", "loss", "--fraction", "0.3", "--proxy-epochs", "1", "--param", "source='training'"],
     "source = 'training' is not used here"),
    (["--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "1", "--dataset", "diabetes"], "regression"),
    (["--strategy", "glister", "--fraction", "0.3", "--proxy-epochs", "1", "--val-fraction", "0"],
     "needs a held-out split"),
])
def test_select_refuses_bad_options_in_one_line(tmp_path, capsys, argv, message):
    assert cli(["select", *argv, "--out", str(tmp_path / "sel"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "sel" / "manifest.json").exists()


def test_refusals_that_need_a_trained_model_or_a_finished_folder(tmp_path, capsys, trained):
    out = str(tmp_path / "sel")
    assert cli(["select", "--strategy", "loss", "--fraction", "0.1", "--weights", str(trained), "--model", "cnn",
                "--out", out, "--no-progress"]) == 2
    assert "are not weights of model 'cnn'" in capsys.readouterr().err
    assert cli(["select", "--strategy", "random", "--fraction", "0.1", "--out", out, "--no-progress"]) == 0
    assert cli(["select", "--strategy", "random", "--fraction", "0.2", "--out", out, "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli(["select", "--strategy", "random", "--fraction", "0.2", "--out", out, "--overwrite",
                "--no-progress"]) == 0
    assert load(out).manifest["strategy"]["fraction"] == 0.2
    for argv, message in ((["--dataset", "digits:x2"], "selected from another dataset"),
                          (["--strategy", "el2n"], "cannot be combined with subset"),
                          (["--fraction", "0.5"], "cannot be combined with subset")):
        assert cli(["train", "--subset", out, *argv, "--epochs", "1", "--out", str(tmp_path / "t"),
                    "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert cli(["train", "--subset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t"), "--no-progress"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_the_dataset_fingerprint_follows_files_and_tensors():
    bundle = load_data("digits")
    a = files.dataset_fingerprint(bundle.train, bundle.labels)
    assert a == files.dataset_fingerprint(bundle.train, bundle.labels) and a["by"] == "tensors"
    x, y = bundle.train.tensors
    changed = torch.utils.data.TensorDataset(x.clone().index_fill_(0, torch.tensor([5]), 0.0), y)
    assert files.dataset_fingerprint(changed, bundle.labels)["sha256"] != a["sha256"]


@requires_torchvision
def test_a_cifar_fingerprint_follows_its_images(tmp_path):
    from train_fixtures import cifar10

    bundle = load_data(f"cifar10:{cifar10(tmp_path)}")
    a = files.dataset_fingerprint(bundle.train, bundle.labels)
    assert a["by"] == "tensors" and a["samples"] == len(bundle.train)
    bundle.train.data[3, 0, 0, 0] ^= 1  # one pixel of one image
    assert files.dataset_fingerprint(bundle.train, bundle.labels)["sha256"] != a["sha256"]


def embeddings(n=300, d=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, d, generator=g)
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, d, generator=g), labels


def test_features_file_npz_and_pt_select_and_train_a_linear_head(tmp_path):
    x, y = embeddings(380)
    x, y, tx, ty = x[:300], y[:300], x[300:], y[300:]  # the same clusters
    np.savez(tmp_path / "emb.npz", features=x.numpy(), labels=y.numpy(), ids=np.array([f"img{i:04d}.jpg" for i in
                                                                                       range(300)]))
    torch.save({"features": x, "labels": y, "test_features": tx, "test_labels": ty}, tmp_path / "emb.pt")
    chosen = select_dataset(config(tmp_path / "s", dataset=f"features:{tmp_path / 'emb.npz'}", model="linear",
                                   strategy="el2n", fraction=0.2), proxy_epochs=3, progress=False)
    assert chosen.manifest["dataset"]["samples"] == 300 and len(chosen.indices) == 60
    assert chosen.ids == [f"img{i:04d}.jpg" for i in chosen.indices.tolist()]
    assert torch.equal(chosen.labels, y[chosen.indices])
    other = select_dataset(config(tmp_path / "s2", dataset=f"features:{tmp_path / 'emb.pt'}", model="linear",
                                  strategy="el2n", fraction=0.2), proxy_epochs=3, progress=False)
    assert torch.equal(other.indices, chosen.indices)  # the same rows, however stored
    summary = Trainer(config(tmp_path / "t", dataset=f"features:{tmp_path / 'emb.pt'}", model="linear",
                             subset=str(tmp_path / "s2"), epochs=5, lr=0.1)).fit()
    assert summary["test_acc"] > 0.9  # well-separated clusters
    no_test = Trainer(config(tmp_path / "t2", dataset=f"features:{tmp_path / 'emb.npz'}", model="linear",
                             epochs=1)).fit()
    assert no_test["test_acc"] is None


@pytest.mark.parametrize("content, message", [
    (lambda x, y: {"features": x}, "needs an array 'labels'"),
    (lambda x, y: {"features": x[:, 0], "labels": y}, "features must be a float array"),
    (lambda x, y: {"features": x, "labels": y.float()}, "labels must be an int array"),
    (lambda x, y: {"features": x, "labels": y[:-1]}, "features has 300 rows, labels 299"),
    (lambda x, y: {"features": x.index_fill(0, torch.tensor([7]), float("nan")), "labels": y}, "row 7 is not finite"),
    (lambda x, y: {"features": x, "labels": y - 1}, "must lie in 0..2"),
    (lambda x, y: {"features": x, "labels": y * 0}, "1 class"),
    (lambda x, y: {"features": x, "labels": y, "test_features": x}, "both test_features and test_labels"),
])
def test_features_files_are_checked(tmp_path, content, message):
    x, y = embeddings()
    torch.save(content(x, y), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        load_data(f"features:{tmp_path / 'bad.pt'}")


def test_features_files_never_run_code(tmp_path):
    x, y = embeddings()
    np.savez(tmp_path / "obj.npz", features=x.numpy(), labels=y.numpy(), ids=np.array([{"a": 1}] * 300, dtype=object))
    with pytest.raises(ValueError, match="other than named plain arrays"):
        load_data(f"features:{tmp_path / 'obj.npz'}")

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"features": x, "labels": y, "x": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_data(f"features:{tmp_path / 'evil.pt'}")
    assert not (tmp_path / "pwned").exists()
    for name, message in (("emb.csv", "must end in .npz or .pt"), ("missing.npz", "does not exist")):
        (tmp_path / "emb.csv").write_text("1,2\n")
        with pytest.raises(ValueError, match=message):
            load_data(f"features:{tmp_path / name}")


SLOW_MODEL = '''
import time
from torch import nn


class Slow(nn.Module):
    """An MLP whose evaluation pass sleeps 50 ms a batch: a scoring pass long enough to kill."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        if not self.training:
            time.sleep(0.05)
        return self.head(self.body(x))


def make(num_classes, input_shape):
    return Slow(num_classes, input_shape)
'''


def test_a_killed_select_continues_from_its_shards_to_the_same_subset(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    torch.manual_seed(3)
    sys.path.insert(0, str(tmp_path))
    try:
        import slowmodel
        torch.save(slowmodel.make(10, (1, 8, 8)).state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))

    def command(out, weights="w.pt"):
        return [sys.executable, "-m", "datadiet", "select", "--model", "slowmodel:make", "--weights",
                str(tmp_path / weights), "--strategy", "el2n", "--fraction", "0.3", "--eval-batch-size", "16",
                "--shard-size", "160", "--device", "cpu", "--no-progress", "--out", str(tmp_path / out)]

    whole = subprocess.run(command("whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "killed" / ".datadiet-shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(shards.glob("*/*.sha256"))) >= 3:  # a shard's digest is written after the shard
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "killed" / "manifest.json").exists(), "the job ended before it was killed"
    other = {k: v + 1 for k, v in torch.load(tmp_path / "w.pt").items()}
    torch.save(other, tmp_path / "other.pt")
    refused = subprocess.run(command("killed", "other.pt"), env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "holds the scores of another selection" in refused.stderr
    again = subprocess.run(command("killed"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    shards = json.loads((tmp_path / "killed" / "manifest.json").read_text())["shards"]
    assert shards["reused"] >= 3 and shards["scored"] + shards["reused"] == 9
    for name in ("subset.csv", "scores.npz"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert not (tmp_path / "killed" / ".datadiet-shards").exists()  # dropped once the subset is written


def test_a_proxy_is_trained_once_and_read_back_by_the_same_job(tmp_path):
    cfg = config(tmp_path / "s", strategy="el2n", fraction=0.3)
    first = select_dataset(cfg, proxy_epochs=2, progress=False)
    assert first.manifest["model"]["reused"] is False and (tmp_path / "s" / "proxy.pt").exists()
    os.remove(tmp_path / "s" / "manifest.json")  # as if killed before the manifest was written
    again = select_dataset(cfg, proxy_epochs=2, progress=False)
    assert again.manifest["model"]["reused"] is True
    assert torch.equal(again.indices, first.indices) and again.manifest["model"]["fingerprint"] == first.manifest[
        "model"]["fingerprint"]
    os.remove(tmp_path / "s" / "manifest.json")
    with pytest.raises(ValueError, match="proxy of another selection"):
        select_dataset(dataclasses.replace(cfg, lr=0.01), proxy_epochs=2, progress=False)
    fresh = select_dataset(dataclasses.replace(cfg, lr=0.01, overwrite=True), proxy_epochs=2, progress=False)
    assert fresh.manifest["model"]["reused"] is False


def test_a_users_files_in_out_are_never_removed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "sel"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "train-000.tar").write_bytes(b"user data")
    assert cli(["select", "--strategy", "random", "--fraction", "0.1", "--device", "cpu", "--out", str(out),
                "--no-progress"]) == 0
    assert (out / "shards" / "train-000.tar").read_bytes() == b"user data"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "subset.csv").write_text("my own list\n")
    assert cli(["select", "--strategy", "random", "--fraction", "0.1", "--device", "cpu", "--out", str(mine),
                "--no-progress"]) == 2
    assert "holds a previous run (subset.csv)" in capsys.readouterr().err
    assert (mine / "subset.csv").read_text() == "my own list\n"


def test_ids_with_separators_quotes_and_line_breaks_round_trip(tmp_path):
    ids = ["a,b.jpg", 'q"uote.jpg', "line\nbreak.jpg", "cr\rname.jpg", "caf\udce9.jpg"]  # the last: non-UTF-8 bytes
    data = files.subset_csv(torch.arange(5), ids, torch.zeros(5, dtype=torch.int64), torch.ones(5))
    assert files._parse_rows(str(tmp_path), data, 5)[1] == ids


def test_train_subset_maps_dataset_indices_past_skipped_samples(tmp_path):
    """With a sample left out as unreadable the pool is no longer 0..n-1: the subset's dataset
    indices are mapped to pool positions."""
    from datadiet.train.datasets import DataBundle

    bundle = load_data("digits")
    skipped = DataBundle(bundle.train, bundle.train_eval, bundle.test, bundle.num_classes, bundle.input_shape,
                         bundle.labels, skipped=[{"split": "train", "index": 0, "path": "x", "error": "bad"}])
    select_dataset(config(tmp_path / "s", strategy="random", fraction=0.05), progress=False)
    chosen = load(str(tmp_path / "s"))
    if 0 in chosen.indices.tolist():
        pytest.skip("the random subset holds sample 0")
    trainer = Trainer(config(tmp_path / "t", subset=str(tmp_path / "s"), epochs=1), data=skipped)
    trainer.fit()
    pool = trainer.train_set.indices
    assert sorted(pool[i] for i in trainer.driver.strategy.selection.indices.tolist()) == chosen.indices.tolist()


def test_features_npz_oddities_are_one_line_errors(tmp_path):
    x, y = embeddings()
    np.save(tmp_path / "one.npy", x.numpy())
    os.replace(tmp_path / "one.npy", tmp_path / "one.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(tmp_path / "ids2d.npz", features=x.numpy(), labels=y.numpy(), ids=np.zeros((300, 2)))
    np.savez(tmp_path / "idsbytes.npz", features=x.numpy(), labels=y.numpy(), ids=np.array([b"a%d" % i for i in
                                                                                        range(300)]))
    for name, message in (("one.npz", "named plain arrays"), ("broken.npz", "not a readable .npz"),
                          ("ids2d.npz", "ids must be a 1-D array of strings")):
        with pytest.raises(ValueError, match=message):
            load_data(f"features:{tmp_path / name}")
    assert load_data(f"features:{tmp_path / 'idsbytes.npz'}").train.ids[:2] == ["a0", "a1"]


@requires_torchvision
def test_an_image_folder_selection_names_its_files_and_scores_at_a_smaller_size(tmp_path, capsys):
    from PIL import Image

    from datadiet.train.images import read_rgb

    image_folder(tmp_path / "imgs", per_class=8, size=24)
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    common = ["select", "--dataset", spec, "--model", "cnn", "--strategy", "el2n", "--fraction", "0.5",
              "--proxy-epochs", "1", "--image-size", "24", "--device", "cpu", "--no-progress"]
    assert cli([*common, "--out", str(tmp_path / "full")]) == 0
    assert cli([*common, "--score-image-size", "12", "--out", str(tmp_path / "small")]) == 0
    full, small = load(str(tmp_path / "full")), load(str(tmp_path / "small"))
    assert full.manifest["dataset"]["by"] == "files" and small.manifest["dataset"]["score_image_size"] == 12
    assert all(os.path.isfile(i) and i.startswith(str(tmp_path / "imgs" / "train")) for i in full.ids)
    assert full.manifest["model"]["fingerprint"] == small.manifest["model"]["fingerprint"]  # the same proxy
    assert not np.array_equal(full.scores["loss"], small.scores["loss"])  # other pixels scored
    assert cli([*common[:-1], "--dataset", "digits", "--score-image-size", "12", "--out", str(tmp_path / "d")]) == 2
    assert "score_image_size = 12: applies to imagefolder" in capsys.readouterr().err
    # JPEGs decode at a reduced scale in draft mode; the size asked for is a lower bound
    Image.new("RGB", (500, 375), (200, 30, 30)).save(tmp_path / "big.jpg", quality=90)
    assert read_rgb(str(tmp_path / "big.jpg")).size == (500, 375)
    small_jpeg = read_rgb(str(tmp_path / "big.jpg"), draft=64)
    assert small_jpeg.size == (125, 94) and small_jpeg.mode == "RGB"


def test_loader_workers_default_to_the_cpus_for_image_folders_only(monkeypatch):
    from datadiet.selection.job import default_workers

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers("imagefolder:/data") == max(1, min(16, cpus))
    assert default_workers("digits") == default_workers("features:x.npz") == default_workers("cifar10:/d") == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * cpus))  # more ranks than CPUs: one worker each
    assert default_workers("imagefolder:/data") == 1


def test_the_manifest_records_peak_memory(tmp_path):
    chosen = select_dataset(config(tmp_path / "m", strategy="random", fraction=0.2), progress=False)
    memory = chosen.manifest["memory"]
    assert memory["host_peak_bytes"] > 50 * 2 ** 20 and memory["device_peak_bytes"] is None
