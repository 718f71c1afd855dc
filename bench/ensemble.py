"""The difficulty-ensembles study's ensemble pipeline on CPU, one run: per phase, the ensemble's own work (the GraNd
scoring pass and the merge) as a fraction of the phase's training time (target ≤ 5%), and the
ensemble against the no-ensemble baseline at the same budget (accuracy, wall time)."""

from __future__ import annotations

from .harness import Rows
from datadiet.pipelines import ensemble
from datadiet.train.config import TrainConfig


def add_arguments(p) -> None:
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--phases", type=int, default=2)
    p.add_argument("--members", type=int, default=3)


def run(args) -> list[dict]:
    rows = Rows(args.device)
    config = TrainConfig(model=args.model, epochs=args.epochs, fraction=args.fraction, progress=False,
                         device=str(args.device))
    case = f"{args.model}, {args.epochs} epochs, fraction {args.fraction}, {args.phases} phases x {args.members}"
    ensemble(TrainConfig(model=args.model, epochs=6, fraction=args.fraction, progress=False, device=str(args.device)),
             phases=1, n_models=args.members, warmup_epochs=1, log=lambda *a: None)  # warm-up, not timed
    for flag in (False, True):
        s = ensemble(config, phases=args.phases, n_models=args.members, warmup_epochs=5, ensemble=flag,
                     log=lambda *a: None)
        method = "ensemble" if flag else "no-ensemble baseline"
        note = f"test acc {s['test_acc']:.4f}"
        if flag:
            note += "; scoring + merge / phase training: " + ", ".join(f"{100 * r['overhead']:.1f}%"
                                                                     for r in s["phases"])
        rows.append({"case": case, "method": method, "seconds": s["wall"], "bytes": None,
                     "baselines": [], "floor": "no-ensemble baseline" if flag else None, "note": note})
    return rows
