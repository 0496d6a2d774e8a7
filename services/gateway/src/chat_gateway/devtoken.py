"""``chat-dev-token USER``: print a development token signed with ``JWT_SECRET`` (HS256, 24 h).

For local trials only: production tokens come from your identity provider.
"""

from __future__ import annotations

import argparse
import time

import jwt

from chat_common.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("user", nargs="?", default="demo-user")
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    settings = load_settings()
    if not settings.jwt_secret:
        raise SystemExit("JWT_SECRET is not set")
    claims: dict[str, object] = {"sub": args.user, "exp": int(time.time() + args.hours * 3600)}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    print(jwt.encode(claims, settings.jwt_secret, algorithm="HS256"))


if __name__ == "__main__":
    main()
