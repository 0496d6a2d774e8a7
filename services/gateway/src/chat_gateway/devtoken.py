"""Development tokens: ``chat-dev-token USER`` prints one; ``POST /api/dev/token`` issues one when
``DEV_TOKENS_ENABLED`` is set. Both sign with ``JWT_SECRET`` (HS256).

For local trials only: production tokens come from your identity provider.
"""

from __future__ import annotations

import argparse
import time

import jwt

from chat_common.settings import AuthSettings, load_settings


def issue_dev_token(settings: AuthSettings, user_id: str, *, ttl_s: float) -> tuple[str, float]:
    """A token for ``user_id`` valid ``ttl_s`` seconds, and its expiry (epoch seconds)."""
    if not settings.jwt_secret:
        raise ValueError("JWT_SECRET is not set")
    expires_at = int(time.time() + ttl_s)
    claims: dict[str, object] = {"sub": user_id, "exp": expires_at, "iat": int(time.time()), "dev": True}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"), float(expires_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("user", nargs="?", default="demo-user")
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    settings = load_settings(AuthSettings)
    try:
        token, _ = issue_dev_token(settings, args.user, ttl_s=args.hours * 3600)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    print(token)


if __name__ == "__main__":
    main()
