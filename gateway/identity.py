"""Who is calling: bearer tokens from a token table, or JWTs verified against a JWKS.

Tokens are compared in constant time and never logged; a token that matches nothing is
``Unauthenticated`` — no token, no action.

Everything here runs before the caller is known, so no part of it may let an anonymous caller
make the gateway wait or work in proportion to what it sends: a token over
:data:`MAX_TOKEN_BYTES` is refused unread, a JWT's header is checked (shape, algorithm,
``kid``) before any key is looked up, and the JWKS is fetched off the event loop by
:class:`JwksCache` — one fetch at a time however many requests wait for it (single flight),
with a bounded timeout, and at most one attempt per cool-down after a failure or for a key
id it does not know (negative cache).

Whatever a caller sends, verifying it ends in a :class:`Principal` or an ``Unauthenticated``,
never another error (an anonymous caller must not reach an internal error): each JWKS key is
pinned to the algorithms that fit it (its JWK ``alg``, else its key type's), a token whose
``alg`` does not fit its key is refused before decoding, and any other failure while verifying
is an ``Unauthenticated`` too. Only the configured JWKS is ever consulted: ``jku``, ``x5u``,
``jwk`` and ``x5c`` headers are ignored, and a ``crit`` or ``b64`` header is refused (no
extension is understood).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.errors import Unauthenticated
from gateway.models import Principal

__all__ = ["MAX_TOKEN_BYTES", "Authenticator", "JwksCache", "SigningKey", "bearer_token"]

log = structlog.get_logger("switchboard.identity")

MAX_TOKEN_BYTES = 8192
MAX_KID_LENGTH = 256
MAX_JWKS_BYTES = 1024 * 1024
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA")
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
_EC_ALGORITHMS = {"secp256r1": frozenset({"ES256"}), "secp384r1": frozenset({"ES384"})}
_EDDSA = frozenset({"EdDSA"})
# JOSE header parameters that would change how the token is read (RFC 7515 §4.1.11, RFC 7797):
# none is understood, so a token carrying one is refused rather than half-understood.
_REFUSED_HEADERS = ("crit", "b64")


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The bearer token from gRPC metadata or HTTP headers (``authorization: Bearer <t>``)."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class SigningKey:
    """One JWKS key and the algorithms it may verify.

    The set is fixed when the JWKS is read, from the key itself (an RSA key fits only RS*, a
    P-256 key only ES256, an Ed25519/Ed448 key only EdDSA) narrowed to the JWK's ``alg`` when it
    names one: the token's header never chooses how its own signature is checked.
    """

    kid: str
    key: Any  # a cryptography public key
    algorithms: frozenset[str]


def _fitting_algorithms(key: object) -> frozenset[str]:
    """The allowed algorithms a public key can verify (none for private or symmetric keys:
    a JWKS that publishes one is misconfigured, and its key is not used)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS.get(key.curve.name, frozenset())
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return _EDDSA
    return frozenset()


def _signing_key(jwk: object) -> SigningKey | None:
    """A JWKS member as a :class:`SigningKey`, or ``None`` when it cannot verify any allowed
    algorithm (skipped, as PyJWT's key set skips unusable members)."""
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH \
            or jwk.get("use") not in ("sig", None):
        return None
    declared = jwk.get("alg")
    try:
        key = jwt.PyJWK(jwk).key
    except Exception as exc:  # PyJWKError, InvalidKeyError, ValueError from a bad member
        log.warning("jwks.key_skipped", kid=_clip(kid, 64), error=type(exc).__name__)
        return None
    algorithms = _fitting_algorithms(key)
    if declared is not None:
        algorithms &= {declared} if isinstance(declared, str) else set()
    if not algorithms:
        log.warning("jwks.key_skipped", kid=_clip(kid, 64),
                    error="no allowed algorithm fits the key")
        return None
    return SigningKey(kid=kid, key=key, algorithms=algorithms)


