#!/usr/bin/env bash
# Install Debian's Chromium (browser tests) and Node.js (the JavaScript example's test) if missing
# (root, Debian/Ubuntu only). Playwright drives Chromium through executable_path=/usr/bin/chromium;
# it never downloads a browser.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${missing[*]} and no apt-get: install Chromium at /usr/bin/chromium and Node.js" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
