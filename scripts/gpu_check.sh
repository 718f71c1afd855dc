#!/usr/bin/env bash
# Verifies everything on a GPU machine in one command, without network access: builds datadiet
# with the CUDA kernels for the local GPU against the machine's own torch (it needs torch, triton,
# nvcc, cmake, ninja, scikit-build-core and pybind11 installed), runs the whole test suite (the
# CUDA tests and the compiled Triton kernels run; nothing skips for want of a GPU), then every
# benchmark with --device cuda.
#
#   scripts/gpu_check.sh [build] [test] [bench]   stages to run (default: all three, in order)
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
    bench)
      for op in $($PY -m bench --list); do
        PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} $PY -m bench "$op" --device cuda --json "$OUT/$op-cuda.json" 2>&1 \
          | tee "$OUT/bench-$op.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done
      ;;
    *)
      echo "gpu_check: unknown stage '$stage' (build, test, bench)" >&2
      exit 2
      ;;
  esac
done
exit $status
