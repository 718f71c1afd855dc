"""scripts/gpu_smoke.py, the GPU smoke stage, run as its CPU dry run at toy sizes: every check
of the script passes here (the plain-torch references against the CPU kernels, a one-rank gloo
group, the command line with the same strategies), so the stage a GPU loan runs cannot rot."""

import os
import subprocess
import sys

from tests.subprocesses import REPO, env


def test_the_smoke_stage_runs_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_smoke.py"), "--device", "cpu",
                           "--small", "--out", str(tmp_path)], env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 failed" in done.stdout and "FAIL" not in done.stdout
    for line in ("topk_select per class", "omp per class", "channels_last", "gather_rows, route_rows",
                 "gradmatch killed mid-run and resumed", "select el2n, fp16 proxy", "adaselection"):
        assert line in done.stdout, line
