#!/usr/bin/env bash
# Proves the stable-ABI claim: the datadiet binary built by scripts/setup.sh (against
# torch 2.14.1, CUDA build) imports and passes the test suite under a CPU-only torch of
# another version (2.13.0), where the CUDA module is skipped and Triton is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build/cpu-only-venv
rm -rf build/cpu-only-wheel
.venv/bin/python -m pip wheel -q --no-build-isolation --no-deps -w build/cpu-only-wheel .
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q torch==2.13.0 numpy==2.4.6 tqdm==4.70.1 scikit-learn==1.9.1 \
  matplotlib==3.11.2 pytest==9.2.0 hypothesis==6.170.15 expecttest==0.3.0
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps build/cpu-only-wheel/datadiet-*.whl
"$venv/bin/python" -c "import torch, datadiet; assert not torch.version.cuda; i = datadiet.build_info(); \
print('CPU-only torch', torch.__version__, '| CUDA kernels not loaded:', i['cuda_kernels_missing_because'])"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests
