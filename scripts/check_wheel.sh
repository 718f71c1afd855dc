#!/usr/bin/env bash
# The wheel a user would publish, built as a user types it, under another torch:
#   1. an sdist (python -m build --sdist);
#   2. a wheel from that sdist with pip's default build isolation: pip installs the build
#      requirements (torch included) into a throw-away environment, nothing from .venv;
#   3. a fresh venv with a CPU-only torch of another version (2.13.0, no Triton, no
#      torchvision) gets that wheel and passes the test suite: the stable-ABI promise, with
#      the CUDA module present but skipped, and the CPU kernels of this CPU's best capability.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build/wheel-venv
rm -rf build/dist
.venv/bin/python -m build --sdist --no-isolation --outdir build/dist . > build/dist.log 2>&1 || { tail -n 40 build/dist.log; exit 1; }
sdist=$(ls build/dist/datadiet-*.tar.gz)
echo "check_wheel: built $sdist; building a wheel from it with build isolation (log in build/dist.log)"
if ! .venv/bin/python -m pip wheel -v --no-deps -w build/dist "$sdist" >> build/dist.log 2>&1; then
  tail -n 60 build/dist.log
  exit 1
fi
wheel=$(ls build/dist/datadiet-*.whl)
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q torch==2.13.0 numpy==2.4.6 tqdm==4.70.1 scikit-learn==1.9.1 \
  matplotlib==3.11.2 pytest==9.2.0 hypothesis==6.170.15 expecttest==0.3.0
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -c "import torch, datadiet; assert not torch.version.cuda; i = datadiet.build_info(); \
print('check_wheel:', '$wheel', 'under CPU-only torch', torch.__version__, '| CPU kernels:', i['cpu_capability'], \
'| CUDA kernels not loaded:', i['cuda_kernels_missing_because'])"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests
