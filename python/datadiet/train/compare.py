"""``datadiet compare``: every strategy × fraction × seed trained with the same options, then a
table (test accuracy mean ± std over seeds, wall time, speed-up against ``full``), CSV, JSON and a
plot of test accuracy against wall time. A strategy without a ``fraction`` (``full``,
``selective_backprop``) runs once per seed; its row's fraction is 1.0.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
from typing import Optional

from datadiet import runfolder, strategies
from datadiet._dist import init as dist_init
from datadiet._dist import world
from datadiet.train import datasets
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

DEFAULT_STRATEGIES = ("full", "random", "el2n", "gradmatch", "selective_backprop")


def split_params(params: dict, names: list[str]) -> dict[str, dict]:
    """``{"every": 5, "gradmatch.mode": "global"}`` → per strategy, where it takes the key."""
    out = {name: {} for name in names}
    for key, value in params.items():
        target, _, name = key.rpartition(".")
        if name == "fraction":
            raise ValueError(f"--param {key}: the fractions compared are set by --fractions")
        if target and target not in out:
            raise ValueError(f"--param {key}: {target!r} is not among the compared strategies {names}")
        takers = [s for s in ([target] if target else names) if name in strategies.parameters(s)]
        if not takers:
            raise ValueError(f"--param {key}: no compared strategy takes a parameter {name!r}")
        for s in takers:
            out[s][name] = value
    return out


def run(base: TrainConfig, names: list[str], fractions: list[float], seeds: list[int], out: str,
        log=print, *, data: Optional[datasets.DataBundle] = None) -> list[dict]:
    """Trains every cell of the grid not already finished in ``out`` (same configuration), writing
    the results after each cell; every cell's options are checked before the first one trains."""
    cells = plan(base, names, fractions, seeds)
    dist_init(base.device, base.dist_timeout)  # under torchrun: rank 0 alone claims the folder
    writes = world()[1] == 0  # under torchrun every rank trains; rank 0 writes
    with runfolder.on_rank0(lambda: _open(out, base)) as done:
        data = data if data is not None else base.load_data()  # once for every cell
        data.require_test("compare", base.dataset)
        datasets.require_classification(base.dataset, "compare (it ranks test accuracy)", data.task)
        runs = []
        for config in cells:
            key = _key(config)
            if key in done:
                runs.append(done[key])
                log(f"  {_label(done[key])}: finished earlier, reused")
                continue
            summary = Trainer(config, data=data).fit()
            result = {"strategy": config.strategy, "fraction": config.fraction or 1.0, "seed": config.seed,
                      "test_acc": summary["test_acc"], "wall": summary["wall"], "samples": summary["samples"],
                      "time": summary["time"], "curve": summary["curve"], "cell": json.loads(key)}
            runs.append(result)
            done[key] = result
            log(f"  {_label(result)}: test acc {summary['test_acc']:.4f} in {summary['wall']:.2f} s")
            if writes:  # each finished cell on disk at once
                _write(out, base, runs, done)
        rows = table(runs)
        if writes:
            _write(out, base, runs, done)
            runfolder.write_bytes(os.path.join(out, "compare.png"), plot(runs))
        return rows


def plan(base: TrainConfig, names: list[str], fractions: list[float], seeds: list[int]) -> list[TrainConfig]:
    """The grid's cells, each one's configuration validated and its strategy built (so a bad
    fraction, seed or parameter is refused before anything trains)."""
    for option, values in (("--strategies", names), ("--fractions", fractions), ("--seeds", seeds)):
        if not values:
            raise ValueError(f"{option}: give at least one value")
        repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{option}: {', '.join(map(str, repeated))} given more than once")
    for name in names:
        strategies.parameters(name)  # unknown names fail before anything trains
    params = split_params(base.strategy_params, names)
    cells = []
    for seed in seeds:
        for name in names:
            takes = strategies.parameters(name)
            common = {key: getattr(base, key) if key in takes else None for key in ("every", "warm")}
            for fraction in (fractions if "fraction" in takes else [None]):
                try:
                    config = dataclasses.replace(base, strategy=name, fraction=fraction, seed=seed,
                                                 strategy_params=params[name], out=None, resume=None,
                                                 overwrite=False, **common).validate()
                except ValueError as exc:
                    option = {"fraction": "--fractions", "seed": "--seeds"}
                    key = next((k for k in option if str(exc).startswith(f"config {k} ")), None)
                    raise ValueError(f"{option[key]}: {exc}" if key else str(exc)) from exc
                strategies.make(name, **config.strategy_kwargs(takes))  # its parameters, checked
                cells.append(config)
    return cells


