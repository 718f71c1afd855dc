"""omp (the GradMatch solver) vs the algorithm CORDS runs: every iteration rebuild
``A_Sᵀ A_S + λI``, solve it with ``torch.linalg.lstsq``, and for non-negative weights drop the
most negative coefficient and re-solve until none is negative — CORDS' own
``OrthogonalMP_REG_Parallel`` with ``--cords-source`` (a CORDS checkout or its ``omp_solvers.py``)
or an installed ``cords``, else the same algorithm re-implemented here. Both on one run's data;
the note column gives each method's final residual ‖Σ w a − b‖, objective ‖Σ w a − b‖² + λ‖w‖²
(what both minimise) and atoms returned, and datadiet's picks and rejected picks.

Two floors per case: ``k x torch.mv`` (k matrix-vector passes over the atoms, what the
correlations cost at the least with torch's kernel) and ``k reads of the atoms`` (k sums over
them: the memory traffic of k passes, no arithmetic to speak of); datadiet's rows give their time
over the read floor.

Cases:
- one CIFAR-10-like class in CORDS' per-class-per-gradient embedding (d = 1 + D): n = 5000
  atoms ``e_y·[1, h]`` with ReLU features h (D = 512), target = their sum, k = 500, λ = 0.5,
  w ≥ 0 (CORDS' per-class defaults), with two error models: ``p_y − 1`` spread like a trained
  model's, and the label's entry of ``softmax(2·z) − onehot`` over 10 classes (the input where the
  earlier residual-based acceptance rule undid 915 of 1,469 picks); datadiet also at λ = 0;
- ``--imagenet``: ImageNet-shaped per-class selection, 1000 classes of 1281, 10% per class, in
  the bias-only embedding (d = C = 1000, atoms p − onehot from ``ce_scores``) and in the
  factorised full last layer (C = 1000, D = 512, ``omp_factored``): wall time and the process's
  peak memory (one batched call each; the baseline would take hours and is not run).

``--device cuda`` runs the same cases on the GPU: the baseline on CUDA tensors, datadiet's CUDA
and Triton engines, and peak GPU memory instead of RSS.
"""

from __future__ import annotations

import resource
import time

import torch

import datadiet
from .harness import Rows


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--imagenet", action="store_true", help="add the 1000-class x 1281 per-class case")
    p.add_argument("--cords-source", default=None, help="a CORDS checkout or its omp_solvers.py (the baseline)")


def cords_omp(a: torch.Tensor, b: torch.Tensor, k: int, lam: float, positive: bool):
    """CORDS' OrthogonalMP_REG (torch): rebuild-and-lstsq every iteration, drop-most-negative."""
    at = a.T  # [d, n], atoms as columns
    resid, support, x = b.clone(), [], torch.zeros(0, device=a.device)
    eye = lambda m: torch.eye(m, dtype=a.dtype, device=a.device)  # noqa: E731
    for _ in range(k):
        proj = at.T @ resid
        j = int(torch.argmax(proj if positive else proj.abs()))
        if j in support:
            break
        support.append(j)
        while True:
            sub = at[:, support]
            x = torch.linalg.lstsq(sub.T @ sub + lam * eye(len(support)), (sub.T @ b)[:, None]).solution[:, 0]
            if not positive or len(support) == 0 or float(x.min()) >= 0:
                break
            support.pop(int(torch.argmin(x)))
        resid = b - at[:, support] @ x if support else b.clone()
    return support, x, float(resid.norm())


def per_class_gradient_atoms(n: int, features: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(n, features, generator=g) + 0.5 * torch.randn(features, generator=g))
    e_y = -(1 - torch.rand(n, generator=g) ** 0.3)  # p_y - 1 of the label's logit
    atoms = torch.cat([e_y[:, None], e_y[:, None] * h], 1).contiguous()
    return atoms, atoms.sum(0)


