"""The identity provider's signing keys from its JWKS (``JWT_JWKS_URL``), with PyJWT's ``PyJWKClient``.

The key set is cached for ``JWT_JWKS_CACHE_TTL``; a token naming a ``kid`` that is not in it makes
one refresh (a key rotation), at most one per ``JWT_JWKS_REFRESH_INTERVAL`` (PyJWT's cooldown), so
tokens with made-up ``kid`` values cannot make the gateway hammer the provider. A token without a
``kid`` is refused. While the provider is unreachable the last key set keeps verifying. The fetch
is blocking (urllib): it runs in a thread, one at a time, and a key found in the cached set is
looked up on the event loop without one.
"""

from __future__ import annotations

import asyncio
import logging

import jwt

from chat_common.errors import ErrorCode
from chat_gateway.refusals import Refusal

logger = logging.getLogger(__name__)


class JwksKeys:
    def __init__(self, url: str, *, cache_ttl_s: float, refresh_interval_s: float, timeout_s: float) -> None:
        try:
            self._client = jwt.PyJWKClient(
                url,
                cache_jwk_set=True,
                lifespan=cache_ttl_s,
                timeout=timeout_s,
                cooldown_duration=refresh_interval_s,
            )
        except jwt.PyJWKClientError as exc:
            raise ValueError(f"JWT_JWKS_URL: {exc}") from exc
        self._fetching = asyncio.Lock()

    def _cached(self, kid: str, *, stale: bool = False) -> jwt.PyJWK | None:
        """The key from the cached set; with ``stale`` also from a set past its TTL."""
        cache = self._client.jwk_set_cache
        if cache is None:
            return None
        jwk_set = cache.get()
        if jwk_set is None and stale and cache.jwk_set_with_timestamp is not None:
            jwk_set = cache.jwk_set_with_timestamp.get_jwk_set()
        if jwk_set is None:
            return None
        return next((key for key in jwk_set.keys if key.key_id == kid and key.public_key_use in ("sig", None)), None)

    async def key(self, kid: object) -> jwt.PyJWK:
        """The signing key ``kid`` names, or ``Refusal(UNAUTHORIZED)``."""
        if not isinstance(kid, str) or not kid:
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token has no key id (kid)", reason="invalid_token")
        found = self._cached(kid)
        if found is not None:
            return found
        async with self._fetching:
            found = self._cached(kid)  # another token's fetch may have brought it
            if found is not None:
                return found
            try:
                return await asyncio.to_thread(self._client.get_signing_key, kid)
            except jwt.PyJWKClientConnectionError as exc:
                logger.warning("JWKS %s unreachable: %s", self._client.uri, exc)
                # keys past their TTL still verify what they signed: better than refusing everyone
                found = self._cached(kid, stale=True)
                if found is not None:
                    return found
                raise Refusal(
                    ErrorCode.UNAUTHORIZED, "Unauthorized: signing keys unavailable", reason="jwks_unavailable"
                ) from exc
            except jwt.PyJWTError as exc:
                raise Refusal(
                    ErrorCode.UNAUTHORIZED, "Unauthorized: unknown signing key", reason="invalid_token"
                ) from exc
