"""torch.distributed with 2 gloo processes on CPU (torchrun): distributed scoring equals the
single-process table, 2 ranks select the same subset as 1 rank, a short DDP run trains (with the
training losses and correctness gathered over ranks), a 2-rank run killed with SIGKILL resumes to
the parameters of the run never stopped (each rank's Selective-Backprop history and RNG restored),
and a DDP resume of another configuration is refused on every rank."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from datadiet.scores import grand, score_dataset
from datadiet.train import checkpoint, datasets, models
from datadiet.train.data import IndexedDataset
from tests.subprocesses import REPO, TORCHRUN, env

TIMEOUT = 300


def _torchrun(*args):
    done = subprocess.run([*TORCHRUN, *args], env=env(), timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_distributed_scoring_equals_single_process(tmp_path):
    out = str(tmp_path / "table.pt")
    _torchrun(os.path.join(REPO, "tests", "dist_score.py"), out)
    got = torch.load(out)
    bundle = datasets.load("digits")
    torch.manual_seed(0)
    model = models.build("mlp", 10, (1, 8, 8))
    expected = score_dataset(model, IndexedDataset(bundle.train), features=True, errors=True, batch_size=100)
    for name, value in vars(expected).items():
        if value is not None:
            assert torch.allclose(got[name].float(), value.float(), rtol=1e-5, atol=1e-6), name
    # GraNd over inits: every rank trains the same seeded models, the scoring pass is sharded
    subset = torch.utils.data.Subset(bundle.train, range(150))
    single = grand(lambda: models.build("mlp", 10, (1, 8, 8)), subset, inits=2, epochs=1, seed=3, batch_size=32)
    torch.testing.assert_close(got["__grand__"], single.per_init, rtol=1e-5, atol=1e-6)


def _tables(out, ranks):
    os.makedirs(out)
    script = os.path.join(REPO, "tests", "dist_tables.py")
    command = [sys.executable, script, out] if ranks == 1 else [*TORCHRUN[:-1], str(ranks), script, out]
    done = subprocess.run(command, env=env(), timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(ranks)]


@pytest.mark.parametrize("ranks", [2, 3])
def test_score_tables_go_where_asked_and_selections_match_one_process(tmp_path, ranks):
    """gather="all" / "root" / "local" put the rows on every rank / rank 0 / the rank that scored
    them; route_rows delivers each row to its owner; GradMatch per class (each rank solving the
    classes it owns, so no rank holds the whole table), GradMatch global (rank 0) and GLISTER
    (each rank scoring the candidates it holds; batched, naive and exact greedy) select exactly
    what one process selects, and every rank trains on it."""
    single = _tables(str(tmp_path / "one"), 1)[0]
    got = _tables(str(tmp_path / "many"), ranks)
    full = single["table/all"]
    n = len(full["loss"])
    for rank, saved in enumerate(got):
        for name, value in full.items():
            torch.testing.assert_close(saved["table/all"][name], value, rtol=1e-5, atol=1e-6)
            local = saved["table/local"]
            assert torch.equal(local["index"], torch.arange(rank, n, ranks))
            torch.testing.assert_close(local[name], value[rank::ranks], rtol=1e-5, atol=1e-6)
        if rank == 0:
            for name, value in full.items():
                torch.testing.assert_close(saved["table/root"][name], value, rtol=1e-5, atol=1e-6)
        else:
            assert saved["table/root"] is None
        sent = [torch.arange(r * 100, r * 100 + 7 + 5 * r) for r in range(ranks)]
        owners = [(ids * 7 + 3) % ranks for ids in sent]
        for o in owners:
            o[o == ranks - 1] = 0
        expected = torch.cat([ids[o == rank] for ids, o in zip(sent, owners)])
        for routed, ids in ((saved["routed"], expected), (saved["routed_blocks"], expected),
                            (saved["routed_placed"], expected.flip(0))):
            assert torch.equal(routed["id"], ids) and torch.equal(routed["odd"], ids % 2 == 1)
            assert torch.equal(routed["pair"], torch.stack([ids, -ids], 1).float())
        for case in ("per_class", "per_class_val", "full", "bias", "global", "glister", "glister_naive",
                     "glister_exact", "glister_blocks", "per_class_bf16", "glister_bf16", "two_classes",
                     "per_class_pool", "glister_pool", "el2n_pool"):
            mine, want = saved[case], single[case]
            assert torch.equal(mine["indices"], want["indices"]), (case, rank)
            if want["weights"] is None:
                assert mine["weights"] is None, case
            else:
                torch.testing.assert_close(mine["weights"], want["weights"], rtol=1e-4, atol=1e-6)
            if case.endswith("_pool") and rank == 0:
                assert mine["report"]["candidates"] == want["report"]["candidates"] < n, case
            if rank == 0:  # the same facts; a factorised residual may differ in its last bits
                assert mine["report"].keys() == want["report"].keys(), case
                for key, value in want["report"].items():
                    assert mine["report"][key] == (pytest.approx(value, rel=1e-4) if isinstance(value, float)
                                                   else value), (case, key)

        # the selection guard: the slowest round and the slowest training decide on every rank
        assert saved["guard"] == {"epochs": [0, 1, 2, 3], "intervals": []}, rank
    assert single["guard"] == {"epochs": [0], "intervals": [4]}  # one process: its own slow round


def test_driver_checkpoint_state_gives_each_rank_its_own_strategy_state(tmp_path):
    """What Lightning and accelerate save (rank 0 writes one file): every rank's Selective-Backprop
    history, each restored to its own rank."""
    _torchrun(os.path.join(REPO, "tests", "dist_driver_state.py"), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    saved = torch.load(tmp_path / "state.pt", weights_only=False)
    assert len(saved["strategy_by_rank"]) == 2
    histories = []
    for got in ranks:
        assert got["next_epoch"] == 1
        had, restored = _leaves(got["had"]), _leaves(got["restored"])
        assert had.keys() == restored.keys()
        for key, a in had.items():
            b = restored[key]
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key
        histories.append(torch.cat([v.flatten().double() for v in had.values() if isinstance(v, torch.Tensor)]))
    assert not torch.equal(histories[0], histories[1])  # the ranks' states differ: each got its own


def _leaves(state, path=""):
    """{path: leaf} of nested dicts / lists."""
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in _leaves(sub, f"{path}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, sub in enumerate(state) for k, v in _leaves(sub, f"{path}/{i}").items()}
    return {path: state}


def _train(out, *extra, ranks=2):
    args = ["-m", "datadiet", "train", "--strategy", "gradmatch", "--fraction", "0.3", "--epochs", "2", "--out",
            out, "--no-progress", "--dist-timeout", "120", *extra]
    if ranks == 1:
        subprocess.run([sys.executable, *args], env=env(), check=True, timeout=TIMEOUT, capture_output=True)
        return ""
    return _torchrun(*args)


def test_two_ranks_select_what_one_rank_selects_and_train(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _train(one, ranks=1)
    printed = _train(two)
    a = checkpoint.load(os.path.join(one, "checkpoint.pt"))["driver"]["sampler"]
    b = checkpoint.load(os.path.join(two, "checkpoint.pt"))["driver"]["sampler"]
    assert torch.equal(a["indices"], b["indices"]) and torch.allclose(a["weights"], b["weights"])
    summary = json.load(open(os.path.join(two, "summary.json")))
    per_rank = math.ceil(len(a["indices"]) / 2)
    assert summary["world_size"] == 2 and summary["steps"] == 2 * math.ceil(per_rank / 64)
    assert json.loads(printed.strip().splitlines()[-1])["epochs"] == 2


def test_ddp_resume_of_another_configuration_is_refused(tmp_path):
    out = str(tmp_path / "run")
    _train(out, "--strategy", "forgetting", "--epochs", "3", "--param", "count_epochs=2")  # gathers correctness
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    config["epochs"] = 4  # a longer run is another configuration: refused
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    done = subprocess.run([*TORCHRUN, "-m", "datadiet", "train", "--resume", out, "--no-progress"], env=env(),
                          timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode != 0 and "epochs: checkpoint 3, this run 4" in done.stderr


def _sb(out):
    return ["-m", "datadiet", "train", "--strategy", "selective_backprop", "--param", "rule=jiang", "--param",
            "start=0.0", "--epochs", "30", "--checkpoint-every", "3", "--out", out, "--no-progress",
            "--dist-timeout", "120"]


def test_ddp_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    _torchrun(*_sb(whole))
    proc = subprocess.Popen([*TORCHRUN, *_sb(killed)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while not os.path.exists(os.path.join(killed, "checkpoint.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(0.3)
    ranks = _descendants(proc.pid)  # some torch versions start the ranks in sessions of their own
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun (and the ranks, where they share its group)
    for pid in ranks:
        _kill(pid)
    proc.wait(timeout=60)
    _wait_until_gone(ranks)  # a rank still exiting (e.g. inside an fsync) holds the folder's lock
    assert not os.path.exists(os.path.join(killed, "summary.json")), "the run ended before it could be killed"
    state = checkpoint.load(os.path.join(killed, "checkpoint.pt"))
    assert state["epoch"] < 30 and len(state["ranks"]) == 2
    history = [r["strategy"]["selector"]["history"] for r in state["ranks"]]
    assert not torch.equal(history[0], history[1])  # each rank's own losses, both kept
    _torchrun("-m", "datadiet", "train", "--resume", killed, "--no-progress")
    expected, got = (checkpoint.load(os.path.join(d, "checkpoint.pt"))["model"] for d in (whole, killed))
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:  # already gone
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            found += children
            todo += children
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def _wait_until_gone(pids: list[int]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return
        time.sleep(0.01)
    raise AssertionError(f"processes {alive} still alive 60 s after SIGKILL")


def test_issue_14_strategies_under_two_ranks(tmp_path):
    """InfoBatch's table holds both ranks' losses (the same on each), a GradMatch cache written once
    is replayed by two ranks, AdaSelection keeps each rank's own weights in its checkpoint state."""
    common = ["-m", "datadiet", "train", "--epochs", "3", "--no-progress", "--dist-timeout", "120"]
    info = str(tmp_path / "infobatch")
    _torchrun(*common, "--strategy", "infobatch", "--out", info)
    ranks = checkpoint.load(os.path.join(info, "checkpoint.pt"))["ranks"]
    tables = [r["strategy"] for r in ranks]
    assert all(bool(t["seen"].all()) for t in tables)
    assert torch.equal(tables[0]["scores"], tables[1]["scores"])
    pruned = json.load(open(os.path.join(info, "summary.json")))["selections"]
    assert pruned[1]["pruned"] > 0 and pruned[1]["size"] < pruned[0]["size"]
    cache = str(tmp_path / "gm.cache")
    _torchrun(*common, "--strategy", "gradmatch", "--fraction", "0.3", "--every", "1", "--cache", cache,
              "--out", str(tmp_path / "gm"))
    _torchrun(*common, "--strategy", "cached_gradmatch", "--fraction", "0.3", "--every", "1", "--cache", cache,
              "--out", str(tmp_path / "replay"))
    recorded = checkpoint.load(os.path.join(tmp_path, "gm", "checkpoint.pt"))["driver"]["sampler"]
    replayed = checkpoint.load(os.path.join(tmp_path, "replay", "checkpoint.pt"))["driver"]["sampler"]
    assert torch.equal(recorded["indices"], replayed["indices"])
    assert torch.equal(recorded["weights"], replayed["weights"])
    assert sorted(os.listdir(tmp_path)) == ["gm", "gm.cache", "infobatch", "replay"]  # one cache, no leftovers
    ada = str(tmp_path / "ada")
    _torchrun(*common, "--strategy", "adaselection", "--param", "keep=0.3", "--out", ada)
    states = [r["strategy"]["selector"] for r in checkpoint.load(os.path.join(ada, "checkpoint.pt"))["ranks"]]
    assert all(s["steps"] > 0 for s in states) and not torch.equal(states[0]["weights"], states[1]["weights"])


def test_a_one_shot_proxy_is_trained_once_by_ddp(tmp_path):
    """The proxy of a one-shot strategy under 2 ranks is one DDP model (each rank half of every
    epoch): the ranks' tables agree, and differ from a proxy each rank trains alone on the whole
    pool, as every rank used to. A 2-rank EL2N run trains on its selection."""
    out = str(tmp_path / "proxy.pt")
    _torchrun(os.path.join(REPO, "tests", "dist_proxy.py"), out)
    got = torch.load(out)
    assert torch.equal(got["ddp"][0], got["ddp"][1])
    assert not torch.allclose(got["ddp"][0], got["local"], rtol=1e-3, atol=1e-4)
    run = str(tmp_path / "el2n")
    _torchrun("-m", "datadiet", "train", "--strategy", "el2n", "--fraction", "0.3", "--epochs", "3", "--no-progress",
              "--dist-timeout", "120", "--out", run)
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["world_size"] == 2 and summary["time"]["pretraining"] > 0