def softmax_class_atoms(n: int, features: int, classes: int = 10, label: int = 3, seed: int = 0):
    """One class's atoms e_y·[1, h], h = relu(randn), e = softmax(2·randn) − onehot(label)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(n, features, generator=g))
    e = torch.softmax(2 * torch.randn(n, classes, generator=g), 1)
    e_y = e[:, label:label + 1] - 1
    atoms = torch.cat([e_y, e_y * h], 1).contiguous()
    return atoms, atoms.sum(0)


def imagenet_bias_embedding(classes: int = 1000, per_class: int = 1281, seed: int = 0):
    """p − onehot of random logits, grouped by class, built in chunks (5 GB of atoms)."""
    n = classes * per_class
    labels = torch.arange(classes).repeat_interleave(per_class)
    atoms = torch.empty(n, classes)
    g = torch.Generator().manual_seed(seed)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        logits = torch.randn(hi - lo, classes, generator=g) * 2
        logits[torch.arange(hi - lo), labels[lo:hi]] += 3  # the label is usually ranked high
        atoms[lo:hi] = datadiet.ce_scores(logits, labels[lo:hi], return_embedding=True).embedding
    offsets = [c * per_class for c in range(classes + 1)]
    targets = atoms.view(classes, per_class, classes).sum(1)
    return atoms, targets, offsets


def once(rows: Rows, case: str, backend: str, target_norms: torch.Tensor, fn, inputs: str) -> None:
    """One timed call (these run for tens of seconds on CPU) with the peak memory: the process's
    RSS on CPU, allocated GPU memory on CUDA."""
    gpu = target_norms.device.type == "cuda"
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    res = fn()
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rel = (res.residual / target_norms).median()
    what = "peak GPU memory" if gpu else "peak RSS"
    rows.append({"case": case, "method": f"datadiet {backend}", "seconds": seconds, "bytes": None, "baselines": [],
                 "floor": None, "note": f"one call; median relative residual {float(rel):.3f}; "
                                        f"{int(res.iterations.sum())} picks, {int(res.rejected.sum())} rejected; {what} "
                                        f"{peak / 2**30:.1f} GiB ({inputs}; +{(peak - before) / 2**30:.2f} GiB "
                                        "during the call)"})


def objective(a: torch.Tensor, b: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, lam: float):
    """(‖b − Σ w_s a_s‖, ‖b − Σ w_s a_s‖² + λ‖w‖²) in float64 (indices < 0 are padding)."""
    keep = indices >= 0
    w = weights[keep].double()
    r = float((b.double() - a[indices[keep]].double().T @ w).norm())
    return r, r * r + lam * float(w.square().sum())


def baseline(source):
    """(name, fn(a, b, k, lam) -> (indices, weights)): CORDS' own solver when found, else cords_omp."""
    from .compat_cords import load_cords_solver

    theirs, origin = load_cords_solver(source)
    if theirs is None:
        def fn(a, b, k, lam):
            support, x, _ = cords_omp(a, b, k, lam, True)
            return torch.tensor(support, dtype=torch.int64), x[:len(support)]  # a drop can empty the support
        return "CORDS-style rebuild + lstsq (re-implemented; CORDS not found)", fn

    last: list = [None, None]  # CORDS takes the atoms as columns: transposed once per input, untimed

    def fn(a, b, k, lam):
        if last[0] is not a:
            last[:] = [a, a.T.contiguous()]
        x = theirs(last[1], b, nnz=k, positive=True, lam=lam, tol=1e-100, device=a.device)
        support = torch.nonzero(x).flatten()
        return support, x[support]
    return f"CORDS OrthogonalMP_REG_Parallel ({origin})", fn


