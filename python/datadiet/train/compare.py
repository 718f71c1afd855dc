"""``datadiet compare``: every strategy × fraction × seed trained with the same options, then a
table, CSV, JSON and a plot of test accuracy against wall time. A strategy without a
``fraction`` (``full``, ``selective_backprop``) runs once per seed; its row's fraction is 1.0.

For every compared fraction f below 1 the grid also trains the honest baseline ``full@f``: all
the data for round(f · epochs) epochs (``full`` with ``budget = f``: the optimisation steps of a
fraction-f subset; rounded half up, at least one epoch, so a row records the epochs and steps it
took). Each row then answers "is selection worth it?": test accuracy mean ± std,
wall time (the per-epoch test evaluations excluded: they measure the run, they do not train it)
and the selection's share of it, speed-up over ``full``, the time to reach full data's
final accuracy minus ``target_drop`` (the first evaluated epoch at or above it, in every seed),
and — for a strategy at fraction f — its accuracy at the wall time its ``full@f`` baseline took
(its last epoch finished by then; ``late`` when a seed had none) and the difference to that
baseline: a strategy that is not above it did not pay for its selection at this budget. The
baseline's accuracy is at the end of its schedule while the strategy is mid-schedule, and one
run per seed is noisy at small wall times: a mark is a measurement, not a verdict.
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
        if name == "budget":
            raise ValueError(f"--param {key}: compare sets full's budget itself (the full@f rows, one per fraction)")
        if target and target not in out:
            raise ValueError(f"--param {key}: {target!r} is not among the compared strategies {names}")
        takers = [s for s in ([target] if target else names) if name in strategies.parameters(s)]
        if not takers:
            raise ValueError(f"--param {key}: no compared strategy takes a parameter {name!r}")
        for s in takers:
            out[s][name] = value
    return out


def run(base: TrainConfig, names: list[str], fractions: list[float], seeds: list[int], out: str,
        log=print, *, data: Optional[datasets.DataBundle] = None, baselines: bool = True,
        target_drop: float = 0.01) -> list[dict]:
    """Trains every cell of the grid not already finished in ``out`` (same configuration), writing
    the results after each cell; every cell's options are checked before the first one trains.
    ``baselines``: also train ``full@f`` for each fraction f < 1 (module docstring)."""
    if isinstance(target_drop, bool) or not isinstance(target_drop, (int, float)) or not 0 <= target_drop < 1:
        raise ValueError(f"--target-drop {target_drop!r}: must be in [0, 1) (accuracy below full data's final one)")
    cells = plan(base, names, fractions, seeds, baselines=baselines)
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
            name, fraction = _row_name(config)
            # wall and curve without the per-epoch test evaluations: a run of E epochs evaluates E
            # times, a cost of measuring it, not of training (it would tax the longer runs)
            result = {"strategy": name, "fraction": fraction, "seed": config.seed, "test_acc": summary["test_acc"],
                      "wall": summary["wall"] - summary["time"]["evaluation"], "samples": summary["samples"],
                      "epochs": summary["epochs"], "steps": summary["steps"], "timing": TIMING,
                      "rounds": summary["rounds"], "stretches": summary["stretches"],
                      "time": summary["time"], "curve": summary["train_curve"], "cell": json.loads(key)}
            runs.append(result)
            done[key] = result
            log(f"  {_label(result)}: test acc {summary['test_acc']:.4f} in {result['wall']:.2f} s")
            if writes:  # each finished cell on disk at once
                _write(out, base, runs, done, target_drop)
        rows = table(runs, target_drop)
        if writes:
            _write(out, base, runs, done, target_drop)
            runfolder.write_bytes(os.path.join(out, "compare.png"), plot(runs, rows))
        return rows


def plan(base: TrainConfig, names: list[str], fractions: list[float], seeds: list[int], *,
         baselines: bool = True) -> list[TrainConfig]:
    """The grid's cells, each one's configuration validated and its strategy built (so a bad
    fraction, seed or parameter is refused before anything trains); with ``baselines``, after
    each seed's cells, ``full`` with ``budget = f`` for every fraction f < 1 a compared strategy
    takes."""
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
        fractioned = any("fraction" in strategies.parameters(name) for name in names)
        for fraction in (fractions if baselines and fractioned else []):
            if fraction < 1:
                cells.append(dataclasses.replace(base, strategy="full", fraction=None, seed=seed, every=None,
                                                 warm=None, strategy_params={"budget": fraction}, out=None,
                                                 resume=None, overwrite=False).validate())
    return cells


def _row_name(config: TrainConfig) -> tuple[str, float]:
    """A cell's row: (strategy, fraction), ``full@f`` for an equal-budget baseline."""
    budget = config.strategy_params.get("budget", 1.0) if config.strategy == "full" else 1.0
    if budget < 1:
        return f"full@{budget:g}", float(budget)
    return config.strategy, config.fraction or 1.0


RESULTS = ("compare.json", "compare.csv", "compare.png")
# How a run's wall and curve were measured: "train" leaves the per-epoch test evaluations out. Runs
# of a folder written before (wall with evaluations) are not reused beside them: they train again.
TIMING = "train"


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
            done = {_key_of(r["cell"]): r for r in runs if r.get("timing") == TIMING}
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


def _write(out: str, base: TrainConfig, runs: list[dict], done: dict, target_drop: float) -> None:
    """compare.json (this grid's rows and runs, and the folder's other finished runs, kept for a
    later grid) and compare.csv, each written atomically."""
    rows = table(runs, target_drop)
    mine = {id(r) for r in runs}
    others = [r for r in done.values() if id(r) not in mine]
    runfolder.write_json(os.path.join(out, "compare.json"),
                         {"config": _shared(base), "rows": rows, "runs": runs, "other_runs": others})
    runfolder.write_csv(os.path.join(out, "compare.csv"), rows)