RESULTS = ("compare.json", "compare.csv", "compare.png")


def _open(out: str, base: TrainConfig):
    """Claims ``out``; returns it and the finished runs of an earlier compare there with the same
    configuration (cell key → run). Another configuration's results are refused, or removed
    with ``overwrite``."""
    folder = runfolder.claim(out)
    try:
        if base.overwrite:
            runfolder.remove(out, RESULTS)
        found = runfolder.previous(out, RESULTS)
        if not found:
            return folder, {}
        path = os.path.join(out, "compare.json")
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            config, runs = saved["config"], saved["runs"] + saved["other_runs"]
            done = {_key_of(r["cell"]): r for r in runs}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--out {out}: holds compare results this datadiet cannot reuse ({', '.join(found)}: "
                             f"{type(exc).__name__}); use --overwrite to replace them, or choose another folder") \
                from exc
        differences = runfolder.differences(config, _shared(base), "folder")
        if differences:
            raise ValueError(f"--out {out}: holds a compare of another configuration ({'; '.join(differences)}); "
                             "use --overwrite to replace it, or choose another folder")
        return folder, done
    except BaseException:
        folder.release()
        raise


def _shared(base: TrainConfig) -> dict:
    """What every cell of a compare has in common (a folder's runs are reused only under it)."""
    cell_keys = ("strategy", "fraction", "seed", "strategy_params", "every", "warm")
    return json.loads(runfolder.dumps({k: v for k, v in base.identity().items()
                                       if k not in cell_keys and k not in _NOT_CELL}))


_NOT_CELL = ("checkpoint_every",)  # compare's cells write no checkpoints: it changes nothing they compute


def _key(config: TrainConfig) -> str:
    return _key_of({k: v for k, v in config.identity().items() if k not in _NOT_CELL})


def _key_of(identity: dict) -> str:
    return runfolder.dumps(identity, sort_keys=True)


def _label(run: dict) -> str:
    return f"{run['strategy']:>20} fraction {run['fraction']:<5} seed {run['seed']}"


def _write(out: str, base: TrainConfig, runs: list[dict], done: dict) -> None:
    """compare.json (this grid's rows and runs, and the folder's other finished runs, kept for a
    later grid) and compare.csv, each written atomically."""
    rows = table(runs)
    mine = {id(r) for r in runs}
    others = [r for r in done.values() if id(r) not in mine]
    runfolder.write_json(os.path.join(out, "compare.json"),
                         {"config": _shared(base), "rows": rows, "runs": runs, "other_runs": others})
    runfolder.write_csv(os.path.join(out, "compare.csv"), rows)


def table(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    full = groups.get(("full", 1.0))
    full_wall = statistics.mean(r["wall"] for r in full) if full else None
    rows = []
    for (name, fraction), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        wall = statistics.mean(r["wall"] for r in rs)
        rows.append({"strategy": name, "fraction": fraction, "seeds": len(rs), "acc_mean": statistics.mean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "wall_mean": wall,
                     "selection_s": statistics.mean(_selecting(r["time"]) for r in rs),
                     "samples_mean": statistics.mean(r["samples"] for r in rs),
                     "speedup_vs_full": full_wall / wall if full_wall and wall > 0 else None})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'strategy':>20} {'fraction':>8} {'test acc':>17} {'wall s':>8} {'select s':>8} {'speed-up':>8}"]
    for r in rows:
        speed = f"{r['speedup_vs_full']:.2f}x" if r["speedup_vs_full"] else "-"
        lines.append(f"{r['strategy']:>20} {r['fraction']:>8} {r['acc_mean']:>9.4f} ± {r['acc_std']:.4f} "
                     f"{r['wall_mean']:>8.2f} {r['selection_s']:>8.2f} {speed:>8}")
    return "\n".join(lines)


def plot(runs: list[dict]) -> bytes:
    """The PNG of test accuracy against wall time, one line per (strategy, fraction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    for (name, fraction), rs in groups.items():
        length = min(len(r["curve"]) for r in rs)
        wall = [statistics.mean(r["curve"][e][0] for r in rs) for e in range(length)]
        acc = [statistics.mean(r["curve"][e][1] for r in rs) for e in range(length)]
        ax.plot(wall, acc, marker=".", label=name if name == "full" else f"{name} {fraction:g}")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    return image.getvalue()


def _selecting(time: dict) -> float:
    """Seconds a run spent choosing its subsets: proxy pre-training, scoring passes, solvers."""
    return time["selection"] + time["scoring"] + time["pretraining"]