def run(args) -> list[dict]:
    device = args.device
    rows = Rows(device)
    backends = [b for b in datadiet.backends.available(device) if b in ("cpu", "cuda", "triton")]
    name, theirs = baseline(args.cords_source)
    for errors, make in (("trained-like errors", per_class_gradient_atoms), ("softmax errors", softmax_class_atoms)):
        a, b = (t.to(device) for t in make(args.n, args.features))
        case = f"one class, {errors}: n={args.n}, d={a.shape[1]}, k={args.k}, lam={args.lam}, w>=0"
        rows.inputs(f"atoms [{a.shape[0]}, {a.shape[1]}], target [{a.shape[1]}], k={args.k}", a.dtype)
        one_class(rows, case, a, b, args.k, args.lam, name, theirs, backends)
    if args.imagenet:
        imagenet(rows, device, backends)
    return rows


def one_class(rows: Rows, case: str, a: torch.Tensor, b: torch.Tensor, k: int, lam: float, name: str, theirs,
              backends: list[str]) -> None:
    support, weights = theirs(a, b, k, lam)
    r_base, f_base = objective(a, b, support, weights, lam)
    found = int(support.numel())
    rows.add(case, name, lambda: theirs(a, b, k, lam), heavy=True,
             note=f"residual {r_base:.4g}, objective {f_base:.6g}, {found} atoms")
    probe = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(0)).to(a)
    rows.add(case, "k x torch.mv", lambda: [torch.mv(a, probe) for _ in range(k)], heavy=True,
             note="k matrix-vector passes over the atoms")
    rows.add(case, "k reads of the atoms", lambda: [a.sum() for _ in range(k)], heavy=True,
             note="k sums over the atoms: the memory traffic of k passes")
    for backend in backends:
        for lam_b in (lam, 0.0) if lam else (lam,):
            res = datadiet.ops.omp(a, b, k, lam=lam_b, backend=backend)
            r, f = objective(a, b, res.indices, res.weights, lam_b)
            method = f"datadiet {backend}" + (", lam=0" if lam_b != lam else "")
            vs = f" ({r / r_base:.3f}x baseline's; objective {f / f_base:.3f}x)" if lam_b == lam else ""
            rows.add(case, method, lambda backend=backend, lam_b=lam_b: datadiet.ops.omp(
                a, b, k, lam=lam_b, backend=backend), baselines=[name] if lam_b == lam else [], floor="k reads of the atoms", heavy=True,
                note=f"residual {r:.4g}{vs}, objective {f:.6g}, {int((res.indices >= 0).sum())} atoms, "
                     f"{int(res.iterations)} picks ({int(res.rejected)} rejected)")


def imagenet(rows: Rows, device: torch.device, backends: list[str]) -> None:
    atoms, targets, offsets = imagenet_bias_embedding()
    atoms, targets = atoms.to(device), targets.to(device)
    budgets = [(hi - lo) // 10 for lo, hi in zip(offsets[:-1], offsets[1:])]
    for backend in backends:
        once(rows, "imagenet per class: 1000 x 1281, 10%, bias-only d=1000", backend, targets.norm(dim=1),
             lambda: datadiet.ops.omp(atoms, targets, offsets=offsets, budgets=budgets, lam=0.5, backend=backend),
             f"atoms {atoms.numel() * 4 / 2**30:.1f} GiB")
    g = torch.Generator().manual_seed(1)
    features = torch.relu(torch.randn(atoms.shape[0], 512, generator=g)).to(device)
    ones = torch.ones(features.shape[0], 1, device=device)
    norms = torch.stack([(atoms[a:b].T @ torch.cat([features[a:b], ones[a:b]], 1)).norm()
                         for a, b in zip(offsets[:-1], offsets[1:])])
    for backend in backends:
        once(rows, "imagenet per class: 1000 x 1281, 10%, factorised C=1000, D=512", backend, norms,
             lambda: datadiet.ops.omp_factored(atoms, features, offsets=offsets, budgets=budgets, lam=0.5,
                                               backend=backend),
             f"E {atoms.numel() * 4 / 2**30:.1f} GiB + H {features.numel() * 4 / 2**30:.1f} GiB")
