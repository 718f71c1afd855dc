#!/usr/bin/env bash
# The CPU kernel tests once per CPU capability this machine runs besides the one the main
# suite already used (the best): each _cpu_<capability> module is loaded on its own through
# DATADIET_CPU_CAPABILITY, so a kernel that only breaks under one instruction set fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a caps <<< "$(.venv/bin/python -c "import datadiet; i = datadiet.build_info(); \
print(' '.join(c for c in i['cpu_capabilities_supported'][:-1] if c in i['cpu_capabilities_built']))")"
for cap in "${caps[@]}"; do
  echo "== CPU kernel tests with DATADIET_CPU_CAPABILITY=$cap"
  DATADIET_CPU_CAPABILITY="$cap" .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_build.py tests/test_ce_scores.py tests/test_ce_scores_errors.py tests/test_topk_select.py \
    tests/test_weighted_sample.py tests/test_selective_backprop.py tests/test_select_errors.py \
    tests/test_stratified_select.py tests/test_omp.py tests/test_omp_rank.py tests/test_merge.py \
    tests/test_per_sample_grad_sqnorm.py
done
