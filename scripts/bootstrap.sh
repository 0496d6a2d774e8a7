#!/usr/bin/env bash
# Install uv (pinned) if it is missing, then the locked dependencies of the whole workspace into .venv.
#
# Needs only python3 (3.11+) and the package index: Debian's python3 is externally managed (PEP 668)
# and often has no pip or venv, so uv is not pip-installed; scripts/install-uv.py fetches the pinned
# uv wheel from the index, checks its SHA-256 and unpacks the binary into .tools/ (private to this
# checkout). A uv of the pinned version already on PATH is used as it is. Either way .tools/bin/uv
# points at the uv in use, for the other scripts and for you.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if command -v uv >/dev/null 2>&1 && [ "$(uv --version 2>/dev/null | awk '{print $2}')" = "$UV_VERSION" ]; then
  # Resolved: when .tools/bin is on PATH the uv found is our own link, which must not point at itself.
  uv_bin=$(readlink -f "$(command -v uv)")
else
  uv_bin="$PWD/.tools/uv-${UV_VERSION}/uv"
  if [ ! -x "$uv_bin" ]; then
    command -v python3 >/dev/null 2>&1 || { echo "bootstrap: python3 is missing (apt-get install python3)" >&2; exit 1; }
    python3 scripts/install-uv.py "$UV_VERSION" "$(dirname "$uv_bin")"
  fi
fi
mkdir -p .tools/bin
ln -sfn "$uv_bin" .tools/bin/uv
# A Python 3.11+ must be installed: uv cannot download one here (only the package registries answer).
UV_PYTHON_DOWNLOADS=never "$uv_bin" sync --frozen --quiet
