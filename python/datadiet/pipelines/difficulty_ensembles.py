"""Ensembles on difficulty subsets, as stages of the ``Trainer``.

A budget of ``epochs`` is spent as: ``warmup_epochs`` on the full pool with a linearly rising
learning rate, then ``phases`` phases. Each phase (a) trains the current model on a base subset
(``fraction`` of the pool: random by default, or the top last-layer GraNd) for ``base_epochs``;
(b) scores the pool with the base model (last-layer GraNd, one eval-mode pass) and cuts it into
``n_models`` difficulty strata with ``stratified_select``, ``fraction`` of each stratum forming a
member's subset; (c) starts every member from the base model and trains it ``member_epochs`` on
its stratum subset; (d) merges the members with the fused average (``datadiet.soup``): BatchNorm
buffers averaged with the parameters (``bn="average"``) or re-estimated on the base subset
(``bn="reestimate"``). The next phase starts from the merged model.

Budget: a member's subset is ``1/n_models`` the size of the base subset, so the members together
process as many samples in ``member_epochs`` as the base subset would — the no-ensemble baseline
(``ensemble=False``) continues the base model on the base subset for those epochs instead. After
the warm-up the learning rate follows one cosine from ``lr`` to 0 over the phases; each stage
takes its slice (members share the slice of their phase). Members run one after another in this
process (one member per torchrun rank is not built yet).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from datadiet import runfolder
from datadiet._dist import alone, warn_unbalanced, world
from datadiet._dist import init as dist_init
from datadiet._seeds import derive_seed
from datadiet.ops.stratified_select import stratified_select
from datadiet.ops.topk_select import topk_select
from datadiet.ops.weighted_sample import weighted_sample
from datadiet.select._budget import fraction_budget
from datadiet.scores.scoring import final_linear, score_dataset
from datadiet.soup import uniform_soup
from datadiet.strategies.static import FixedSubset, Full
from datadiet.train import datasets
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer, pool_split

BASES = ("random", "grand")
BN = ("average", "reestimate")


@dataclass(frozen=True)
class EnsemblePlan:
    warmup_epochs: int
    phases: int
    base_epochs: list
    member_epochs: list

    def total(self) -> int:
        return self.warmup_epochs + sum(self.base_epochs) + sum(self.member_epochs)


def plan(epochs: int, phases: int, warmup_epochs: int) -> EnsemblePlan:
    """Epochs per stage: the post-warm-up budget split over the phases as evenly as integers
    allow (the first ``rest % phases`` phases one epoch longer), each phase half base (rounded
    down), half members."""
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"ensemble: phases must be an int >= 1, got {phases!r}")
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError(f"ensemble: warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
    rest = epochs - warmup_epochs
    if rest < 2 * phases:
        raise ValueError(f"ensemble: {epochs} epochs leave {rest} after {warmup_epochs} warm-up epochs, fewer than "
                         f"2 per phase for {phases} phases")
    per = [rest // phases + (1 if p < rest % phases else 0) for p in range(phases)]
    base = [p // 2 for p in per]
    return EnsemblePlan(warmup_epochs, phases, base, [p - b for p, b in zip(per, base)])


def _cosine(t: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def ensemble(config: TrainConfig, *, phases: int = 2, n_models: int = 3, warmup_epochs: int = 1,
             base: str = "random", bn: str = "average", ensemble: bool = True, grand_inits: int = 0,
             grand_epochs: int = 1, member_ranks: bool = True, log=print) -> dict:
    """Runs the difficulty-ensembles study's schedule (module docstring) with ``config``'s data, model, optimiser, seed
    and ``fraction`` (default 0.3); returns (and with ``config.out`` writes ``ensemble.json``) the
    accuracy and wall time of every phase. ``grand_inits`` > 0: the strata come from GraNd averaged
    over that many fresh initialisations each trained ``grand_epochs`` on the full pool (the GraNd
    paper's estimate) instead of the base model's GraNd."""
    if base not in BASES:
        raise ValueError(f"ensemble: base must be one of {BASES}, got {base!r}")
    if bn not in BN:
        raise ValueError(f"ensemble: bn must be one of {BN}, got {bn!r}")
    if isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 1:
        raise ValueError(f"ensemble: n_models must be an int >= 1, got {n_models!r}")
    for key, value, low in (("grand_inits", grand_inits, 0), ("grand_epochs", grand_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"ensemble: {key} must be an int >= {low}, got {value!r}")
    fraction = 0.3 if config.fraction is None else config.fraction
    schedule = plan(config.epochs, phases, warmup_epochs)
    setting = {"config": config.identity(), "phases": phases, "n_models": n_models, "warmup_epochs": warmup_epochs,
               "base": base, "bn": bn, "ensemble": ensemble, "grand_inits": grand_inits, "grand_epochs": grand_epochs,
               "member_ranks": member_ranks}
    dist_init(config.device, config.dist_timeout)  # under torchrun: rank 0 alone claims the folder
    with runfolder.result_folder(config.out, "ensemble.json", ("ensemble.json",), setting,
                                 overwrite=config.overwrite) as saved:
        if saved is not None:
            log(f"ensemble: finished earlier with the same setting in {config.out}")
            return saved
        summary = _ensemble(config, schedule, fraction, n_models, warmup_epochs, base, bn, ensemble, grand_inits,
                            grand_epochs, member_ranks, log)
        summary["setting"] = setting
        if config.out and world()[1] == 0:  # under torchrun every rank runs the stages; rank 0 writes
            runfolder.write_json(os.path.join(config.out, "ensemble.json"), summary)
        return summary


def _ensemble(config, schedule, fraction, n_models, warmup_epochs, base, bn, ensemble, grand_inits, grand_epochs,
              member_ranks, log) -> dict:
    data = config.load_data()
    data.require_test("ensemble", config.dataset)
    datasets.require_classification(config.dataset, "ensemble (GraNd strata of a classifier)", data.task)
    pool = len(pool_split(len(data.train), config.val_fraction, data.unusable_train())[0])
    if n_models > pool:
        raise ValueError(f"ensemble: n_models = {n_models} members need a difficulty stratum each, more than the "
                         f"pool's {pool} samples")
    stage = dataclasses.replace(config, strategy="full", fraction=None, every=None, warm=None, strategy_params={},
                                out=None, resume=None, checkpoint_every=0).validate()
    rest = config.epochs - warmup_epochs

    def lr_of(a: int, b: int) -> tuple[float, float]:
        """A stage over cosine epochs [a, b): its peak lr and its final fraction of it."""
        return config.lr * _cosine(a / rest), _cosine(b / rest) / max(_cosine(a / rest), 1e-12)

    state, t = None, 0  # the model carried between stages; epochs of the cosine done
    started = time.perf_counter()
    if warmup_epochs:
        warm = _run(stage, Full(), data, None, warmup_epochs, lr=config.lr, schedule="constant", rising=True,
                    seed=())
        state = warm.model.state_dict()
        log(f"warm-up: {warmup_epochs} epochs on the full pool, test acc {warm.history[-1]['test_acc']:.4f}")
    phases_out = []
    for p in range(schedule.phases):
        clock = {}
        base_epochs, member_epochs = schedule.base_epochs[p], schedule.member_epochs[p]
        tick = time.perf_counter()
        probe = Trainer(stage, Full(), data=data, initial_state=state)
        if state is None:  # no warm-up: every stage descends from this one initialisation
            state = probe.model.state_dict()
        n = probe.driver.sampler.n
        k = fraction_budget(fraction, n)
        if base == "random":
            base_idx = weighted_sample(torch.ones(n), k, seed=derive_seed(config.seed, 20, p))
        else:
            base_idx = topk_select(_grand(probe), k)
        clock["base_selection"] = time.perf_counter() - tick
        lr, final = lr_of(t, t + base_epochs)
        trainer = _run(stage, FixedSubset(base_idx), data, state, base_epochs, lr=lr, final=final, seed=(p, 0))
        clock["base"] = trainer.elapsed
        base_state, base_acc = trainer.model.state_dict(), trainer.history[-1]["test_acc"]
        t += base_epochs
        lr, final = lr_of(t, t + member_epochs)
        record = {"phase": p, "base_epochs": base_epochs, "member_epochs": member_epochs, "base_acc": base_acc,
                  "base_size": int(base_idx.numel())}
        if not ensemble:
            cont = _run(stage, FixedSubset(base_idx), data, base_state, member_epochs, lr=lr, final=final, seed=(p, 1))
            clock["members"] = cont.elapsed
            state, acc = cont.model.state_dict(), cont.history[-1]["test_acc"]
        else:
            tick = time.perf_counter()
            scores = _grand(trainer) if not grand_inits else torch.stack(
                [trainer.proxy_scores(grand_epochs, derive_seed(config.seed, 23, p, i)).grad_norm
                 for i in range(grand_inits)]).mean(0)
            strata = stratified_select(scores, n_models, fraction, seed=derive_seed(config.seed, 21, p))
            clock["scoring"] = time.perf_counter() - tick
            size, rank = world()
            spread = member_ranks and size > 1
            if spread:
                warn_unbalanced("ensemble member", n_models, size)
            mine = [m for m in range(n_models) if not spread or m % size == rank]
            members, clock["members"] = [], 0.0
            for m in mine:
                with alone() if spread else contextlib.nullcontext():
                    member = _run(stage, FixedSubset(strata[m].cpu()), data, base_state, member_epochs, lr=lr,
                                  final=final, seed=(p, 2 + m))
                clock["members"] += member.elapsed
                members.append(member)
            tick = time.perf_counter()
            bn_loader = None
            if bn == "reestimate":
                bn_loader = DataLoader(Subset(trainer.train_set, base_idx.tolist()), batch_size=config.eval_batch_size)
            if spread:
                soup = copy.deepcopy(trainer.model)
                soup.load_state_dict(mean_across_ranks([mb.model for mb in members], trainer.model, n_models))
                if bn_loader is not None:
                    torch.optim.swa_utils.update_bn(bn_loader, soup, device=trainer.device)
                    for buffer in soup.buffers():  # every rank re-estimates; rank 0's statistics count
                        torch.distributed.broadcast(buffer, 0)
                member_accs = _gather_by_member({m: mb.history[-1]["test_acc"] for m, mb in zip(mine, members)})
                clock["members"] = _max_over_ranks(clock["members"], trainer.device)
            else:
                soup = uniform_soup([mb.model for mb in members], bn_loader=bn_loader, device=trainer.device)
                member_accs = [mb.history[-1]["test_acc"] for mb in members]
            state, acc = soup.state_dict(), trainer.evaluate(soup)[0]
            clock["merge"] = time.perf_counter() - tick
            record.update(member_accs=member_accs, member_sizes=[int(s.numel()) for s in strata],
                          member_ranks=[m % size if spread else None for m in range(n_models)])
        t += member_epochs
        training = clock["base"] + clock["members"]
        record.update(acc=acc, time=clock, overhead=(clock.get("scoring", 0.0) + clock.get("merge", 0.0)) / training)
        phases_out.append(record)
        log(f"phase {p}: base ({base_epochs} epochs on {record['base_size']}) {base_acc:.4f} -> "
            f"{'ensemble of ' + str(n_models) if ensemble else 'continued'} {acc:.4f}")
    return {"config": config.identity(), "ensemble": ensemble, "phases": phases_out, "n_models": n_models,
            "fraction": fraction, "plan": dataclasses.asdict(schedule), "test_acc": phases_out[-1]["acc"],
            "wall": time.perf_counter() - started, "base": base, "bn": bn}


def mean_across_ranks(models: list, template: torch.nn.Module, n_models: int) -> dict:
    """The mean state of ``n_models`` models spread over the ranks (each rank passes its own; a
    rank may have none), by one all_reduce of the float64 sums; ``template`` gives the layout."""
    dist = torch.distributed
    keys = list(template.state_dict().keys())
    like = template.state_dict()
    comm = torch.device("cpu") if dist.get_backend() == "gloo" else next(template.parameters()).device
    total = torch.zeros(sum(like[k].numel() for k in keys), dtype=torch.float64, device=comm)
    for model in models:
        state = model.state_dict()
        total += torch.cat([state[k].detach().reshape(-1).to(comm, torch.float64) for k in keys])
    dist.all_reduce(total)
    total /= n_models
    out, offset = {}, 0
    for k in keys:
        v = like[k]
        chunk = total[offset:offset + v.numel()].view(v.shape)
        out[k] = (chunk if v.dtype.is_floating_point else chunk.round()).to(v.device, v.dtype)
        offset += v.numel()
    return out


def _gather_by_member(mine: dict) -> list:
    everyone = [None] * world()[0]
    torch.distributed.all_gather_object(everyone, mine)
    merged = {m: acc for part in everyone for m, acc in part.items()}
    return [merged[m] for m in sorted(merged)]


def _max_over_ranks(value: float, device) -> float:
    dist = torch.distributed
    comm = torch.device("cpu") if dist.get_backend() == "gloo" else device
    t = torch.tensor([value], dtype=torch.float64, device=comm)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _run(stage: TrainConfig, strategy, data, state, epochs: int, *, lr: float, final: float = 0.0,
         schedule: str = "cosine", rising: bool = False, seed: tuple = ()) -> Trainer:
    """One stage: ``epochs`` of ``strategy`` from ``state`` with its slice of the learning rate
    (``rising``: a linear warm-up over the whole stage); ``seed`` picks the stage's own shuffling."""
    cfg = dataclasses.replace(stage, epochs=epochs, lr=lr, schedule=schedule, final_lr=min(1.0, final),
                              warmup_steps=10 ** 9 if rising else 0,  # the Trainer caps it at the stage's steps
                              seed=derive_seed(stage.seed, 22, *seed) if seed else stage.seed)
    trainer = Trainer(cfg, strategy, data=data, initial_state=state)
    trainer.fit()
    return trainer


def _grand(trainer: Trainer) -> torch.Tensor:
    """Last-layer GraNd of the trainer's model over its pool (eval mode, evaluation transforms)."""
    table = score_dataset(trainer.model, trainer.driver.score_set, head=final_linear(trainer.model,
                                                                                    trainer.config.head),
                          batch_size=trainer.config.eval_batch_size, device=trainer.device)
    return table.grad_norm
