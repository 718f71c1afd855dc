"""``datadiet select`` at scale, in one run:

(a) the scoring stage on an ImageNet-layout folder of JPEGs (generated: ``--images`` at 500×375,
    or ``--folder``): ``datadiet select``'s scoring stage (from its manifest) against what a user
    writes by hand — torchvision's ``ImageFolder`` with the same evaluation transforms, a
    ``DataLoader`` with the same workers and batch size, and a no-grad forward of the same model
    (target: at most 1.05× its time); and the speed-up of ``--score-image-size`` (JPEGs decoded
    at reduced scale) over the full size;
(b) the selection stage at ImageNet's shape from a ``features:`` file (``--rows`` × ``--dim``,
    ``--classes`` classes; a linear scorer, the classes' means, as ``--weights``): EL2N per class,
    GradMatch per class and GLISTER (10% of the pool held out; the validation gradient refreshed
    64 times, its default), each a ``datadiet select`` child process: time per stage and the child's peak resident memory
    against the features file's size (target ≤ 2.5×);
(c) (b)'s EL2N under torchrun with 2 gloo ranks: the subset file equal to one process's (both
    one thread per process), and the largest rank's peak memory.

Times of (b) and (c) are single runs (minutes each at full size); (a) takes the best of
``--repeats`` alternated runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def add_arguments(p) -> None:
    p.add_argument("--stages", default="scoring,selection,ranks", help="any of scoring, selection, ranks")
    p.add_argument("--images", type=int, default=5000, help="(a) generated JPEGs (500x375) in the training split")
    p.add_argument("--folder", default=None, help="(a) an ImageNet-layout folder instead of generated images")
    p.add_argument("--model", default="mobilenet_v3_small", help="(a) the scoring model (a torchvision name)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--small-size", type=int, default=112, help="(a) the reduced scoring size compared")
    p.add_argument("--batch-size", type=int, default=64, help="(a) scoring batch size")
    p.add_argument("--workers", type=int, default=None, help="(a) loader workers (default: select's own default)")
    p.add_argument("--repeats", type=int, default=2, help="(a) timed runs of each method, alternated")
    p.add_argument("--rows", type=int, default=1281167, help="(b) samples in the features file")
    p.add_argument("--dim", type=int, default=512, help="(b) feature dimension")
    p.add_argument("--classes", type=int, default=1000, help="(b) classes")
    p.add_argument("--fraction", type=float, default=0.1, help="(b) the fraction kept")
    p.add_argument("--strategies", default="el2n,gradmatch,glister", help="(b) the strategies run")
    p.add_argument("--glister-rows", type=int, default=None, help="(b) rows GLISTER selects from (default all)")
    p.add_argument("--keep", default=None, help="a folder to keep the generated data in (default: temporary)")


def run(args) -> list[dict]:
    stages = {s for s in args.stages.split(",") if s}
    unknown = stages - {"scoring", "selection", "ranks"}
    if unknown:
        raise SystemExit(f"bench select: --stages: unknown {', '.join(sorted(unknown))}")
    scratch = tempfile.TemporaryDirectory(prefix="datadiet-bench-select-")
    root = args.keep or scratch.name
    os.makedirs(root, exist_ok=True)
    rows: list[dict] = []
    if stages & {"selection", "ranks"}:  # first, while this process is small (see select_child)
        rows += selection_rows(args, root, stages)
    if "scoring" in stages:
        rows += scoring_rows(args, root)
    scratch.cleanup()
    return rows


# -- (a) the scoring stage on JPEGs ------------------------------------------------------------

def jpeg_folder(root: str, images: int, classes: int = 10, seed: int = 0) -> str:
    """An ImageNet-layout folder of ``images`` 500×375 JPEGs (smooth random scenes with noise, ~40 KB
    each, as photos compress) over ``classes`` classes, and one validation image per class."""
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            c = i % classes
            folder = os.path.join(root, split, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            scene = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.int16)
            pixels = np.clip(scene + rng.integers(-12, 13, scene.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{split}_{i:07d}.JPEG"), quality=85)
    open(done, "w").close()
    return root


def bare_loop(folder: str, model: torch.nn.Module, image_size: int, batch_size: int, workers: int,
              device: torch.device) -> float:
    """What a user writes: ImageFolder, the evaluation transforms, a DataLoader, a no-grad forward."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(round(image_size * 8 / 7)), transforms.CenterCrop(image_size),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    folder_set = datasets.ImageFolder(os.path.join(folder, "train"), tf)
    start = time.perf_counter()  # from here, as select's scoring stage is timed (its folder scan is loading)
    loader = torch.utils.data.DataLoader(folder_set, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    model.eval()
    with torch.no_grad():
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def scoring_rows(args, root: str) -> list[dict]:
    from datadiet.selection import select_dataset
    from datadiet.selection.job import default_workers
    from datadiet.train import models
    from datadiet.train.config import TrainConfig

    device = torch.device(args.device)
    folder = args.folder or jpeg_folder(os.path.join(root, "jpegs"), args.images)
    classes = len(os.listdir(os.path.join(folder, "train")))
    images = sum(len(files) for _, _, files in os.walk(os.path.join(folder, "train")))
    workers = default_workers("imagefolder:") if args.workers is None else args.workers
    torch.manual_seed(0)
    model = models.build(args.model, classes, (3, args.image_size, args.image_size)).to(device)
    weights = os.path.join(root, "scorer.pt")
    torch.save(model.state_dict(), weights)
    config = TrainConfig(dataset=f"imagefolder:{folder}", model=args.model, strategy="el2n", fraction=0.3,
                         image_size=args.image_size, eval_batch_size=args.batch_size, workers=workers,
                         device=str(device), progress=False, overwrite=True)
    times: dict[str, list[float]] = {"bare": [], "select": [], "small": [], "job": []}
    for _ in range(args.repeats):  # alternated, so machine noise hits all alike
        times["bare"].append(bare_loop(folder, model, args.image_size, args.batch_size, workers, device))
        began = time.perf_counter()
        chosen = select_dataset(dataclasses.replace(config, out=os.path.join(root, "sel")), weights=weights,
                                progress=False)
        times["job"].append(time.perf_counter() - began)
        times["select"].append(chosen.manifest["times"]["scoring"])
        small = select_dataset(dataclasses.replace(config, out=os.path.join(root, "sel-small"),
                                                   score_image_size=args.small_size), weights=weights, progress=False)
        times["small"].append(small.manifest["times"]["scoring"])
    case = (f"(a) scoring {images} JPEGs 500x375 ({classes} classes), {args.model}, batch {args.batch_size}, "
            f"{workers} workers")
    best = {k: min(v) for k, v in times.items()}

    def row(method, seconds, note, floor=None, baselines=()):
        return {"case": case, "method": method, "seconds": seconds, "bytes": None, "baselines": list(baselines),
                "floor": floor, "note": note}
    return [
        row(f"bare DataLoader + forward at {args.image_size}", best["bare"], f"{images / best['bare']:.0f} img/s"),
        row(f"datadiet select scoring stage at {args.image_size}", best["select"],
            f"{images / best['select']:.0f} img/s (target <= 1.05x the bare loop); whole job {best['job']:.1f} s "
            "(folder scan, fingerprint, writing)", floor=f"bare DataLoader + forward at {args.image_size}"),
        row(f"datadiet select --score-image-size {args.small_size}", best["small"],
            f"{images / best['small']:.0f} img/s", baselines=[f"datadiet select scoring stage at {args.image_size}"]),
    ]


# -- (b) and (c): selection at ImageNet's shape from a features file ----------------------------

def features_in_child(root: str, rows: int, dim: int, classes: int) -> tuple[str, str]:
    """``features_file`` run in a child process, so this one never holds the array (see select_child)."""
    code = f"from {__package__}.select import features_file; features_file({root!r}, {rows}, {dim}, {classes})"
    top = os.path.dirname(os.path.abspath(__file__))
    for _ in __package__.split("."):  # the folder holding the top-level package (bench, or datadiet)
        top = os.path.dirname(top)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=top)
    return features_file(root, rows, dim, classes)  # the names, and the scorer (small)


def features_file(root: str, rows: int, dim: int, classes: int, seed: int = 0) -> tuple[str, str]:
    """A features .npz (float32 class means plus unit noise, int64 labels, written in chunks) and a
    linear scorer's state_dict (the nearest-mean classifier: W = means, b = -|mean|^2 / 2)."""
    path, weights = os.path.join(root, f"features-{rows}x{dim}.npz"), os.path.join(root, f"linear-{dim}.pt")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim), dtype=np.float32) * np.float32(0.25)
    if not os.path.exists(path):
        labels = rng.integers(0, classes, rows)
        features = np.empty((rows, dim), np.float32)
        for start in range(0, rows, 1 << 16):
            stop = min(rows, start + (1 << 16))
            features[start:stop] = means[labels[start:stop]] + rng.standard_normal((stop - start, dim),
                                                                                    dtype=np.float32)
        np.savez(path + ".part.npz", features=features, labels=labels)
        os.replace(path + ".part.npz", path)
        del features
    m = torch.from_numpy(means)
    torch.save({"1.weight": m, "1.bias": -0.5 * m.pow(2).sum(1)}, weights)
    return path, weights


def select_child(args: list[str], launcher=(sys.executable,), threads: str | None = None) -> dict:
    """A ``datadiet select`` child process: its manifest, wall time and peak resident memory (the
    largest process of its tree: the child itself, or torchrun's largest rank). Linux counts in a
    child's peak this process's own peak before the child's exec, so this process stays small:
    the data are generated in children too, and the in-process stage (a) runs after."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    began = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([*launcher, "-m", "datadiet", "select", "--device", "cpu", "--no-progress", *args],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
        # reaped here, not by Popen: wait4 reports the peak resident memory of the child and of the
        # descendants it reaped (torchrun's ranks)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - began
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(f"datadiet select {' '.join(args)} failed: "
                               f"{log.read().decode(errors='replace').strip()[-2000:]}")
    out_dir = args[args.index("--out") + 1]
    with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    return {"manifest": manifest, "wall": wall, "peak": usage.ru_maxrss * 1024, "dir": out_dir}


def interpreter_peak() -> int:
    """Peak resident bytes of a child that only imports datadiet's command line (torch included):
    the floor every ``datadiet select`` process starts from."""
    proc = subprocess.Popen([sys.executable, "-c", "import datadiet.cli, datadiet.selection"])
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_maxrss * 1024


def selection_rows(args, root: str, stages: set) -> list[dict]:
    floor = interpreter_peak()
    path, weights = features_in_child(root, args.rows, args.dim, args.classes)
    size = os.path.getsize(path)
    common = ["--dataset", f"features:{path}", "--model", "linear", "--weights", weights, "--fraction",
              str(args.fraction), "--eval-batch-size", "1024", "--overwrite"]
    case = f"(b) selecting {args.fraction:g} of {args.rows} x {args.dim} features, {args.classes} classes"
    rows = []
    runs = {}
    if "selection" in stages:
        small, glister_rows = path, args.glister_rows or args.rows
        if glister_rows < args.rows:
            small, _ = features_in_child(root, glister_rows, args.dim, args.classes)
        plans = [("el2n per class", path, ["--strategy", "el2n"]),
                 ("gradmatch per class", path, ["--strategy", "gradmatch"]),
                 (f"glister ({glister_rows} rows, 10% held out)", small,
                  ["--strategy", "glister", "--val-fraction", "0.1"])]
        wanted = {name for name in args.strategies.split(",") if name}
        for method, data, extra in [plan for plan in plans if plan[0].split()[0] in wanted]:
            child = ["--dataset", f"features:{data}", *common[2:], *extra, "--out",
                     os.path.join(root, method.split()[0])]
            runs[method] = result = select_child(child)
            t = result["manifest"]["times"]
            rows.append({"case": case, "method": method, "seconds": result["wall"], "bytes": None, "baselines": [],
                         "floor": None, "peak_rss_bytes": result["peak"], "file_bytes": os.path.getsize(data),
                         "note": (f"loading {t['loading']:.1f} s, scoring {t['scoring']:.1f} s, selection "
                                  f"{t['selection']:.1f} s; peak memory {result['peak'] / 2**30:.2f} GiB = "
                                  f"{result['peak'] / os.path.getsize(data):.2f}x the file, "
                                  f"{(result['peak'] - floor) / os.path.getsize(data):.2f}x above the interpreter's "
                                  f"{floor / 2**30:.2f} GiB (target <= 2.5x)")})
    if "ranks" in stages:
        one = select_child([*common, "--strategy", "el2n", "--out", os.path.join(root, "el2n-1thread")], threads="1")
        two = select_child([*common, "--strategy", "el2n", "--out", os.path.join(root, "el2n-2ranks")],
                           launcher=TORCHRUN)
        same = _read(one["dir"], "subset.csv") == _read(two["dir"], "subset.csv")
        for method, result in (("el2n, 1 process, 1 thread", one), ("el2n, torchrun 2 gloo ranks", two)):
            t = result["manifest"]["times"]
            rows.append({"case": f"(c) {case[4:]}", "method": method, "seconds": result["wall"], "bytes": None,
                         "baselines": ["el2n, 1 process, 1 thread"] if "torchrun" in method else [], "floor": None,
                         "peak_rss_bytes": result["peak"], "file_bytes": size,
                         "note": (f"scoring {t['scoring']:.1f} s; peak memory (largest process) "
                                  f"{result['peak'] / 2**30:.2f} GiB"
                                  + (f"; subset.csv {'identical to' if same else 'DIFFERS from'} 1 process"
                                     if "torchrun" in method else ""))})
        if not same:
            raise RuntimeError("bench select (c): 2 ranks selected another subset than 1 process")
    return rows


def _read(folder: str, name: str) -> bytes:
    with open(os.path.join(folder, name), "rb") as f:
        return f.read()
