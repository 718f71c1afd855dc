"""Triton kernels compiled ahead of time for sm_80 and sm_90 on this GPU-less machine (what the
interpreter cannot check: compile errors, register spills), the compile tables behind
``datadiet.kernels._launch.launch``, and the launch guard (device, mixed devices)."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import datadiet  # noqa: E402
from datadiet import _extension, ptxas  # noqa: E402
from datadiet.kernels import _launch, aot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "build" / "kernel_resources"


def test_every_variant_compiles_for_sm80_and_sm90_within_the_spill_budget(tmp_path):
    """Every configuration the launchers can choose (their own tables) compiles on both targets;
    the register / shared memory / spill table lands in build/kernel_resources/triton.txt."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "aot.json"
    run = subprocess.run([sys.executable, "-m", "datadiet.kernels.aot", "--json", str(out)], env=env,
                         capture_output=True, text=True, timeout=2400)
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / "triton.txt").write_text(run.stdout)
    assert run.returncode == 0, run.stderr[-6000:] + run.stdout[-2000:]
    rows = json.loads(out.read_text())["rows"]
    labels = [v.label() for v in aot.compiled_variants()]
    assert len(set(labels)) == len(labels)
    assert sorted((r["kernel"], r["arch"]) for r in rows) == sorted((v, a) for a in aot.ARCHS for v in labels)
    assert all("error" not in r and r["registers"] > 0 for r in rows)
    assert not ptxas.problems(rows)


def test_the_aot_build_adds_an_all_int64_twin_per_kernel():
    variants = aot.compiled_variants()
    tabled = list(_launch.all_variants())
    twins = variants[len(tabled):]
    with_ints = {v.name for v in tabled if "i32" in v.types}
    assert {v.name for v in twins} <= with_ints and len(twins) >= len(with_ints) - 2
    assert all("i32" not in v.types and "i64:" in v.label() for v in twins)


@pytest.mark.skipif(not os.path.exists(Path(_extension.__file__).with_name("_C_cuda.so")),
                    reason="datadiet was built without CUDA")
def test_cuda_kernels_stay_within_the_spill_budget(tmp_path):
    """ptxas -v over the PTX the build embedded in _C_cuda.so, with the build's options; the
    table lands in build/kernel_resources/cuda.txt."""
    out = tmp_path / "cuda.json"
    run = subprocess.run([sys.executable, "-m", "datadiet.ptxas", "--json", str(out)], capture_output=True, text=True,
                         timeout=1200)
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / "cuda.txt").write_text(run.stdout)
    assert run.returncode == 0, run.stderr[-6000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["arch"] for r in rows} == {int(a) for a in datadiet.build_info()["cuda_archs"].split(",")}
    names = {r["kernel"] for r in rows}
    for kernel in ("ce_scores_kernel", "solve_kernel", "residual_kernel", "coin_kernel", "average_kernel",
                   "histogram_kernel"):
        assert any(kernel in n for n in names), (kernel, sorted(names))
    assert all(r["registers"] > 0 for r in rows if r["entry"]) and not ptxas.problems(rows)


def test_every_kernel_is_in_a_compile_table_and_launched_through_the_guard():
    modules = _launch.kernel_modules()
    assert {m.__name__.rsplit(".", 1)[-1] for m in modules} >= {
        "ce_scores", "merge", "omp", "radix_select", "selective_backprop", "topk_select", "weighted_sample"}
    tabled = {v.name for v in _launch.all_variants()}
    for module in modules:
        source = Path(module.__file__).read_text()
        kernels = [name for name in vars(module) if name.endswith("_kernel") and hasattr(getattr(module, name), "fn")]
        assert kernels, module.__name__
        for name in kernels:
            assert f"{module.__name__.rsplit('.', 1)[-1]}.{name}" in tabled, f"{module.__name__}.{name} has no variant"
            assert not re.search(rf"\b{name}\[", source), f"{module.__name__}.{name} is launched around launch()"


