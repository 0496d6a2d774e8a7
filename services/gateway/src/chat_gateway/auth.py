"""JWT verification (SPEC §6): pinned algorithms, expiry enforced, audience/issuer when set.

Verified tokens are cached by their SHA-256 for no longer than their ``exp``, so a reconnect storm
does not pay for signature checks again.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from chat_common.errors import ErrorCode
from chat_common.settings import Settings
from chat_gateway.refusals import Refusal

_ASYMMETRIC_PREFIXES = ("RS", "ES", "PS", "Ed")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float
    """epoch seconds of the token's ``exp``."""


class TokenVerifier:
    def __init__(self, settings: Settings, *, cache_size: int = 20_000) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        asymmetric = any(alg.startswith(_ASYMMETRIC_PREFIXES) for alg in self._algorithms)
        key = settings.jwt_public_key if asymmetric else settings.jwt_secret
        if not key:
            needed = "JWT_PUBLIC_KEY" if asymmetric else "JWT_SECRET"
            raise ValueError(f"{needed} must be set to verify tokens with {','.join(self._algorithms)}")
        self._key = key.replace("\\n", "\n")
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str) -> Identity:
        """The identity a token proves, or ``ChatError(UNAUTHORIZED)``."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at + self._leeway > time.time():
                return cached
            del self._cache[digest]
        identity = self._decode(token)
        self._cache[digest] = identity
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    def _decode(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
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
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: invalid token", reason="invalid_token") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: invalid token subject", reason="invalid_token")
        return Identity(user_id=subject, expires_at=float(claims["exp"]))
