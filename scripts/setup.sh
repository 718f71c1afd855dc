#!/usr/bin/env bash
# Creates .venv with the pinned toolchain (requirements/dev.txt) and builds datadiet
# into it against that torch. Idempotent: a second run only rebuilds what changed.
#   DATADIET_CUDA=AUTO|ON|OFF     build the CUDA kernels (default AUTO: when nvcc and a CUDA torch exist)
#   DATADIET_CUDA_ARCHS="80;90"   CUDA architectures
#   PYTHON=python3.11             interpreter for the venv
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/dev.txt
mkdir -p build
echo "datadiet: building (DATADIET_CUDA=${DATADIET_CUDA:-AUTO}); log in build/setup.log"
if ! .venv/bin/python -m pip install -v --no-build-isolation -C build-dir="build/{wheel_tag}" . > build/setup.log 2>&1; then
  tail -n 60 build/setup.log
  echo "datadiet: build failed, full log in build/setup.log" >&2
  exit 1
fi
.venv/bin/python -c "import datadiet, json; print(json.dumps(datadiet.build_info(), indent=1))"
