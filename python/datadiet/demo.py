"""The main job at this stage: train a small classifier on a real dataset shipped inside a
package (scikit-learn's handwritten digits), score every training sample with
``datadiet.ce_scores``, report what the scores say, select subsets with the selection ops and
retrain on them, then merge members fine-tuned on difficulty strata into soups and prune one
(the difficulty ensembles in miniature).

Some training labels are flipped on purpose (``--label-noise``); difficulty scores should
rank those samples first, which is what data pruning and noisy-label filtering rely on:
keeping the easiest ``--keep`` of each class (``topk_select`` per class) should hold fewer
flipped labels than a random subset of the same size (``weighted_sample``).
"""

from __future__ import annotations

import json
import os
import time

import torch
from torch import nn
from tqdm import tqdm

import datadiet
from datadiet import runfolder
from datadiet import backends

SCORES = ("loss", "el2n", "grad_norm", "confidence", "margin", "entropy")


class MLP(nn.Module):
    def __init__(self, d_in: int, n_classes: int, hidden: int = 128, penultimate: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, penultimate), nn.ReLU())
        self.head = nn.Linear(penultimate, n_classes)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h


def load_digits(seed: int, label_noise: float):
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = len(y) // 5
    val, train = perm[:n_val], perm[n_val:]
    y_train = y[train].clone()
    flipped = torch.rand(len(train), generator=g) < label_noise
    y_train[flipped] = (y_train[flipped] + torch.randint(1, 10, (int(flipped.sum()),), generator=g)) % 10
    return x[train], y_train, flipped, x[val], y[val]


def train(model, x, y, epochs: int, seed: int):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bar = tqdm(range(epochs), desc="training", unit="epoch")
    for _ in bar:
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx])[0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def time_backends(logits, targets, features) -> dict[str, float]:
    out = {}
    for b in backends.available(logits.device):
        if b == "triton" and logits.device.type == "cpu":
            continue  # the interpreter is a correctness tool, not a backend to time
        fn = lambda: datadiet.ce_scores(logits, targets, features, backend=b)  # noqa: E731
        fn()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        out[b] = (time.perf_counter() - t0) / 20
    return out


def plot(scores, flipped, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, name in zip(axes.flat, SCORES):
        v = getattr(scores, name)
        ax.hist([v[~flipped].numpy(), v[flipped].numpy()], bins=40, stacked=True,
                label=["clean label", "flipped label"], log=True)
        ax.set_title(name)
    axes.flat[0].legend()
    fig.suptitle("datadiet.ce_scores on scikit-learn digits (train split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x)[0].argmax(1) == y).float().mean().item()


def select_and_retrain(x, y, flipped, x_val, y_val, scores, keep: float, epochs: int, seed: int) -> dict:
    """Retrain on the easiest `keep` of each class by GraNd, on a random subset of the same
    size, and on everything; report subset size, flipped-label rate and validation accuracy."""
    budgets = [round(keep * c) for c in torch.bincount(y, minlength=10).tolist()]
    subsets = {
        "easiest per class by GraNd": datadiet.topk_select(scores.grad_norm, budgets, largest=False, groups=y),
        "random, same size": datadiet.weighted_sample(torch.ones(len(y)), sum(budgets), seed=seed),
        "all training data": torch.arange(len(y)),
    }
    results = {}
    for name, idx in subsets.items():
        torch.manual_seed(seed)  # same initial weights for every subset
        model = MLP(x.shape[1], 10)
        train(model, x[idx], y[idx], epochs, seed)
        model.eval()
        results[name] = {"size": idx.numel(), "flipped_rate": flipped[idx].float().mean().item(),
                         "val_accuracy": accuracy(model, x_val, y_val)}
    return results


def ensemble(model, x, y, x_val, y_val, scores, members: int, epochs: int, seed: int, density: float) -> dict:
    """Members copied from the trained model, each fine-tuned on one GraNd difficulty stratum, merged
    by parameter averaging (uniform soup) and by a greedy soup on validation accuracy; the uniform
    soup is then pruned once by global weight magnitude."""
    import copy

    strata = datadiet.stratified_select(scores.grad_norm, members, 1.0, seed=seed)
    nets = []
    for m, idx in enumerate(strata):
        net = copy.deepcopy(model)
        net.train()
        train(net, x[idx], y[idx], epochs, seed + m)
        nets.append(net.eval())
    evaluate = lambda net: accuracy(net, x_val, y_val)  # noqa: E731
    uniform = datadiet.soup.uniform_soup(nets)
    greedy = datadiet.soup.greedy_soup(nets, evaluate)
    pruned = copy.deepcopy(uniform)
    datadiet.prune.magnitude(pruned, density)
    return {"members_val_accuracy": [evaluate(n) for n in nets], "uniform_soup_val_accuracy": evaluate(uniform),
            "greedy_soup_val_accuracy": greedy.score, "greedy_soup_members": greedy.accepted,
            "pruned_density": density, "pruned_sparsity": datadiet.prune.sparsity(pruned),
            "pruned_val_accuracy": evaluate(pruned)}


def main(epochs: int = 15, seed: int = 0, label_noise: float = 0.05, top: int = 10, out_dir: str = "demo_out",
         keep: float = 0.9, members: int = 3, density: float = 0.9) -> dict:
    x, y, flipped, x_val, y_val = load_digits(seed, label_noise)
    print(f"digits: {len(y)} train / {len(y_val)} val samples, 10 classes, "
          f"{int(flipped.sum())} training labels flipped ({label_noise:.0%})")
    torch.manual_seed(seed)
    model = MLP(x.shape[1], 10)
    train(model, x, y, epochs, seed)
    model.eval()
    with torch.no_grad():
        logits, features = model(x)
        val_acc = (model(x_val)[0].argmax(1) == y_val).float().mean().item()
    scores = datadiet.ce_scores(logits, y, features)
    print(f"validation accuracy {val_acc:.3f}; training accuracy on given labels "
          f"{scores.correct.float().mean():.3f}\n")

    qs = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
    print("score distributions (quantiles over the training set)")
    print(f"{'score':<11}" + "".join(f"{f'q{q:g}':>10}" for q in qs.tolist()))
    for name in SCORES:
        v = torch.quantile(getattr(scores, name), qs)
        print(f"{name:<11}" + "".join(f"{x:>10.4f}" for x in v.tolist()))

    order = datadiet.topk_select(scores.grad_norm, len(y))
    print(f"\nhardest {top} training samples by last-layer gradient norm (GraNd)")
    print(f"{'index':>6} {'label':>6} {'pred':>5} {'flipped':>8} {'loss':>8} {'el2n':>7} {'grad_norm':>10}")
    pred = logits.argmax(1)
    for i in order[:top].tolist():
        print(f"{i:>6} {y[i].item():>6} {pred[i].item():>5} {str(bool(flipped[i])):>8} "
              f"{scores.loss[i]:>8.3f} {scores.el2n[i]:>7.3f} {scores.grad_norm[i]:>10.3f}")
    k = int(flipped.sum())
    found = {name: flipped[datadiet.topk_select(getattr(scores, name), k)].float().mean().item()
             for name in ("loss", "el2n", "grad_norm")}
    print(f"\nflipped labels among the top-{k} by score (random would find {label_noise:.0%}): "
          + ", ".join(f"{n} {v:.0%}" for n, v in found.items()))

    strata = datadiet.stratified_select(scores.grad_norm, 4, 0.25, seed=seed)
    print("flipped labels per GraNd difficulty stratum (easiest first, a random quarter of each): "
          + ", ".join(f"{flipped[p].float().mean():.0%}" for p in strata))

    print(f"\nretraining on subsets that keep {keep:.0%} of the training data")
    subsets = select_and_retrain(x, y, flipped, x_val, y_val, scores, keep, epochs, seed)
    for name, r in subsets.items():
        print(f"  {name:<28} {r['size']:>5} samples, {r['flipped_rate']:>5.1%} flipped, "
              f"validation accuracy {r['val_accuracy']:.3f}")

    merged = ensemble(model, x, y, x_val, y_val, scores, members, max(1, epochs // 3), seed, density)
    print(f"\n{members} members fine-tuned on GraNd difficulty strata (easiest first), merged: validation accuracy "
          + ", ".join(f"{a:.3f}" for a in merged["members_val_accuracy"])
          + f"; uniform soup {merged['uniform_soup_val_accuracy']:.3f}; greedy soup "
          f"{merged['greedy_soup_val_accuracy']:.3f} (members {merged['greedy_soup_members']}); uniform soup "
          f"pruned to {density:.0%} of its weights {merged['pruned_val_accuracy']:.3f}")

    timings = time_backends(logits, y, features)
    print("\nce_scores time on these logits per backend: "
          + ", ".join(f"{b} {t * 1e6:.0f} us" for b, t in timings.items()))

    os.makedirs(out_dir, exist_ok=True)
    plot_path = os.path.join(out_dir, "scores.png")
    plot(scores, flipped, plot_path)
    summary = {"val_accuracy": val_acc, "flipped": k, "flipped_found_in_top_k": found, "subsets": subsets,
               "ensemble": merged, "timings_s": timings, "build": datadiet.build_info()}
    runfolder.write_json(os.path.join(out_dir, "summary.json"), json.loads(json.dumps(summary, default=str)))
    print(f"wrote {plot_path} and {os.path.join(out_dir, 'summary.json')}")
    return summary
