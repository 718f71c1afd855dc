"""The training loop's cost on CPU, in one run:

(a) ``Trainer`` at ``strategy=full`` against a hand-written PyTorch loop on the same model, data,
    seed, optimiser, schedule and per-epoch evaluation — the overhead ratio (target ≤ 1.05×);
(b) per strategy at each fraction: time per selection (scoring pass + solve) as a fraction of the
    training time between selections (GradMatch per class at 10% with every = 20: target ≤ 5%;
    Cached-GradMatch replays the rounds the GradMatch run recorded: target 0);
(c) per-batch selection (Selective-Backprop, AdaSelection): the decision on a batch's losses, on top
    of the no-grad forward pass it needs, as a fraction of one training step (target ≤ 3%).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .harness import Rows, timeit
from datadiet.select.adaselection import METHODS, AdaSelector
from datadiet.select.selective_backprop import SelectiveBackpropSelector
from datadiet.train import datasets, models
from datadiet.train.config import TrainConfig
from datadiet.train.schedules import schedule
from datadiet.train.trainer import Trainer, pool_split

STRATEGIES = {"random": {}, "el2n": {}, "gradmatch": {"every": 20}, "cached_gradmatch": {"every": 20},
              "glister": {"every": 20}, "random_online": {"every": 20}, "random_pb": {"every": 20},
              "forgetting": {"every": 20}, "infobatch": {}, "selective_backprop": {}, "adaselection": {}}
PER_BATCH = {"selective_backprop composer": lambda dev: SelectiveBackpropSelector("composer", keep=0.5, device=dev),
             "selective_backprop jiang": lambda dev: SelectiveBackpropSelector("jiang", device=dev),
             "adaselection (3 methods)": lambda dev: AdaSelector(keep=0.5),
             "adaselection (all 7, drawn)": lambda dev: AdaSelector(METHODS, keep=0.5, lam=0.5, draw=True)}
NO_FRACTION = ("selective_backprop", "infobatch", "adaselection")


def add_arguments(p) -> None:
    p.add_argument("--model", default="cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10, help="epochs of the overhead comparison")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each loop in (a)")
    p.add_argument("--fractions", default="0.1,0.3")
    p.add_argument("--strategies", default=",".join(STRATEGIES))


def plain_loop(model_name: str, width: int, epochs: int, seed: int = 0) -> float:
    """What a user writes by hand: shuffled DataLoader, mean loss, SGD, cosine per step, eval;
    timed from loading the data, as the Trainer is."""
    start = time.perf_counter()
    bundle = datasets.load("digits")
    pool, _ = pool_split(len(bundle.train), 0.1)
    train = torch.utils.data.Subset(bundle.train, pool.tolist())
    cfg = TrainConfig()
    torch.manual_seed(seed)
    model = models.build(model_name, 10, bundle.input_shape, width)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    test = DataLoader(bundle.test, batch_size=cfg.eval_batch_size)
    sched = schedule(opt, "cosine", epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
        assert 0 <= correct <= len(bundle.test)
    return time.perf_counter() - start


def run(args) -> list[dict]:
    rows = Rows(args.device)
    case = f"{args.epochs} epochs of {args.model} (width {args.width}) on digits, strategy=full"
    config = TrainConfig(model=args.model, width=args.width, epochs=args.epochs, progress=False,
                         device=str(args.device))
    plain, ours = [], []
    for _ in range(args.repeats + 1):  # alternated, so machine noise hits both alike; the first pair warms up
        plain.append(plain_loop(args.model, args.width, args.epochs))
        start = time.perf_counter()
        Trainer(config).fit()
        ours.append(time.perf_counter() - start)
    for method, times, floor in (("plain PyTorch loop", plain, None), ("datadiet Trainer", ours,
                                                                        "plain PyTorch loop")):
        rows.append({"case": case, "method": method, "seconds": min(times[1:]), "bytes": None, "baselines": [],
                     "floor": floor, "note": f"best of {args.repeats} (interference only adds time); median "
                                             f"{statistics.median(times[1:]) * 1e3:.0f} ms"})
    cache_folder = tempfile.TemporaryDirectory(prefix="datadiet-bench-")  # removed when run() returns
    for fraction in [float(f) for f in args.fractions.split(",") if f]:
        cache = os.path.join(cache_folder.name, f"gradmatch-{fraction}.cache")  # gradmatch records, cached_gradmatch replays
        names = [s for s in args.strategies.split(",") if s]
        if "cached_gradmatch" in names and "gradmatch" in names:
            names.remove("gradmatch")
            names.insert(names.index("cached_gradmatch"), "gradmatch")
        for name in names:
            params = dict(STRATEGIES.get(name, {}))
            if name in ("gradmatch", "cached_gradmatch"):
                params["cache"] = cache
            every = params.get("every", 20)
            epochs = every + (2 if name == "forgetting" else 0)  # forgetting counts 2 full-data epochs first
            cfg = TrainConfig(model=args.model, width=args.width, epochs=epochs, strategy=name,
                              fraction=None if name in NO_FRACTION else fraction, strategy_params=params,
                              progress=False, device=str(args.device))
            summary = Trainer(cfg).fit()
            selecting = sum(summary["time"][k] for k in ("selection", "scoring", "pretraining"))
            rounds = max(1, sum(1 for s in summary["selections"] if s["size"] < summary["selections"][0]["size"] or
                                len(summary["selections"]) == 1))
            training = summary["time"]["training"]
            rows.append({"case": f"selection cost at fraction {fraction} over {epochs} epochs", "method": name,
                         "seconds": selecting / rounds, "bytes": None, "baselines": [], "floor": None,
                         "note": f"{100 * selecting / training:.1f}% of the {training:.2f} s training time "
                                 f"(test acc {summary['test_acc']:.3f})"})
    rows.extend(per_batch_rows(args))
    return rows


def per_batch_rows(args) -> list[dict]:
    """(c): one training step of the model on a batch of 64 digits, and each per-batch rule's decision
    on that batch's losses (the no-grad forward that gives them is the strategy's stated cost)."""
    device = torch.device(args.device)
    bundle = datasets.load("digits")
    x = torch.stack([bundle.train[i][0] for i in range(64)]).to(device)
    y = torch.as_tensor([bundle.train[i][1] for i in range(64)]).to(device)
    model = models.build(args.model, 10, bundle.input_shape, args.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad():
            return F.cross_entropy(model(x), y, reduction="none")
    rows = Rows(args.device)
    case = f"per-batch selection on 64 digits, {args.model} (width {args.width})"
    t_step, t_forward = timeit(step, device, repeat=50), timeit(forward, device, repeat=50)
    rows.append({"case": case, "method": "training step (forward + backward + SGD)", "seconds": t_step,
                 "bytes": None, "baselines": [], "floor": None, "note": ""})
    rows.append({"case": case, "method": "no-grad selection forward", "seconds": t_forward, "bytes": None,
                 "baselines": [], "floor": None, "note": f"{100 * t_forward / t_step:.1f}% of a step"})
    losses = forward()
    correct = torch.zeros_like(y, dtype=torch.bool)
    for method, make in PER_BATCH.items():
        selector = make(device)
        decide = (lambda s=selector: s.keep_mask(losses)) if isinstance(selector, SelectiveBackpropSelector) else \
            (lambda s=selector: s.select(losses, 0.5, grad_norm=losses.sqrt(), wrong=~correct))
        t = timeit(decide, device, repeat=200)
        rows.append({"case": case, "method": method, "seconds": t, "bytes": None, "baselines": [], "floor": None,
                     "note": f"{100 * t / t_step:.2f}% of a step (target <= 3%)"})
    return rows
