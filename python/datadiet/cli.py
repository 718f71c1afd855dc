"""``datadiet`` / ``python -m datadiet``: ``compare`` (default, the main job), ``train``, ``select``,
``ensemble``, ``lipt``, ``reproduce``, ``demo`` and ``info``. Argument parsing only; the work is in ``datadiet.train`` and ``datadiet.demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _reproduce(args, config, parse_params) -> int:
    import dataclasses
    import importlib

    from datadiet import runfolder
    from datadiet._dist import init as dist_init
    from datadiet._dist import world
    from datadiet.reproduce import CLAIMS
    from datadiet.train.config import TrainConfig

    module = importlib.import_module(CLAIMS[args.claim])
    _check_reproduce(args, parse_params)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    setting = {"config": config.identity(), **{k: v for k, v in sorted(vars(args).items())
                                               if k not in fields and k not in ("command", "config", "param")}}
    names = tuple(f"{args.claim}.{ext}" for ext in ("json", "csv", "png"))
    dist_init(config.device, config.dist_timeout)  # under torchrun: rank 0 alone claims the folder
    with runfolder.result_folder(config.out, names[0], names, setting, overwrite=config.overwrite) as saved:
        if saved is not None:
            print(f"datadiet reproduce {args.claim}: finished earlier with the same setting in {config.out}")
        else:
            _reproduce_claim(module, args, config, parse_params)
            if world()[1] == 0:  # what a re-run of the same command compares with
                path = os.path.join(config.out, names[0])
                with open(path, encoding="utf-8") as f:
                    runfolder.write_json(path, {**json.load(f), "setting": setting})
    print(f"wrote {config.out}/{args.claim}.csv, .json, .png")
    return 0


def _reproduce_claim(module, args, config, parse_params) -> None:
    epochs = "" if args.claim == "sb-detection" else f", {config.epochs} epochs"  # detection has its own settings
    print(f"datadiet reproduce {args.claim}: seeds {args.seeds}{epochs}")
    common = dict(seeds=args.seeds, out=config.out)
    if args.claim == "lipt-grand":
        module.run(config, _lipt_options(args), fractions=args.fractions or (0.05, 0.1, 0.3, 0.5),
                   grand_params=parse_params(args.usual_param), **common)
    elif args.claim == "ensemble-fractions":
        module.run(config, fractions=args.fractions or (0.01, 0.05, 0.1, 0.3), phases=args.phases,
                   n_models=args.members, warmup_epochs=args.warmup_epochs, **common)
    elif args.claim == "adaselection-ranks":
        module.run(config, rates=args.rates, params=parse_params(args.param) or None, **common)
    elif args.claim == "sb-detection":  # its own model and data: none of the train options but --seeds, --out
        module.run(keeps=args.keeps, start=args.sb_start, end=args.sb_end, interrupt=args.interrupt,
                   **parse_params(args.detection_param), **common)
    elif args.claim == "cached-gradmatch":
        module.run(config, fraction=(args.fractions or [0.1])[0], lrs=args.lrs,
                   replay_model=args.replay_model, **common)
    elif args.claim == "infobatch":
        module.run(config, prunes=args.prunes, **common)


def _check_reproduce(args, parse_params) -> None:
    """Every list and option of ``reproduce``, before the first model trains."""
    import inspect

    from datadiet.pipelines.detection import train_detection
    from datadiet.strategies.base import is_number
    from datadiet.train import models

    def each(option: str, values, ok, what: str) -> None:
        if values is not None and not values:
            raise ValueError(f"{option}: give at least one value")
        for v in values or ():
            if not is_number(v) or not ok(v):
                raise ValueError(f"{option}: {v!r} {what}")

    each("--fractions", args.fractions, lambda v: 0 < v <= 1, "is not a fraction in (0, 1]")
    each("--seeds", args.seeds, lambda v: isinstance(v, int) and 0 <= v < 2 ** 63, "is not a seed in [0, 2**63)")
    each("--rates", args.rates, lambda v: 0 < v <= 1, "is not a sampling rate in (0, 1]")
    each("--prunes", args.prunes, lambda v: 0 < v < 1, "is not a prune ratio in (0, 1)")
    each("--lrs", args.lrs, lambda v: v > 0, "is not a learning rate > 0")
    each("--keeps", args.keeps, lambda v: 0 < v <= 1, "is not a keep fraction in (0, 1]")
    for option, value, low in (("--phases", args.phases, 1), ("--members", args.members, 1),
                               ("--warmup-epochs", args.warmup_epochs, 0), ("--interrupt", args.interrupt, 0)):
        if value < low:
            raise ValueError(f"{option}: {value} must be >= {low}")
    if not 0 <= args.sb_start < args.sb_end <= 1:
        raise ValueError(f"--sb-start {args.sb_start} / --sb-end {args.sb_end}: need 0 <= start < end <= 1")
    models.check_name(args.replay_model, "--replay-model")
    accepted = set(inspect.signature(train_detection).parameters) - {"method", "keep", "start", "end", "interrupt",
                                                                     "seed", "log", "progress"}
    for key in parse_params(args.detection_param):
        if key not in accepted:
            raise ValueError(f"--detection-param {key}: not a train_detection setting ({', '.join(sorted(accepted))})")
    parse_params(args.usual_param)
    _lipt_options(args).validate()


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the kernel benchmarks shipped in the wheel (the repository's bench/)
        from datadiet.bench.__main__ import main as bench_main

        return bench_main(argv[1:], prog="datadiet bench", results_dir="datadiet-bench")
    from datadiet.reproduce import CLAIMS
    from datadiet.train import compare as compare_module
    from datadiet.train.options import add_train_options, config_from_args, parse_params

    parser = argparse.ArgumentParser(prog="datadiet", description="datadiet command line")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train one model with a selection strategy")
    add_train_options(train)
    train.add_argument("--cache", default=None, metavar="PATH",
                       help="gradmatch: record every selection round to PATH; cached_gradmatch: replay them "
                       "(= --param cache=PATH)")
    select = sub.add_parser("select", help="score and select a dataset once: subset.csv, scores.npz and manifest.json "
                            "in --out, for `train --subset` or any pipeline")
    add_train_options(select, skip=("epochs", "every", "warm", "resume", "subset", "checkpoint_every",
                                    "nonfinite_steps", "skip_bad_samples", "max_selection_share"))
    select.add_argument("--weights", default=None, metavar="PATH",
                        help="score with this trained model: a `datadiet train` run folder, its checkpoint.pt or a "
                        "state_dict file of --model")
    select.add_argument("--proxy-epochs", type=int, default=None, metavar="E",
                        help="score with a proxy trained E epochs on the whole pool first (its time is pre-training)")
    select.add_argument("--shard-size", type=int, default=65536, metavar="N",
                        help="samples per scoring shard kept on disk (a killed select continues from them)")
    select.set_defaults(out="select_out")
    compare = sub.add_parser("compare", help="strategies x fractions x seeds on the same data and model (default)")
    add_train_options(compare, skip=("strategy", "fraction", "seed", "resume", "subset"))
    compare.add_argument("--strategies", default=",".join(compare_module.DEFAULT_STRATEGIES))
    compare.add_argument("--fractions", type=_floats, default=[0.1, 0.3])
    compare.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    compare.add_argument("--resume", dest="compare_resume", default=None, metavar="DIR",
                         help="continue the compare in DIR (= --out DIR): its finished cells are reused")
    compare.add_argument("--no-budget-baselines", dest="budget_baselines", action="store_false",
                         help="skip the full@f rows (all the data for round(f x epochs) epochs, per fraction f)")
    compare.add_argument("--target-drop", type=float, default=0.01,
                         help="time to target: the seconds to reach full data's final test accuracy minus this "
                         "(default 0.01)")
    compare.set_defaults(out="compare_out")
    ens = sub.add_parser("ensemble", help="ensembles on difficulty subsets (or the --no-ensemble baseline)")
    add_train_options(ens, skip=("strategy", "every", "warm", "resume", "checkpoint_every", "subset"))
    ens.add_argument("--phases", type=int, default=2)
    ens.add_argument("--members", type=int, default=3, help="ensemble size, one GraNd difficulty stratum each")
    ens.add_argument("--warmup-epochs", type=int, default=5, help="full-data epochs with a rising lr first")
    ens.add_argument("--base", choices=("random", "grand"), default="random", help="the base subset of each phase")
    ens.add_argument("--bn", choices=("average", "reestimate"), default="average", help="BatchNorm buffers of the merge")
    ens.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=True,
                     help="--no-ensemble: continue the base model on its subset with the same budget")
    ens.add_argument("--grand-inits", type=int, default=0,
                     help="strata from GraNd averaged over this many fresh initialisations (0: the base model)")
    ens.add_argument("--grand-epochs", type=int, default=1, help="full-data epochs of each such initialisation")
    ens.add_argument("--member-ranks", action=argparse.BooleanOptionalAction, default=True,
                     help="under torchrun: one member per rank, merged by one all_reduce (--no-member-ranks: "
                     "members one after another, each a DDP run)")
    ens.set_defaults(epochs=60, fraction=0.3, out="ensemble_out")
    lip = sub.add_parser("lipt", help="LiPT: pre-training by merged jigsaw workers, then selection and "
                         "training on the subset")
    add_train_options(lip, skip=("resume", "checkpoint_every", "subset"))
    _add_lipt_options(lip)
    lip.add_argument("--against-usual", action="store_true",
                     help="also run the strategy with its own full-data pre-training (GraNd's proxy models) and "
                     "print both time breakdowns (the LiPT paper's Table 1)")
    lip.add_argument("--usual-param", action="append", default=[], metavar="KEY=VALUE",
                     help="a strategy parameter of that run only (e.g. repeats=10)")
    lip.set_defaults(strategy="grand", fraction=0.1, epochs=30, out="lipt_out")
    rep = sub.add_parser("reproduce", help="a miniature reproduction of a paper's claim")
    rep.add_argument("claim", choices=tuple(CLAIMS))
    add_train_options(rep, skip=("strategy", "fraction", "every", "warm", "resume", "checkpoint_every", "seed",
                                  "subset"))
    rep.add_argument("--fractions", type=_floats, default=None,
                     help="default 0.01,0.05,0.1,0.3 (ensemble-fractions), 0.05,0.1,0.3,0.5 (lipt-grand)")
    rep.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    rep.add_argument("--phases", type=int, default=2)
    rep.add_argument("--members", type=int, default=3)
    rep.add_argument("--warmup-epochs", type=int, default=5)
    _add_lipt_options(rep)
    rep.add_argument("--usual-param", action="append", default=[], metavar="KEY=VALUE",
                     help="lipt-grand: a parameter of the GraNd run with its own pre-training (e.g. repeats=3)")
    rep.add_argument("--rates", type=_floats, default=[0.1, 0.2, 0.3, 0.5], help="adaselection-ranks: sampling rates")
    rep.add_argument("--prunes", type=_floats, default=[0.3, 0.5, 0.7], help="infobatch: prune ratios r")
    rep.add_argument("--lrs", type=_floats, default=[0.02, 0.1, 0.2],
                     help="cached-gradmatch: learning rates the cache (made at --lr) is replayed at")
    rep.add_argument("--replay-model", default="cnn", help="cached-gradmatch: the architecture it is replayed on")
    rep.add_argument("--keeps", type=_floats, default=[1.0, 0.5],
                     help="sb-detection: Selective-Backprop keep fractions (1.0: without it)")
    rep.add_argument("--sb-start", type=float, default=0.5, help="sb-detection: SB from this fraction of training")
    rep.add_argument("--sb-end", type=float, default=0.9, help="sb-detection: ... to this one")
    rep.add_argument("--interrupt", type=int, default=2, help="sb-detection: every N-th batch trains whole (0: none)")
    rep.add_argument("--detection-param", action="append", default=[], metavar="KEY=VALUE",
                     help="sb-detection: a train_detection argument (epochs=20, n_train=192, architecture=ssdlite)")
    rep.set_defaults(epochs=60, out="reproduce_out")
    demo = sub.add_parser("demo", help="score digits, retrain on selected subsets, merge soups")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--label-noise", type=float, default=0.05, help="fraction of training labels to flip")
    demo.add_argument("--top", type=int, default=10, help="how many hardest samples to list")
    demo.add_argument("--out", default="demo_out", help="folder for the plot and the JSON summary")
    demo.add_argument("--keep", type=float, default=0.9, help="fraction of the training data the subsets keep")
    demo.add_argument("--members", type=int, default=3, help="ensemble members, one per GraNd difficulty stratum")
    demo.add_argument("--density", type=float, default=0.9, help="fraction of the soup's weights pruning keeps")
    sub.add_parser("info", help="print datadiet.build_info() as JSON")
    sub.add_parser("bench", help="kernel microbenchmarks (datadiet bench --list; results in ./datadiet-bench/)")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["compare", *(argv or [])])
    from datadiet._dist import finish
    from datadiet.train.trainer import RunStopped

    try:
        code = _run(args, compare_module, config_from_args, parse_params)
        finish()  # a clean end: the process group is left (a failing rank exits without waiting)
        return code
    except ValueError as exc:  # a bad option, dataset, model, strategy or checkpoint: one clear line
        print(f"datadiet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # training stopped early (non-finite loss, unreadable sample); checkpoint kept
        print(f"datadiet {args.command}: stopped: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _run(args, compare_module, config_from_args, parse_params) -> int:
    import dataclasses

    if args.command == "info":
        import datadiet

        print(json.dumps(datadiet.build_info(), indent=1))
        return 0
    if args.command == "demo":
        from datadiet import demo as demo_module

        demo_module.main(args.epochs, args.seed, args.label_noise, args.top, args.out, args.keep, args.members,
                         args.density)
        return 0
    params = parse_params(args.param)
    if getattr(args, "cache", None):
        params["cache"] = args.cache
    config = config_from_args(args, strategy_params=params)
    if args.command == "ensemble":
        from datadiet.pipelines import ensemble

        summary = ensemble(config, phases=args.phases, n_models=args.members, warmup_epochs=args.warmup_epochs,
                           base=args.base, bn=args.bn, ensemble=args.ensemble, grand_inits=args.grand_inits,
                           grand_epochs=args.grand_epochs, member_ranks=args.member_ranks)
        print(json.dumps({k: summary[k] for k in ("ensemble", "test_acc", "wall")}))
        return 0
    if args.command == "lipt":
        return _lipt(args, config, parse_params)
    if args.command == "reproduce":
        return _reproduce(args, config, parse_params)
    if args.command == "select":
        return _select(args, config)
    if args.command == "train":
        from datadiet.train.trainer import Trainer

        summary = Trainer(config).fit()
        if summary["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
            shown = ("strategy", "epochs", "steps", "test_acc", "test_perplexity", "wall", "time")
            print(json.dumps({k: summary[k] for k in shown if k in summary}))
            for s in summary["stretches"]:  # the selection guard's decisions, also in metrics.jsonl
                print(f"datadiet train: at epoch {s['epoch']} a selection round cost {s['round_cost']:.2f} s against "
                      f"{s['epoch_training']:.2f} s of training per epoch: re-selecting every {s['interval']} epochs "
                      f"(--max-selection-share {config.max_selection_share:g}; 0 keeps every {s['every']})",
                      file=sys.stderr)
        return 0
    if args.compare_resume:
        if not os.path.isfile(os.path.join(args.compare_resume, "compare.json")):
            raise ValueError(f"--resume {args.compare_resume}: no compare.json there (not a compare folder)")
        config = dataclasses.replace(config, out=args.compare_resume)
    names = [s for s in args.strategies.split(",") if s]
    print(f"datadiet compare: {', '.join(names)} at fractions {args.fractions}, seeds {args.seeds}, "
          f"{config.epochs} epochs of {config.model} on {config.dataset}")
    rows = compare_module.run(config, names, args.fractions, args.seeds, config.out,
                              baselines=args.budget_baselines, target_drop=args.target_drop)
    if int(os.environ.get("RANK", "0")) == 0:
        print(compare_module.format_table(rows))
        print(f"wrote {config.out}/compare.csv, compare.json, compare.png")
    return 0


def _select(args, config) -> int:
    import dataclasses

    from datadiet.selection import select_dataset
    from datadiet.selection.job import default_workers
    from datadiet.train.options import from_toml

    if not hasattr(args, "workers") and not (args.config and "workers" in from_toml(args.config)):
        config = dataclasses.replace(config, workers=default_workers(config.dataset))
    chosen = select_dataset(config, weights=args.weights, proxy_epochs=args.proxy_epochs, shard_size=args.shard_size)
    if chosen is None:
        return 0  # a torchrun rank other than 0: rank 0 writes and reports
    m = chosen.manifest
    times = ", ".join(f"{k} {v:.2f} s" for k, v in m["times"].items())
    rate = m["scoring_samples_per_s"]
    print(f"datadiet select: {m['size']} of {m['dataset']['samples']} samples by {m['strategy']['name']} "
          f"(fraction {m['strategy']['fraction']}); {times}"
          + (f"; scoring {rate:.0f} samples/s" if rate else ""))
    print(f"wrote {config.out}/subset.csv, scores.npz, manifest.json (train on it: datadiet train --subset "
          f"{config.out})")
    return 0


def _add_lipt_options(parser) -> None:
    """A flag per ``LiptOptions`` field (``head_iters`` → ``--head-iters``); pairs and grids as
    comma lists."""
    import dataclasses
    import typing

    from datadiet.pipelines.lightweight_pretraining import LiptOptions

    hints = typing.get_type_hints(LiptOptions)
    for f in dataclasses.fields(LiptOptions):
        kind = hints[f.name]
        kind = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Union else kind
        parse = (lambda text: tuple(_floats(text))) if kind is tuple else kind
        parser.add_argument("--" + f.name.replace("_", "-"), dest="lipt_" + f.name, type=parse, default=f.default,
                            help=f"(default {f.default})")


def _lipt_options(args):
    import dataclasses

    from datadiet.pipelines.lightweight_pretraining import LiptOptions

    return LiptOptions(**{f.name: getattr(args, "lipt_" + f.name) for f in dataclasses.fields(LiptOptions)})


def _lipt(args, config, parse_params) -> int:
    import dataclasses

    from datadiet.pipelines import lightweight_pretraining as lipt_module

    usual_params = parse_params(args.usual_param)
    if args.against_usual:  # its parameters checked now, not after LiPT has run
        lipt_module.usual_pretraining_config(config, **usual_params)
    try:
        result = lipt_module.lipt(config, _lipt_options(args))
    except lipt_module.NoWorkerLeft as exc:
        print(f"datadiet lipt: error: {exc}", file=sys.stderr)
        return 1
    rows = [("lipt", result)]
    if args.against_usual:
        usual = lipt_module.usual_pretraining(dataclasses.replace(config, out=None), **usual_params)
        rows.append((f"{config.strategy} (own pre-training)", usual))
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("pretraining", "selection", "main_training", "total")
        print(f"{'run':<28} {'test acc':>8} " + " ".join(f"{k + ' s':>16}" for k in keys))
        for name, r in rows:
            print(f"{name:<28} {r['test_acc']:>8.4f} " + " ".join(f"{r['time'][k]:>16.2f}" for k in keys))
        if len(rows) == 2:
            own, ours = rows[1][1]["time"], result["time"]
            print(f"pre-training ratio (own / lipt): {own['pretraining'] / max(ours['pretraining'], 1e-9):.2f}x, "
                  f"total {own['total'] / max(ours['total'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
