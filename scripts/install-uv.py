#!/usr/bin/env python3
"""Install one pinned uv release into a private folder with nothing but the Python standard library.

    python3 scripts/install-uv.py 0.13.9 .tools/uv-0.13.9

Debian's python3 is "externally managed" (PEP 668) and often has neither pip nor venv/ensurepip, so
``pip install uv`` is not an option there. uv is published on the package index as a wheel that holds
the static ``uv`` binary; this script fetches that wheel from the index (PEP 691 JSON simple API; the
index is ``UV_INDEX_URL`` or ``PIP_INDEX_URL`` when set, else the one ``uv.lock`` resolves from), checks
it against the SHA-256 pinned below, and unpacks only ``uv`` and ``uvx``. Exit 1 with a message on any
mismatch; nothing is written outside the target folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import stat
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

DEFAULT_INDEX = "https://pypi.org/simple"  # the registry every package in uv.lock comes from

# version -> machine -> (wheel file name, sha256): pinned, so a changed file on the index is refused.
WHEELS = {
    "0.13.9": {
        "x86_64": (
            "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
        ),
        "aarch64": (
            "uv-0.13.9-py3-none-manylinux_2_28_aarch64.whl",
            "ecb6028d79dc96fbeafffe5c8af62a7099487ebc05a701e76714eebcffd06375",
        ),
    },
}


def fail(message: str) -> int:
    print(f"install-uv: {message}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        return fail("usage: install-uv.py VERSION TARGET_DIR")
    version, target = argv[0], Path(argv[1])
    machine = platform.machine()
    if version not in WHEELS or machine not in WHEELS[version]:
        return fail(f"no pinned uv {version} wheel for {machine}: install uv yourself (it must be on PATH)")
    filename, sha256 = WHEELS[version][machine]
    index = (os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")
    # the index is https (or a file:// mirror an operator set): any scheme urllib opens is meant
    request = urllib.request.Request(f"{index}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            files = json.load(response)["files"]
        url = next(f["url"] for f in files if f["filename"] == filename)
        wheel_url = urllib.parse.urljoin(f"{index}/uv/", url)
        with urllib.request.urlopen(wheel_url, timeout=300) as response:  # noqa: S310
            wheel = response.read()
    except StopIteration:
        return fail(f"{filename} is not on {index}")
    except (OSError, ValueError, KeyError) as error:
        return fail(f"cannot fetch uv {version} from {index}: {error}")
    digest = hashlib.sha256(wheel).hexdigest()
    if digest != sha256:
        return fail(f"{filename}: sha256 {digest}, pinned {sha256}: refusing it")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        for name in ("uv", "uvx"):
            member = f"uv-{version}.data/scripts/{name}"
            path = target / name
            partial = path.with_suffix(".partial")
            partial.write_bytes(archive.read(member))
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(path)
    print(f"installed uv {version} in {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