def table(runs: list[dict], target_drop: float = 0.01) -> list[dict]:
    """One row per (strategy, fraction), means over seeds (module docstring for the columns)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    full = groups.get(("full", 1.0))
    full_wall = statistics.mean(r["wall"] for r in full) if full else None
    target = statistics.mean(r["test_acc"] for r in full) - target_drop if full else None
    rows = []
    for (name, fraction), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        wall = statistics.mean(r["wall"] for r in rs)
        reached = [_time_to(r["curve"], target) for r in rs] if target is not None else [None]
        rows.append({"strategy": name, "fraction": fraction, "seeds": len(rs), "acc_mean": statistics.mean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "wall_mean": wall,
                     "selection_s": statistics.mean(selection_seconds(r["time"]) for r in rs),
                     "samples_mean": statistics.mean(r["samples"] for r in rs),
                     "speedup_vs_full": full_wall / wall if full_wall and wall > 0 else None,
                     "target_acc": target,
                     "time_to_target_s": statistics.mean(reached) if None not in reached else None,
                     "steps_mean": statistics.mean(r.get("steps", 0) for r in rs), "baseline": None,
                     "acc_at_baseline_wall": None, "vs_baseline": None, "beats_baseline": None, "late_start": None})
    for row in rows:
        base = groups.get((f"full@{row['fraction']:g}", row["fraction"]))
        if base is None or row["strategy"].startswith("full"):
            continue
        wall = statistics.mean(r["wall"] for r in base)
        at = [_acc_at(r["curve"], wall) for r in groups[(row["strategy"], row["fraction"])]]
        row["baseline"] = f"full@{row['fraction']:g}"
        row["late_start"] = None in at
        if not row["late_start"]:
            row["acc_at_baseline_wall"] = statistics.mean(at)
            row["vs_baseline"] = row["acc_at_baseline_wall"] - statistics.mean(r["test_acc"] for r in base)
            row["beats_baseline"] = row["vs_baseline"] > 0
        else:  # in some seed it had no trained epoch yet when the baseline had finished
            row["beats_baseline"] = False
    return rows


def _time_to(curve: list, target: float) -> Optional[float]:
    """The wall time of the first evaluated epoch at or above ``target`` (None: never)."""
    return next((wall for wall, acc in curve if acc is not None and acc >= target), None)


def _acc_at(curve: list, wall: float) -> Optional[float]:
    """Test accuracy of the model a run had at ``wall`` seconds: that of its last epoch finished
    by then (a step along the per-epoch curve, no credit for an epoch still running; the same
    reading as the time to target); None before its first epoch finished."""
    done = [acc for w, acc in curve if w <= wall]
    return done[-1] if done else None


def format_table(rows: list[dict]) -> str:
    lines = [f"{'strategy':>20} {'fraction':>8} {'test acc':>17} {'wall s':>8} {'select s':>8} {'speed-up':>8} "
             f"{'to target':>9} {'acc @ base wall':>15} {'vs base':>8}"]
    for r in rows:
        speed = f"{r['speedup_vs_full']:.2f}x" if r["speedup_vs_full"] else "-"
        to = f"{r['time_to_target_s']:.2f}" if r["time_to_target_s"] is not None else "-"
        at = (f"{r['acc_at_baseline_wall']:.4f}" if r["acc_at_baseline_wall"] is not None
              else "late" if r["late_start"] else "-")
        vs = f"{r['vs_baseline']:+.4f}" if r["vs_baseline"] is not None else "-"
        mark = " *" if r["beats_baseline"] is False else ""
        lines.append(f"{r['strategy']:>20} {r['fraction']:>8} {r['acc_mean']:>9.4f} ± {r['acc_std']:.4f} "
                     f"{r['wall_mean']:>8.2f} {r['selection_s']:>8.2f} {speed:>8} {to:>9} {at:>15} {vs:>8}{mark}")
    target = next((r["target_acc"] for r in rows if r["target_acc"] is not None), None)
    if target is not None:
        lines.append(f"to target: seconds to test accuracy {target:.4f} (full data's final accuracy minus the target "
                     "drop) in every seed")
    if any(r["baseline"] for r in rows):
        lines.append("acc @ base wall: accuracy when its full@f baseline (all the data, the same steps) had finished "
                     "(late: no epoch of it finished by then in some seed); * = not above that baseline at equal "
                     "wall time")
    return "\n".join(lines)


def plot(runs: list[dict], rows: Optional[list[dict]] = None) -> bytes:
    """The PNG of test accuracy against wall time, one line per (strategy, fraction); the
    ``full@f`` baselines dashed, a strategy that does not beat its baseline marked in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losing = {(r["strategy"], r["fraction"]) for r in rows or [] if r["beats_baseline"] is False}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    for (name, fraction), rs in groups.items():
        length = min(len(r["curve"]) for r in rs)
        wall = [statistics.mean(r["curve"][e][0] for r in rs) for e in range(length)]
        acc = [statistics.mean(r["curve"][e][1] for r in rs) for e in range(length)]
        label = name if name.startswith("full") else f"{name} {fraction:g}"
        if (name, fraction) in losing:
            label += " (not above full@%g)" % fraction
        ax.plot(wall, acc, marker=".", label=label, linestyle="--" if name.startswith("full@") else "-")
    ax.set_xlabel("wall time (s, test evaluations excluded)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    return image.getvalue()


def selection_seconds(time: dict) -> float:
    """Seconds a run spent choosing its subsets: proxy pre-training, scoring passes, solvers."""
    return time["selection"] + time["scoring"] + time["pretraining"]