def test_variants_give_exactly_the_kernels_constexpr_parameters():
    for v in _launch.all_variants():
        declared = [n for n, p in inspect.signature(v.kernel.fn).parameters.items() if "constexpr" in str(p.annotation)]
        assert [k for k, _ in v.constexprs] == declared, v.label()


def test_the_aot_command_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "datadiet.kernels.aot"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "unset TRITON_INTERPRET" in run.stderr


def test_a_launch_outside_the_compile_table_is_refused():
    if not _launch._CHECK:
        pytest.skip("DATADIET_CHECK_LAUNCHES is off")
    from datadiet.kernels import topk_select

    scores, keys = torch.rand(8), torch.empty(8, dtype=torch.int64)
    with pytest.raises(AssertionError, match=r"topk_select._keys_kernel launched .*BLOCK.: 64.*add it there"):
        _launch.launch(topk_select._keys_kernel, (1,), scores, keys, 8, LARGEST=True, BLOCK=64)
    with pytest.raises(AssertionError, match=r"not in its module's variants"):
        _launch.launch(topk_select._keys_kernel, (1,), scores.double(), keys, 8, LARGEST=True, BLOCK=1024)


def test_a_launch_with_tensors_on_two_devices_is_refused():
    from datadiet.kernels import topk_select

    with pytest.raises(ValueError, match=r"_keys_kernel: tensors on several devices \(scores_ptr on cpu, keys_ptr "
                                         r"on meta\)"):
        _launch.launch(topk_select._keys_kernel, (1,), torch.rand(8), torch.empty(8, dtype=torch.int64,
                                                                                  device="meta"), 8,
                       LARGEST=True, BLOCK=1024)


def test_variant_refuses_a_type_list_of_the_wrong_length():
    from datadiet.kernels import topk_select

    with pytest.raises(ValueError, match=r"_keys_kernel: 2 types for the runtime parameters"):
        _launch.variant(topk_select._keys_kernel, "*fp32 *i64", LARGEST=True, BLOCK=1024)


def test_upload_is_an_int64_table_on_the_device():
    t = _launch.upload([[1, 2], [3, 1 << 40]], torch.device("cpu"))
    assert t.dtype == torch.int64 and t.tolist() == [[1, 2], [3, 1 << 40]]
    assert _launch.upload([0.5], torch.device("cpu"), torch.float32).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_ops_run_on_the_tensors_device_not_the_current_one():
    from datadiet import ops, topk_select, weighted_sample

    g = torch.Generator().manual_seed(0)
    scores, logits = torch.rand(5000, generator=g), torch.randn(64, 10, generator=g)
    targets = torch.randint(0, 10, (64,), generator=g)
    a, b = torch.randn(300, 16, generator=g), torch.randn(16, generator=g)
    with torch.cuda.device(0):
        on1 = lambda t: t.to("cuda:1")  # noqa: E731
        assert torch.equal(topk_select(on1(scores), 100, backend="triton").cpu(), topk_select(scores, 100))
        assert torch.equal(weighted_sample(on1(scores), 50, seed=3, backend="triton").cpu(),
                           weighted_sample(scores, 50, seed=3))
        got = ops.ce_scores(on1(logits), on1(targets), backend="triton").loss.cpu()
        torch.testing.assert_close(got, ops.ce_scores(logits, targets).loss)
        r = ops.omp(on1(a), on1(b), 5, backend="triton")
        assert torch.equal(r.indices.cpu(), ops.omp(a, b, 5).indices)
        dst = [on1(torch.zeros(70_000))]
        ops.average_(dst, [[on1(torch.ones(70_000))], [on1(torch.full((70_000,), 3.0))]], backend="triton")
        assert torch.equal(dst[0].cpu(), torch.full((70_000,), 2.0))
        torch.cuda.synchronize(1)
