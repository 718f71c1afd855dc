"""The LiPT study's pre-training tax on CPU, one run: LiPT's pre-training (workers, merge, head fit)
against the GraNd pre-training it replaces (``repeats`` proxy models, each ``pretrain_epochs``
epochs on the full pool; the GraNd paper averages 10), the ratio the seed reports as 15×, and
both runs' test accuracy after the same main training on the GraNd subset."""

from __future__ import annotations

import dataclasses

from .harness import Rows
from datadiet.pipelines.lightweight_pretraining import LiptOptions, lipt, usual_pretraining
from datadiet.train import datasets
from datadiet.train.config import TrainConfig


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits:x8")
    p.add_argument("--model", default="cnn")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--n-workers", type=int, default=10)


def run(args) -> list[dict]:
    rows = Rows(args.device)
    config = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, fraction=args.fraction,
                         strategy="grand", progress=False, device=str(args.device))
    data = datasets.load(args.dataset)
    options = LiptOptions(n_workers=args.n_workers)
    lipt(dataclasses.replace(config, epochs=1), dataclasses.replace(options, n_workers=1), data=data,
         log=lambda *a: None)  # warm-up (imports, first-call costs), not timed
    ours = lipt(config, options, data=data, log=lambda *a: None)
    usual = usual_pretraining(config, data=data, pretrain_epochs=args.pretrain_epochs, repeats=args.repeats)
    case = (f"{args.model} on {args.dataset} ({len(data.train)} samples), GraNd at {args.fraction}, "
            f"{args.epochs} epochs")
    rows.append({"case": case, "method": f"GraNd pre-training ({args.repeats} x {args.pretrain_epochs} full epochs)",
                 "seconds": usual["time"]["pretraining"], "bytes": None, "baselines": [], "floor": None,
                 "note": f"test acc {usual['test_acc']:.4f}, total {usual['time']['total']:.1f}s"})
    rows.append({"case": case, "method": f"LiPT pre-training ({args.n_workers} workers x {options.worker_steps} steps)",
                 "seconds": ours["time"]["pretraining"], "bytes": None,
                 "baselines": [f"GraNd pre-training ({args.repeats} x {args.pretrain_epochs} full epochs)"],
                 "floor": None, "note": f"test acc {ours['test_acc']:.4f}, total {ours['time']['total']:.1f}s, "
                                        f"{ours['coverage']:.1%} of the pool shipped"})
    return rows
