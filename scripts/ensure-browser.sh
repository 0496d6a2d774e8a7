#!/usr/bin/env bash
# Install Debian's Chromium (browser tests) and Node.js (the JavaScript example's test) if missing
# (root, Debian/Ubuntu only). Playwright drives Chromium through executable_path=/usr/bin/chromium;
# it never downloads a browser. Then the ws package pinned in examples/package-lock.json, which the
# example needs on Node 18 (Debian 12's nodejs) and which its test runs on with every Node: fetched
# from the npm registry by scripts/fetch-ws.py (sha512-checked; Debian's npm is not needed).
set -euo pipefail
fetch_ws() { python3 "$(dirname "$0")/fetch-ws.py"; }
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -eq 0 ]; then fetch_ws; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${missing[*]} and no apt-get: install Chromium at /usr/bin/chromium and Node.js" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fetch_ws