class JwksCache:
    """The signing keys of one JWKS URL, fetched in a background thread.

    * **single flight**: while a fetch runs, every caller that needs it waits for that one;
    * **bounded**: a fetch gives up after ``timeout_s`` (connect, each read, and the whole
      download) and ``max_bytes``; a waiter waits at most ``timeout_s + 1``;
    * **cool-down / negative cache**: after any attempt, successful or not, the next one starts
      no sooner than ``cooldown_s`` later. A token whose ``kid`` is unknown within the
      cool-down is refused at once; while the JWKS is failing, tokens are refused at once;
    * **stale while revalidate**: a known key older than ``lifespan_s`` is still used while a
      refresh runs in the background (a key the IdP dropped is gone once it succeeds).

    ``fetches`` counts the fetches started (for tests and metrics).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        cooldown_s: float = 10.0,
        lifespan_s: float = 300.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.lifespan_s = lifespan_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error = ""
        self._inflight: concurrent.futures.Future[None] | None = None
        self.fetches = 0

    # -- public ----------------------------------------------------------------------------

    async def get_async(self, kid: str) -> SigningKey:
        """The key for ``kid``; never blocks the event loop."""
        key, waiting = self._plan(kid)
        if key is not None:
            return key
        if waiting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(waiting)),
                                       self.timeout_s + 1.0)
            except TimeoutError:
                raise Unauthenticated("cannot verify token: JWKS unavailable (timed out)") \
                    from None
        return self._after_fetch(kid)

    def get(self, kid: str) -> SigningKey:
        """The key for ``kid``, blocking (for callers off the event loop)."""
        key, waiting = self._plan(kid)
        if key is not None:
            return key
        if waiting is not None:
            try:
                waiting.result(self.timeout_s + 1.0)
            except concurrent.futures.TimeoutError:
                raise Unauthenticated("cannot verify token: JWKS unavailable (timed out)") \
                    from None
        return self._after_fetch(kid)

    # -- internals -------------------------------------------------------------------------

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.cooldown_s

    def _plan(self, kid: str) -> tuple[SigningKey | None, concurrent.futures.Future[None] | None]:
        """Under the lock: a usable key now, or the fetch to wait for, or neither (refused)."""
        with self._lock:
            now = self._clock()
            key = self._keys.get(kid)
            if key is not None:
                stale = self._fetched_at is None or now - self._fetched_at >= self.lifespan_s
                if stale and self._inflight is None and self._may_fetch(now):
                    self._start_fetch(now)  # refresh in the background; use the known key
                return key, None
            if self._inflight is not None:
                return None, self._inflight
            if self._may_fetch(now):
                return None, self._start_fetch(now)
            return None, None

    def _after_fetch(self, kid: str) -> SigningKey:
        with self._lock:
            key = self._keys.get(kid)
            error = self._last_error
            loaded = self._fetched_at is not None
        if key is not None:
            return key
        if error or not loaded:
            raise Unauthenticated(f"cannot verify token: JWKS unavailable ({error or 'no keys'})")
        raise Unauthenticated("invalid token: unknown signing key id")

    def _start_fetch(self, now: float) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # a cancelled waiter cannot cancel the fetch
        self._inflight = future
        self._attempted_at = now
        self.fetches += 1
        threading.Thread(target=self._fetch, args=(future,), name="jwks-fetch",
                         daemon=True).start()
        return future

    def _fetch(self, future: concurrent.futures.Future[None]) -> None:
        try:
            keys = self._download()
        except Exception as exc:
            message = _clip(f"{type(exc).__name__}: {exc}")
            log.warning("jwks.fetch_failed", error=message, retry_in_s=self.cooldown_s)
            with self._lock:
                self._last_error = message
                self._inflight = None
        else:
            with self._lock:
                self._keys = keys
                self._fetched_at = self._clock()
                self._last_error = ""
                self._inflight = None
        finally:
            future.set_result(None)

    def _download(self) -> dict[str, SigningKey]:
        parts = urlsplit(self.url)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            if path.stat().st_size > self.max_bytes:
                raise ValueError(f"JWKS document exceeds {self.max_bytes} bytes")
            body = path.read_bytes()
        elif parts.scheme in ("http", "https"):
            body = self._http_get()
        else:
            raise ValueError(f"unsupported JWKS URL scheme {parts.scheme!r}")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("JWKS document is not a JSON object")
        members = data.get("keys")
        if not isinstance(members, list) or not members:
            raise ValueError("JWKS document has no 'keys' list")
        keys: dict[str, SigningKey] = {}
        for member in members:
            key = _signing_key(member)
            if key is not None:
                keys[key.kid] = key
        if not keys:
            raise ValueError("JWKS document has no usable signing key")
        return keys

    def _http_get(self) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        body = bytearray()
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client, \
                client.stream("GET", self.url, headers={"accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise ValueError(f"JWKS endpoint answered HTTP {resp.status_code}")
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise ValueError(f"JWKS document exceeds {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JWKS download took over {self.timeout_s} s")
        return bytes(body)


class Authenticator:
    """Maps a bearer token to a :class:`Principal`.

    The static table is checked first; otherwise, when a JWKS URL is configured, the token is
    verified as a JWT (signature, ``exp``, and ``iss``/``aud`` when configured). JWT claims:
    ``sub`` is the principal id, ``tenant`` and ``roles`` (list) give the rest.

    :meth:`authenticate_async` is for the event loop (the gRPC interceptor, MCP);
    :meth:`authenticate` may block on a JWKS fetch and is for other threads.
    """

    def __init__(
        self,
        tokens: Mapping[str, Principal],
        *,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        jwks: JwksCache | None = None,
    ) -> None:
        self._tokens = [(t.encode(), p) for t, p in tokens.items()]
        self._issuer = issuer
        self._audience = audience
        self.jwks = jwks if jwks is not None else (JwksCache(jwks_url) if jwks_url else None)

    @property
    def has_static_tokens(self) -> bool:
        """Whether the static token table has any entry (for discovery metadata)."""
        return bool(self._tokens)

    def authenticate(self, token: str | None) -> Principal:
        """The caller of ``token``; ``Unauthenticated`` on any failure (see the module)."""
        try:
            found, kid, alg = self._precheck(token)
            if found is not None:
                return found
            assert token is not None and self.jwks is not None
            return self._claims(token, alg, self.jwks.get(kid))
        except Unauthenticated:
            raise
        except Exception as exc:
            raise _unverifiable(exc) from None

    async def authenticate_async(self, token: str | None) -> Principal:
        """The caller of ``token``, off the event loop for a JWKS fetch; ``Unauthenticated``
        on any failure (see the module)."""
        try:
            found, kid, alg = self._precheck(token)
            if found is not None:
                return found
            assert token is not None and self.jwks is not None
            return self._claims(token, alg, await self.jwks.get_async(kid))
        except Unauthenticated:
            raise
        except Exception as exc:
            raise _unverifiable(exc) from None

    def _precheck(self, token: str | None) -> tuple[Principal | None, str, str]:
        """The static principal, or the ``kid`` of a plausible JWT; otherwise refused. O(1)
        in the size of a hostile token: oversized ones are refused before anything else."""
        if not token:
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"bearer token exceeds {MAX_TOKEN_BYTES} bytes")
        given = token.encode("utf-8", "surrogatepass")
        found: Principal | None = None
        for known, principal in self._tokens:
            # Check every entry so timing does not reveal which prefix matched.
            if hmac.compare_digest(known, given):
                found = principal
        if found is not None:
            return found, "", ""
        if self.jwks is None or not _JWT_SHAPE.fullmatch(token):
            raise Unauthenticated("invalid bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {_clip(str(exc))}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise Unauthenticated("invalid token: algorithm not allowed")
        if any(name in header for name in _REFUSED_HEADERS):
            raise Unauthenticated("invalid token: header extensions ('crit', 'b64') are not "
                                  "supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise Unauthenticated("invalid token: missing or malformed 'kid' header")
        return None, kid, alg

    def _claims(self, token: str, alg: str, key: SigningKey) -> Principal:
        """The token verified with ``key`` under ``alg`` only, once ``alg`` is known to fit
        the key (PyJWT raises ``TypeError``/``InvalidKeyError``, not an ``InvalidTokenError``,
        when a header's algorithm does not fit the key it is handed)."""
        if alg not in key.algorithms:
            raise Unauthenticated("invalid token: its algorithm does not fit the signing key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {_clip(str(exc))}") from None
        if not isinstance(claims, dict):
            raise Unauthenticated("invalid token: the payload is not a JSON object")
        tenant = claims.get("tenant")
        roles = claims.get("roles", [])
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated("invalid token: missing 'tenant' claim")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("invalid token: 'roles' must be a list of strings")
        return Principal(id=str(claims["sub"]), tenant=tenant, roles=tuple(roles))


def _unverifiable(exc: Exception) -> Unauthenticated:
    """Any other failure while verifying a credential: the caller is refused like any bad
    token (logged by type only: the message may quote the token)."""
    log.warning("identity.verify_failed", error=type(exc).__name__)
    return Unauthenticated("invalid token: it cannot be verified")
