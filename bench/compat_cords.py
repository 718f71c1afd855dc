"""``datadiet.compat.cords.OrthogonalMP_REG_Parallel`` (the drop-in) vs CORDS' own torch solver
on a real GradMatch input, as CORDS' ``GradMatchStrategy`` calls it (per class, ``nnz`` = the
class budget, λ = 0.5, ``positive=True``, ``tol`` = 1e-100).

Two inputs, each CORDS' per-class-per-gradient embedding ``e_y·[1, h]`` (d = 513) of one class
with the class's gradient sum as the target:

- ``digits``: an MLP (64 → 512 → 10) trained on scikit-learn's digits; the class's ~180 images
  jittered (one-pixel shifts, intensity scaling, noise) up to n = 5000 — real gradients, but
  many near-duplicates, so CORDS' solver meets a repeated pick (and stops) early;
- ``cifar-like``: ``bench.omp.per_class_gradient_atoms`` (ReLU features, errors ``p_y − 1``
  spread like a trained CIFAR-10 model's), where CORDS' solver runs most of the budget.

CORDS' solver is loaded from ``--cords-source`` (a CORDS checkout, or its ``omp_solvers.py``),
else from an installed ``cords``; without either, the baseline is ``bench.omp.cords_omp`` (the
same algorithm, re-implemented) and the row says so. Rows report each solver's residual
``‖A x − b‖`` and non-zeros; a third row runs the drop-in with ``nnz`` cut to the atoms CORDS'
solver returned (it stops at its first repeated pick), a like-for-like time.
"""

from __future__ import annotations


import torch

from .harness import Rows
from datadiet.compat import cords


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--digit", type=int, default=3, help="the class whose gradients are the atoms")
    p.add_argument("--cords-source", default=None, help="a CORDS checkout or its omp_solvers.py")


def digits_gradmatch_input(n: int, digit: int, seed: int = 0):
    """``(A [d, n], b [d])`` in CORDS' convention (atoms as columns)."""
    from sklearn.datasets import load_digits

    import datadiet

    x_all, y_all = load_digits(return_X_y=True)
    x_all = torch.tensor(x_all, dtype=torch.float32) / 16
    y_all = torch.tensor(y_all)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        for idx in torch.randperm(len(y_all), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(_jitter(x_all[idx], g)), y_all[idx]).backward()
            opt.step()
    pool = x_all[y_all == digit]
    images = _jitter(pool[torch.randint(0, len(pool), (n,), generator=g)], g)
    with torch.no_grad():
        h = model[1](model[0](images))
        scores = datadiet.ce_scores(model[2](h), torch.full((n,), digit), return_embedding=True)
    atoms = datadiet.select.last_layer_embedding(scores.embedding, h, torch.full((n,), digit), kind="per_class")
    return atoms.T.contiguous(), atoms.sum(0)


def _jitter(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = images.shape[0]
    grid = images.view(b, 8, 8)
    shifts = torch.randint(-1, 2, (2,), generator=g).tolist()
    grid = torch.roll(grid, shifts=shifts, dims=(1, 2))
    scale = 0.8 + 0.4 * torch.rand(b, 1, 1, generator=g)
    return (grid * scale + 0.05 * torch.randn(grid.shape, generator=g)).clamp(0, 1.2).view(b, 64)


def load_cords_solver(source):
    """CORDS' ``OrthogonalMP_REG_Parallel`` and where it came from, or ``(None, why)``."""
    module = cords.load_original(source)
    if module is None:
        return None, "CORDS not found"
    return module.OrthogonalMP_REG_Parallel, module.__file__


def run(args) -> list[dict]:
    from .omp import per_class_gradient_atoms

    rows = Rows(args.device)
    theirs, origin = load_cords_solver(args.cords_source)
    digits = digits_gradmatch_input(args.n, args.digit)
    atoms, target = per_class_gradient_atoms(args.n, 512)
    for name, (A, b) in ((f"digits class {args.digit}, trained MLP", digits),
                         ("cifar-like class (synthetic)", (atoms.T.contiguous(), target))):
        A, b = A.to(args.device), b.to(args.device)
        case = f"{name}: n={A.shape[1]}, d={A.shape[0]}, k={args.k}, lam={args.lam}, w>=0"
        compare(rows, case, A, b, args, theirs, origin)
    return rows


def compare(rows: Rows, case: str, A: torch.Tensor, b: torch.Tensor, args, theirs, origin) -> None:
    rows.inputs(f"A [{A.shape[0]}, {A.shape[1]}] (atoms as columns), b [{A.shape[0]}], nnz={args.k}", A.dtype)
    call = dict(nnz=args.k, positive=True, lam=args.lam, tol=1e-100, device=args.device)
    if theirs is None:
        from .omp import cords_omp

        baseline = "CORDS-style (re-implemented; CORDS not found)"

        def theirs(A, b, nnz, positive, lam, tol, device):
            support, weights, _ = cords_omp(A.T.contiguous(), b, nnz, lam, positive)
            x = torch.zeros(A.shape[1], device=device)
            x[support] = weights
            return x
    else:
        baseline = "CORDS OrthogonalMP_REG_Parallel"
    x_theirs = theirs(A, b, **call)
    x_ours = cords.OrthogonalMP_REG_Parallel(A, b, **call)
    res = {name: float((A.double() @ x.double() - b.double()).norm()) for name, x in
           (("theirs", x_theirs), ("ours", x_ours))}
    rows.add(case, baseline, lambda: theirs(A, b, **call), heavy=True,
             note=f"residual {res['theirs']:.4g}, {int((x_theirs != 0).sum())} atoms; from {origin}")
    rows.add(case, "datadiet.compat.cords drop-in", lambda: cords.OrthogonalMP_REG_Parallel(A, b, **call),
             baselines=[baseline], heavy=True,
             note=f"residual {res['ours']:.4g} ({res['ours'] / res['theirs']:.3f}x CORDS'), "
                  f"{int((x_ours != 0).sum())} atoms")
    # Like for like: the drop-in with the budget cut to the atoms CORDS' solver returned.
    same = dict(call, nnz=int((x_theirs != 0).sum()))
    x_same = cords.OrthogonalMP_REG_Parallel(A, b, **same)
    r_same = float((A.double() @ x_same.double() - b.double()).norm())
    rows.add(case, f"drop-in, nnz = CORDS' {same['nnz']} atoms", lambda: cords.OrthogonalMP_REG_Parallel(A, b, **same),
             baselines=[baseline], heavy=True,
             note=f"residual {r_same:.4g} ({r_same / res['theirs']:.3f}x CORDS'), {int((x_same != 0).sum())} atoms")
