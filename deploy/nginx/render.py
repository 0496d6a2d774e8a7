#!/usr/bin/env python3
"""Render chat.conf.template into an nginx config for a given set of gateways.

    python3 deploy/nginx/render.py --listen 80 --gateway 10.0.0.5:3000 --gateway 10.0.0.6:3000 \
        > /etc/nginx/conf.d/chat.conf && nginx -t && nginx -s reload

Only the ``${NGINX_CHAT_*}`` placeholders are replaced (as the nginx image's envsubst templating does
in docker compose with ``NGINX_ENVSUBST_FILTER=^NGINX_CHAT_``); nginx's own ``$variables`` stay.
Standard library only, so it runs on any host with Python 3.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("chat.conf.template")
PLACEHOLDER = re.compile(r"\$\{(NGINX_CHAT_[A-Z0-9_]+)\}")


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def gateway_servers(gateways: Sequence[str], *, max_fails: int = 3, fail_timeout_s: int = 10) -> str:
    """The ``server`` lines of the upstream block, one per gateway process (``host:port``)."""
    return " ".join(f"server {gw} max_fails={max_fails} fail_timeout={fail_timeout_s}s;" for gw in gateways)


def render(values: Mapping[str, str], template: str | None = None) -> str:
    text = TEMPLATE.read_text() if template is None else template
    missing = placeholders(text) - set(values)
    if missing:
        raise KeyError(f"no value for {', '.join(sorted(missing))}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="80", help="nginx listen address (default 80)")
    parser.add_argument("--server-name", default="_", help="server_name (default _ = any)")
    parser.add_argument(
        "--gateway", action="append", required=True, metavar="HOST:PORT", help="a gateway process; repeat"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(
        render(
            {
                "NGINX_CHAT_LISTEN": args.listen,
                "NGINX_CHAT_SERVER_NAME": args.server_name,
                "NGINX_CHAT_GATEWAY_SERVERS": gateway_servers(args.gateway),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
