#!/usr/bin/env bash
# Verifies everything on a GPU machine in one command, without network access: builds datadiet
# with the CUDA kernels for the local GPU against the machine's own torch (it needs torch, triton,
# nvcc, cmake, ninja, scikit-build-core and pybind11 installed), runs the whole test suite (the
# CUDA tests and the compiled Triton kernels run; nothing skips for want of a GPU), then every
# benchmark with --device cuda. `smoke` (after `build`) is the short stage for a brief loan: the
# highest-risk GPU paths in about eight minutes on one H100 (scripts/gpu_smoke.py says which).
#
#   scripts/gpu_check.sh [build] [smoke] [test] [bench]   stages to run (default: build test bench)
#   PYTHON=python3                                interpreter that holds torch
#   OUT=gpu_check_out                             logs, benchmark tables and JSON
#   DATADIET_CUDA_ARCHS=90                        default: the local GPU's compute capability
#
# Stages can run in separate calls: the build lands in build/gpu-site and is reused. Where a test
# dependency is missing (opcheck imports expecttest), install its wheel into a folder on
# PYTHONPATH before running the test stage.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_check_out}
SITE=$PWD/build/gpu-site
mkdir -p "$OUT"
stages=${*:-build test bench}
status=0

for stage in $stages; do
  case $stage in
    build)
      archs=${DATADIET_CUDA_ARCHS:-$($PY -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")}
      echo "gpu_check: building for sm_$archs into $SITE (log $OUT/build.log)"
      rm -rf "$SITE"
      if ! DATADIET_CUDA=ON DATADIET_CUDA_ARCHS=$archs $PY -m pip install --no-build-isolation --no-deps \
          --target "$SITE" -Cbuild-dir=build/gpu . > "$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log"
        exit 1
      fi
      ;;
    test)
      PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} $PY -c "import datadiet, json; print(json.dumps(datadiet.build_info()))" \
        | tee "$OUT/build_info.json"
      PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} $PY -m pytest -q -p no:cacheprovider -rs tests 2>&1 \
        | tee "$OUT/tests.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      ;;
    smoke)
      PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} $PY scripts/gpu_smoke.py --out "$OUT/smoke" 2>&1 \
        | tee "$OUT/smoke.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      ;;
    bench)
      # every benchmark but scale (a CPU simulation of torchrun's ranks)
      for op in $($PY -m bench --list | awk '$1 != "scale" {print $1}'); do
        PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} $PY -m bench "$op" --device cuda --json "$OUT/$op-cuda.json" 2>&1 \
          | tee "$OUT/bench-$op.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done
      ;;
    *)
      echo "gpu_check: unknown stage '$stage' (build, smoke, test, bench)" >&2
      exit 2
      ;;
  esac
done
exit $status
