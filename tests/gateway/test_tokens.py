"""TokenVerifier: pinned algorithms, expiry and not-before with leeway, audience and issuer, public
keys, and a cache that never outlives a token."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chat_common.errors import ChatError, ErrorCode
from chat_common.settings import Settings
from chat_gateway.auth import TokenVerifier

SECRET = "a-secret-long-enough-for-hs256-and-even-hs512-tokens-0123456789abcdef"


def verifier(**settings: object) -> TokenVerifier:
    return TokenVerifier(Settings(**{"jwt_secret": SECRET, "jwt_leeway": 0, **settings}))  # type: ignore[arg-type]


def token(key: object = SECRET, algorithm: str = "HS256", **claims: object) -> str:
    payload = {"sub": "u1", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)  # type: ignore[arg-type]


def refused(check: TokenVerifier, raw: str) -> str:
    with pytest.raises(ChatError) as caught:
        check.verify(raw)
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.close_code == 1008
    return caught.value.message


def test_a_valid_token_proves_its_subject() -> None:
    identity = verifier().verify(token(exp=2_000_000_000))
    assert identity.user_id == "u1"
    assert identity.expires_at == 2_000_000_000


def test_algorithms_outside_the_allow_list_are_refused() -> None:
    assert refused(verifier(), token(algorithm="HS512")) == "Unauthorized: invalid token"
    unsigned = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert refused(verifier(), unsigned) == "Unauthorized: invalid token"
    with pytest.raises(ValueError, match="never accepted"):
        Settings(jwt_algorithms="HS256,none")  # type: ignore[arg-type]


def test_exp_is_required_and_enforced_with_leeway() -> None:
    assert refused(verifier(), jwt.encode({"sub": "u1"}, SECRET)) == "Unauthorized: invalid token"
    stale = token(exp=int(time.time()) - 3)
    assert refused(verifier(), stale) == "Unauthorized: token expired"
    assert verifier(jwt_leeway=10).verify(stale).user_id == "u1"


def test_not_before_is_enforced_with_leeway() -> None:
    early = token(nbf=int(time.time()) + 3)
    assert refused(verifier(), early) == "Unauthorized: token not yet valid"
    assert verifier(jwt_leeway=10).verify(early).user_id == "u1"


def test_audience_and_issuer_when_configured() -> None:
    strict = verifier(jwt_audience="chat", jwt_issuer="https://auth.example")
    assert strict.verify(token(aud="chat", iss="https://auth.example")).user_id == "u1"
    for claims in ({"aud": "other", "iss": "https://auth.example"}, {"aud": "chat", "iss": "evil"}, {}):
        refused(strict, token(**claims))


def test_subject_must_be_a_short_string() -> None:
    refused(verifier(), token(sub=""))
    refused(verifier(), token(sub="x" * 300))
    refused(verifier(), jwt.encode({"exp": int(time.time()) + 60}, SECRET))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_keys(algorithm: str) -> None:
    private = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    check = TokenVerifier(
        Settings(jwt_public_key=public.decode().replace("\n", "\\n"), jwt_algorithms=algorithm)  # type: ignore[arg-type]
    )
    assert check.verify(token(private, algorithm)).user_id == "u1"
    refused(check, token())  # an HMAC token signed with some secret is not accepted
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithms=algorithm))  # type: ignore[arg-type]


def test_cached_tokens_do_not_outlive_their_expiry() -> None:
    check = verifier()
    short = token(exp=int(time.time()) + 1)
    assert check.verify(short).user_id == "u1"
    assert check.verify(short).user_id == "u1"  # from the cache
    time.sleep(max(0.0, jwt.decode(short, options={"verify_signature": False})["exp"] - time.time() + 0.05))
    assert refused(check, short) == "Unauthorized: token expired"
