#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests if it is missing (root, Debian/Ubuntu only).
# Playwright drives it through executable_path=/usr/bin/chromium; it never downloads a browser.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no /usr/bin/chromium and no apt-get: install Chromium and link it at /usr/bin/chromium" >&2
  exit 1
fi
echo "installing chromium (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
