"""Identity: the token table, and JWTs verified against a real JWKS served on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.errors import Unauthenticated
from gateway.identity import Authenticator, JwksCache, SigningKey, bearer_token
from gateway.models import Principal

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


def token(key: Any = KEY, **claims: Any) -> str:
    base = {"sub": "bot-7", "tenant": "acme", "roles": ["agent"], "exp": time.time() + 60,
            "iss": "https://idp.example", "aud": "switchboard"}
    base.update(claims)
    return jwt.encode(base, key, algorithm="RS256", headers={"kid": "k1"})


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("Authorization", "bearer  xyz ")]) == "xyz"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([]) is None


def test_token_table() -> None:
    auth = Authenticator({"t1": Principal("p1", "demo", ("agent",))})
    assert auth.authenticate("t1").id == "p1"
    for bad in ("", None, "t2", "t1 "):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)


def test_jwt_verified_against_jwks(jwks_url: str) -> None:
    auth = Authenticator({}, jwks_url=jwks_url, issuer="https://idp.example",
                         audience="switchboard")
    p = auth.authenticate(token())
    assert p == Principal("bot-7", "acme", ("agent",))
    cases = {
        "expired": token(exp=time.time() - 10),
        "wrong issuer": token(iss="https://evil.example"),
        "wrong audience": token(aud="other"),
        "wrong key": token(OTHER_KEY),
        "no tenant": token(tenant=""),
        "bad roles": token(roles="admin"),
    }
    for name, tok in cases.items():
        with pytest.raises(Unauthenticated):
            auth.authenticate(tok)
            pytest.fail(name)


# -- every key pinned to the algorithms that fit it; nothing but Unauthenticated escapes ------


def _jwks_file(tmp_path: Path, keys: list[dict[str, Any]]) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return f"file://{path}"


def _rsa_jwk(key: rsa.RSAPrivateKey = KEY, **extra: Any) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), **extra}


def _claims() -> dict[str, Any]:
    return {"sub": "bot-7", "tenant": "acme", "exp": time.time() + 60}


def test_each_key_verifies_only_the_algorithms_that_fit_it(tmp_path: Path) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    keys = [
        _rsa_jwk(kid="rsa-any"),  # no alg: every RS* fits an RSA key
        _rsa_jwk(kid="rsa-384", alg="RS384"),  # alg named: that one only
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p256.public_key())), "kid": "p256"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p384.public_key())), "kid": "p384"},
        {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed.public_key())), "kid": "ed"},
    ]
    auth = Authenticator({}, jwks=JwksCache(_jwks_file(tmp_path, keys)))
    good = [(KEY, "RS256", "rsa-any"), (KEY, "RS512", "rsa-any"), (KEY, "RS384", "rsa-384"),
            (p256, "ES256", "p256"), (p384, "ES384", "p384"), (ed, "EdDSA", "ed")]
    for key, alg, kid in good:
        assert auth.authenticate(jwt.encode(_claims(), key, algorithm=alg,
                                            headers={"kid": kid})).id == "bot-7", (alg, kid)
    others: dict[str, Any] = {"RS256": OTHER_KEY, "ES256": ec.generate_private_key(
        ec.SECP256R1()), "ES384": ec.generate_private_key(ec.SECP384R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate()}
    fits = {(alg, kid) for _, alg, kid in good} | {("RS384", "rsa-any")}
    for kid in ("rsa-any", "rsa-384", "p256", "p384", "ed"):
        for alg, key in others.items():
            if (alg, kid) in fits:
                continue
            with pytest.raises(Unauthenticated, match="does not fit the signing key"):
                auth.authenticate(jwt.encode(_claims(), key, algorithm=alg,
                                             headers={"kid": kid}))
    with pytest.raises(Unauthenticated, match="does not fit"):  # RS256 on the RS384-only key
        auth.authenticate(jwt.encode(_claims(), KEY, algorithm="RS256",
                                     headers={"kid": "rsa-384"}))


def test_keys_that_fit_no_allowed_algorithm_are_not_used(tmp_path: Path) -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY))  # a JWKS leaking "d"
    keys = [
        {**private, "kid": "private"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
        _rsa_jwk(kid="ps256", alg="PS256"),
        _rsa_jwk(kid="lies", alg="ES256"),
        _rsa_jwk(kid="enc", use="enc"),
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(
            ec.generate_private_key(ec.SECP256K1()).public_key())), "kid": "k256"},
        "not a key",
        _rsa_jwk(kid="ok"),
    ]
    cache = JwksCache(_jwks_file(tmp_path, keys))
    auth = Authenticator({}, jwks=cache)
    assert auth.authenticate(jwt.encode(_claims(), KEY, algorithm="RS256",
                                        headers={"kid": "ok"})).id == "bot-7"
    for kid in ("private", "oct", "ps256", "lies", "enc", "k256"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(jwt.encode(_claims(), KEY, algorithm="RS256",
                                         headers={"kid": kid}))
    assert sorted(cache._keys) == ["ok"]


def test_a_jwks_with_no_usable_key_is_unavailable(tmp_path: Path) -> None:
    auth = Authenticator({}, jwks=JwksCache(_jwks_file(tmp_path, [{"kty": "oct", "k": "eA",
                                                                    "kid": "k1"}])))
    with pytest.raises(Unauthenticated, match="JWKS unavailable"):
        auth.authenticate(token())


class _BrokenJwks(JwksCache):
    """A key store that fails in a way nobody planned for."""

    def get(self, kid: str) -> SigningKey:
        raise RuntimeError("boom")

    async def get_async(self, kid: str) -> SigningKey:
        raise KeyError(kid)


async def test_an_unplanned_failure_while_verifying_is_unauthenticated() -> None:
    auth = Authenticator({}, jwks=_BrokenJwks("file:///nonexistent"))
    with pytest.raises(Unauthenticated, match="cannot be verified"):
        auth.authenticate(token())
    with pytest.raises(Unauthenticated, match="cannot be verified"):
        await auth.authenticate_async(token())


def test_mutated_tokens_are_a_principal_or_unauthenticated(tmp_path: Path) -> None:
    """Seeded mutations of a valid token (characters, segments, header fields): verifying one
    ends in a principal or ``Unauthenticated``, never in any other exception."""
    auth = Authenticator({}, jwks=JwksCache(_jwks_file(tmp_path, [_rsa_jwk(kid="k1")])))
    base = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})
    rng = random.Random(20261201)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
    headers: list[Any] = [{"alg": "ES256", "kid": "k1"}, {"alg": "EdDSA", "kid": "k1"},
                          {"alg": "RS256", "kid": "k1", "crit": "b64"}, {"alg": "RS256"},
                          {"alg": "RS256", "kid": None}, {"alg": None, "kid": "k1"}, [], "x",
                          {"alg": "RS256", "kid": "k1", "b64": False}, 1, None]
    segments = base.split(".")
    tokens = []
    for _ in range(300):
        chars = list(base)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        tokens.append("".join(chars))
    for header in headers:
        h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        tokens.append(".".join([h, *segments[1:]]))
    tokens += [".".join(segments[:2]), segments[0] * 3, ".".join([*segments, segments[2]])]
    for tok in tokens:
        with contextlib.suppress(Unauthenticated):
            auth.authenticate(tok)
