"""``datadiet`` / ``python -m datadiet``: ``compare`` (default, the main job), ``train``,
``ensemble``, ``reproduce``, ``demo`` and ``info``. Argument parsing only; the work is in ``datadiet.train`` and ``datadiet.demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    from datadiet.train import compare as compare_module
    from datadiet.train.options import add_train_options, config_from_args, parse_params

    parser = argparse.ArgumentParser(prog="datadiet", description="datadiet command line")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train one model with a selection strategy")
    add_train_options(train)
    compare = sub.add_parser("compare", help="strategies x fractions x seeds on the same data and model (default)")
    add_train_options(compare, skip=("strategy", "fraction", "seed", "resume"))
    compare.add_argument("--strategies", default=",".join(compare_module.DEFAULT_STRATEGIES))
    compare.add_argument("--fractions", type=_floats, default=[0.1, 0.3])
    compare.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    compare.set_defaults(out="compare_out")
    ens = sub.add_parser("ensemble", help="seed 000: ensembles on difficulty subsets (or --no-ensemble baseline)")
    add_train_options(ens, skip=("strategy", "every", "warm", "resume", "checkpoint_every"))
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
    ens.set_defaults(epochs=60, fraction=0.3, out="ensemble_out")
    rep = sub.add_parser("reproduce", help="a miniature reproduction of a seed's claim")
    rep.add_argument("claim", choices=("ensemble-fractions",))
    add_train_options(rep, skip=("strategy", "fraction", "every", "warm", "resume", "checkpoint_every", "seed"))
    rep.add_argument("--fractions", type=_floats, default=[0.01, 0.05, 0.1, 0.3])
    rep.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    rep.add_argument("--phases", type=int, default=2)
    rep.add_argument("--members", type=int, default=3)
    rep.add_argument("--warmup-epochs", type=int, default=5)
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
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["compare", *(argv or [])])
    try:
        return _run(args, compare_module, config_from_args, parse_params)
    except ValueError as exc:  # a bad option, dataset, model, strategy or checkpoint: one clear line
        print(f"datadiet {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _run(args, compare_module, config_from_args, parse_params) -> int:
    if args.command == "info":
        import datadiet

        print(json.dumps(datadiet.build_info(), indent=1))
        return 0
    if args.command == "demo":
        from datadiet import demo as demo_module

        demo_module.main(args.epochs, args.seed, args.label_noise, args.top, args.out, args.keep, args.members,
                         args.density)
        return 0
    config = config_from_args(args, strategy_params=parse_params(args.param))
    if args.command == "ensemble":
        from datadiet.pipelines import ensemble

        summary = ensemble(config, phases=args.phases, n_models=args.members, warmup_epochs=args.warmup_epochs,
                           base=args.base, bn=args.bn, ensemble=args.ensemble, grand_inits=args.grand_inits,
                           grand_epochs=args.grand_epochs)
        print(json.dumps({k: summary[k] for k in ("ensemble", "test_acc", "wall")}))
        return 0
    if args.command == "reproduce":
        from datadiet.reproduce import ensemble_fractions

        print(f"datadiet reproduce {args.claim}: fractions {args.fractions}, seeds {args.seeds}")
        ensemble_fractions.run(config, fractions=args.fractions, seeds=args.seeds, phases=args.phases,
                               n_models=args.members, warmup_epochs=args.warmup_epochs, out=config.out)
        print(f"wrote {config.out}/{args.claim}.csv, .json, .png")
        return 0
    if args.command == "train":
        from datadiet.train.trainer import Trainer

        summary = Trainer(config).fit()
        if summary["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({k: summary[k] for k in ("strategy", "epochs", "steps", "test_acc", "wall", "time")}))
        return 0
    names = [s for s in args.strategies.split(",") if s]
    print(f"datadiet compare: {', '.join(names)} at fractions {args.fractions}, seeds {args.seeds}, "
          f"{config.epochs} epochs of {config.model} on {config.dataset}")
    rows = compare_module.run(config, names, args.fractions, args.seeds, config.out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(compare_module.format_table(rows))
        print(f"wrote {config.out}/compare.csv, compare.json, compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
