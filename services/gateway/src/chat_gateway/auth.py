"""JWT verification (SPEC §6): pinned algorithms, expiry enforced, audience/issuer when set.

One key per algorithm family: ``HS*`` tokens are checked with ``JWT_SECRET`` only, asymmetric ones
(``RS*``/``PS*``/``ES*``/``EdDSA``) with ``JWT_PUBLIC_KEY`` or the identity provider's keys at
``JWT_JWKS_URL`` only, and each token with the one algorithm its header names, if allowed. So an
allow-list mixing both families works for both, and a public key can never be used as an HMAC
secret. Everything that cannot work is refused when the verifier is built (at start-up), naming the
variable: unknown algorithm names (PyJWT's, case-sensitive), a missing key, a key that does not
parse for an allowed algorithm, the development or a short secret outside development.

Verified tokens are cached by their SHA-256 for no longer than their ``exp``, so a reconnect storm
does not pay for signature checks again.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from chat_common.errors import ErrorCode
from chat_common.settings import AuthSettings
from chat_gateway.jwks import JwksKeys
from chat_gateway.refusals import Refusal

DEVELOPMENT_SECRETS = frozenset(
    {
        "dev-secret-change-me-in-production-0123456789",  # scripts/run.sh, docker-compose.yml, .env.example
        "CHANGE-ME-at-least-32-random-bytes",  # deploy/k8s/secret.example.yaml
    }
)
"""published secrets: anyone can sign tokens with them, so they are refused outside development."""
MIN_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key of at least the hash's size (256 bits)."""
_SUBJECT_FORBIDDEN = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""control characters (NUL, line breaks), lone surrogates, line and paragraph separators: a user id
that forges log lines or that PostgreSQL and JSON encoders refuse."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float
    """epoch seconds of the token's ``exp``."""


def allowed_algorithms(names: list[str]) -> list[str]:
    """``names`` if PyJWT implements every one of them (case-sensitive, never ``none``), else ``ValueError``."""
    known = sorted(set(get_default_algorithms()) - {"none"})
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"JWT_ALGORITHMS: unknown algorithm(s) {', '.join(map(repr, unknown))}"
            f" (names are case-sensitive; known: {', '.join(known)})"
        )
    return list(names)


def check_secret(settings: AuthSettings) -> str:
    """``JWT_SECRET``, refused outside development when it is a published or a short one."""
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if not secret:
        raise ValueError("JWT_SECRET must be set to verify HS* tokens (JWT_ALGORITHMS)")
    if settings.environment != "development":
        if secret in DEVELOPMENT_SECRETS:
            raise ValueError(
                "JWT_SECRET is the published development value: anyone could sign tokens;"
                " set a random secret of 32+ bytes (or ENVIRONMENT=development for a local trial)"
            )
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"JWT_SECRET is {len(secret.encode())} bytes: at least {MIN_SECRET_BYTES} are required"
                " outside development (ENVIRONMENT=development allows it)"
            )
    return secret


def _public_keys(settings: AuthSettings, algorithms: list[str]) -> dict[str, Any]:
    """``JWT_PUBLIC_KEY`` parsed once for each allowed asymmetric algorithm; ``ValueError`` if it does not fit one."""
    if not settings.jwt_public_key:
        raise ValueError(
            f"JWT_PUBLIC_KEY or JWT_JWKS_URL must be set to verify tokens with {','.join(algorithms)} (JWT_ALGORITHMS)"
        )
    pem = settings.jwt_public_key.replace("\\n", "\n")
    implementations = get_default_algorithms()
    keys: dict[str, Any] = {}
    for name in algorithms:
        try:
            keys[name] = implementations[name].prepare_key(pem)
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise ValueError(f"JWT_PUBLIC_KEY is not a usable {name} public key: {exc}") from exc
    return keys


class TokenVerifier:
    def __init__(self, settings: AuthSettings, *, cache_size: int = 20_000) -> None:
        self._algorithms = allowed_algorithms(list(settings.jwt_algorithms))
        hmac = [alg for alg in self._algorithms if alg.startswith("HS")]
        asymmetric = [alg for alg in self._algorithms if not alg.startswith("HS")]
        self._secret = check_secret(settings) if hmac else None
        self._public: dict[str, Any] = {}
        self._jwks: JwksKeys | None = None
        if asymmetric:
            if settings.jwt_jwks_url and settings.jwt_public_key:
                raise ValueError("JWT_PUBLIC_KEY and JWT_JWKS_URL: set one of them, not both")
            if settings.jwt_jwks_url:
                self._jwks = JwksKeys(
                    settings.jwt_jwks_url,
                    cache_ttl_s=settings.jwt_jwks_cache_ttl_s,
                    refresh_interval_s=settings.jwt_jwks_refresh_interval_s,
                    timeout_s=settings.jwt_jwks_timeout_s,
                )
            else:
                self._public = _public_keys(settings, asymmetric)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> Identity:
        """The identity a token proves, or ``ChatError(UNAUTHORIZED)``.

        Awaits only when the token names a JWKS key this process has not seen (one fetch at a time,
        at most one per ``JWT_JWKS_REFRESH_INTERVAL``); otherwise it completes without suspending.
        """
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at + self._leeway > time.time():
                return cached
            del self._cache[digest]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid() from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _invalid()
        key: Any
        if alg.startswith("HS"):
            key = self._secret
        elif self._jwks is not None:
            key = await self._jwks.key(header.get("kid"))
        else:
            key = self._public[alg]
        identity = self._decode(token, key, alg)
        self._cache[digest] = identity
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    def _decode(self, token: str, key: Any, alg: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token expired", reason="token_expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token not yet valid", reason="token_early") from exc
        except jwt.PyJWTError as exc:
            raise _invalid() from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256 or not _printable(subject):
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: invalid token subject", reason="invalid_token")
        return Identity(user_id=subject, expires_at=float(claims["exp"]))


def _printable(subject: str) -> bool:
    return subject.isprintable() or not any(unicodedata.category(ch) in _SUBJECT_FORBIDDEN for ch in subject)


def _invalid() -> Refusal:
    return Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: invalid token", reason="invalid_token")
