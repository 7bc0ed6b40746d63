"""Identity: the token table, and JWTs verified against a real JWKS served on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.errors import Unauthenticated
from gateway.identity import Authenticator, bearer_token
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
