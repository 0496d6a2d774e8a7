"""TokenVerifier: pinned algorithms, expiry and not-before with leeway, audience and issuer, public
keys, and a cache that never outlives a token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
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


async def refused(check: TokenVerifier, raw: str) -> str:
    with pytest.raises(ChatError) as caught:
        await check.verify(raw)
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.close_code == 1008
    return caught.value.message


async def test_a_valid_token_proves_its_subject() -> None:
    identity = await verifier().verify(token(exp=2_000_000_000))
    assert identity.user_id == "u1"
    assert identity.expires_at == 2_000_000_000


async def test_algorithms_outside_the_allow_list_are_refused() -> None:
    assert await refused(verifier(), token(algorithm="HS512")) == "Unauthorized: invalid token"
    unsigned = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert await refused(verifier(), unsigned) == "Unauthorized: invalid token"
    with pytest.raises(ValueError, match="never accepted"):
        Settings(jwt_algorithms="HS256,none")  # type: ignore[arg-type]


async def test_exp_is_required_and_enforced_with_leeway() -> None:
    assert await refused(verifier(), jwt.encode({"sub": "u1"}, SECRET)) == "Unauthorized: invalid token"
    stale = token(exp=int(time.time()) - 3)
    assert await refused(verifier(), stale) == "Unauthorized: token expired"
    assert (await verifier(jwt_leeway=10).verify(stale)).user_id == "u1"


async def test_not_before_is_enforced_with_leeway() -> None:
    early = token(nbf=int(time.time()) + 3)
    assert await refused(verifier(), early) == "Unauthorized: token not yet valid"
    assert (await verifier(jwt_leeway=10).verify(early)).user_id == "u1"


async def test_audience_and_issuer_when_configured() -> None:
    strict = verifier(jwt_audience="chat", jwt_issuer="https://auth.example")
    assert (await strict.verify(token(aud="chat", iss="https://auth.example"))).user_id == "u1"
    for claims in ({"aud": "other", "iss": "https://auth.example"}, {"aud": "chat", "iss": "evil"}, {}):
        await refused(strict, token(**claims))


async def test_subject_must_be_a_short_string() -> None:
    await refused(verifier(), token(sub=""))
    await refused(verifier(), token(sub="x" * 300))
    await refused(verifier(), jwt.encode({"exp": int(time.time()) + 60}, SECRET))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_public_keys(algorithm: str) -> None:
    private = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    check = TokenVerifier(
        Settings(jwt_public_key=public.decode().replace("\n", "\\n"), jwt_algorithms=algorithm)  # type: ignore[arg-type]
    )
    assert (await check.verify(token(private, algorithm))).user_id == "u1"
    await refused(check, token())  # an HMAC token signed with some secret is not accepted
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithms=algorithm))  # type: ignore[arg-type]


async def test_cached_tokens_do_not_outlive_their_expiry() -> None:
    check = verifier()
    short = token(exp=int(time.time()) + 1)
    assert (await check.verify(short)).user_id == "u1"
    assert (await check.verify(short)).user_id == "u1"  # from the cache
    await asyncio.sleep(max(0.0, jwt.decode(short, options={"verify_signature": False})["exp"] - time.time() + 0.05))
    assert await refused(check, short) == "Unauthorized: token expired"


def _hmac_token(claims: dict[str, object], key: bytes) -> str:
    """An HS256 token signed by hand (PyJWT refuses to use a PEM key as an HMAC secret)."""

    def part(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(json.dumps(claims).encode())
    return (signing_input + b"." + part(hmac.new(key, signing_input, hashlib.sha256).digest())).decode()


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("names", ["hs256", "HS257", "HS256,rs256", "RSA256"])
async def test_algorithm_names_are_pyjwt_s_exactly(names: str) -> None:
    with pytest.raises(ValueError, match="JWT_ALGORITHMS") as raised:
        verifier(jwt_algorithms=names)
    assert "case-sensitive" in str(raised.value)


async def test_public_key_is_parsed_at_start_for_every_allowed_algorithm() -> None:
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        TokenVerifier(Settings(jwt_public_key="not a key", jwt_algorithms="RS256"))  # type: ignore[arg-type]
    rsa_pem = _pem(rsa.generate_private_key(65537, 2048))
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY is not a usable ES256"):
        TokenVerifier(Settings(jwt_public_key=rsa_pem, jwt_algorithms="RS256,ES256"))  # type: ignore[arg-type]


async def test_hmac_and_asymmetric_together_each_with_its_own_key() -> None:
    private = rsa.generate_private_key(65537, 2048)
    public = _pem(private)
    check = verifier(jwt_public_key=public, jwt_algorithms="HS256,RS256")
    assert (await check.verify(token())).user_id == "u1"  # HS256 with JWT_SECRET
    assert (await check.verify(token(private, "RS256", sub="u2"))).user_id == "u2"  # RS256 with JWT_PUBLIC_KEY
    # the public key is public: an HS256 token "signed" with it (algorithm confusion) must never pass
    await refused(check, _hmac_token({"sub": "evil", "exp": int(time.time()) + 60}, public.encode()))
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        verifier(jwt_algorithms="HS256,RS256")  # no key for the RS family


@pytest.mark.parametrize("subject", ["a\x00b", "alice\nadmin", "a\rb", "a\u2028b", "a\ud800b", "a\x1b[31m"])
async def test_subject_with_control_characters_is_refused(subject: str) -> None:
    assert await refused(verifier(), token(sub=subject)) == "Unauthorized: invalid token subject"


async def test_subject_with_ordinary_unicode_is_accepted() -> None:
    assert (await verifier().verify(token(sub="юрист@пример.рф"))).user_id == "юрист@пример.рф"


@pytest.mark.parametrize(
    "secret", ["dev-secret-change-me-in-production-0123456789", "CHANGE-ME-at-least-32-random-bytes", "x" * 31]
)
async def test_published_or_short_secret_is_refused_outside_development(secret: str) -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        TokenVerifier(Settings(jwt_secret=secret))  # type: ignore[arg-type]
    check = TokenVerifier(Settings(jwt_secret=secret, environment="development"))  # type: ignore[arg-type]
    if len(secret) >= 32:  # (PyJWT warns about a shorter HMAC key on every use)
        assert (await check.verify(token(secret))).user_id == "u1"
