#!/usr/bin/env bash
# Install uv (pinned) if it is missing, then the locked dependencies of the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
fi
uv sync --frozen --quiet
