"""``datadiet`` / ``python -m datadiet``: the demo (default) and build information."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="datadiet", description="datadiet command line")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="train on scikit-learn digits, score every sample, retrain on selected subsets, "
                               "merge soups (default)")
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
    if args.command == "info":
        import datadiet

        print(json.dumps(datadiet.build_info(), indent=1))
        return 0
    from datadiet import demo as demo_module

    if args.command is None:
        args = demo.parse_args([])
    demo_module.main(args.epochs, args.seed, args.label_noise, args.top, args.out, args.keep, args.members,
                     args.density)
    return 0


if __name__ == "__main__":
    sys.exit(main())
