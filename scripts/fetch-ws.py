#!/usr/bin/env python3
"""Install the ``ws`` package pinned in examples/package-lock.json beside the JavaScript example, without npm.

    python3 scripts/fetch-ws.py            # examples/node_modules/ws, if not already that version

The example (examples/spec-examples.mjs) uses Node's global WebSocket and falls back to ``ws`` where there
is none: Node 18 (Debian 12's ``nodejs``) and Node 20 before 20.10. Debian ships npm as a separate, heavy
package, so this script does what ``npm ci --prefix examples`` would do for this one dependency-free
package: it fetches the tarball the lock file names from the npm registry (``npm_config_registry`` in
place of https://registry.npmjs.org when set), checks it against the lock's sha512 integrity and unpacks
it into examples/node_modules/ws. Exit 1 with a message on any mismatch; nothing is written outside
examples/node_modules.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_REGISTRY = "https://registry.npmjs.org"


def fail(message: str) -> int:
    print(f"fetch-ws: {message}", file=sys.stderr)
    return 1


def installed_version(target: Path) -> str | None:
    try:
        return str(json.loads((target / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def unpack(tarball: bytes, target: Path) -> None:
    """Unpack the npm tarball's ``package/`` folder as ``target``, replacing it in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ws-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if not parts or parts[0] != "package" or ".." in parts or not (member.isfile() or member.isdir()):
                    raise ValueError(f"unexpected entry {member.name!r} in the tarball")
                # npm tarballs carry arbitrary modes; what node reads needs only to be readable
                member.mode = 0o755 if member.isdir() else 0o644
            archive.extractall(staging)  # noqa: S202  (every member was checked above)
        if target.exists():
            shutil.rmtree(target)
        (staging / "package").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> int:
    lock = json.loads((EXAMPLES / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/ws"]
    version, resolved, integrity = entry["version"], entry["resolved"], entry["integrity"]
    target = EXAMPLES / "node_modules" / "ws"
    if installed_version(target) == version:
        return 0
    # npm reads its settings from the environment under either spelling
    registry = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")  # noqa: SIM112
    registry = (registry or DEFAULT_REGISTRY).rstrip("/")
    url = resolved.replace(DEFAULT_REGISTRY, registry, 1)
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        return fail(f"the lock's integrity for ws is {algorithm}, expected sha512")
    try:
        with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310  (https registry, or a mirror set by the operator)
            tarball = response.read()
    except (OSError, ValueError) as error:
        return fail(f"cannot fetch ws {version} from {url}: {error}")
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != expected:
        return fail(f"{url}: sha512-{digest}, pinned {integrity}: refusing it")
    try:
        unpack(tarball, target)
    except (OSError, ValueError, tarfile.TarError) as error:
        return fail(f"cannot unpack ws {version}: {error}")
    print(f"fetch-ws: ws {version} installed in {target.relative_to(EXAMPLES.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
