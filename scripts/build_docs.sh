#!/usr/bin/env bash
# The API reference (docs/api: Sphinx autodoc over the installed package, plus the raw
# torch.ops.datadiet schemas of this build) into build/docs; any warning fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m sphinx -E -W --keep-going -q -b html docs/api build/docs
echo "API reference: build/docs/index.html"
