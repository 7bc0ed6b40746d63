"""Who is calling: bearer tokens from a token table, or JWTs verified against a JWKS.

Tokens are compared in constant time and never logged; a token that matches nothing is
``Unauthenticated`` — no token, no action.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

import jwt

from gateway.errors import Unauthenticated
from gateway.models import Principal

__all__ = ["Authenticator", "bearer_token"]


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


class Authenticator:
    """Maps a bearer token to a :class:`Principal`.

    The static table is checked first; otherwise, when a JWKS URL is configured, the token is
    verified as a JWT (signature, ``exp``, and ``iss``/``aud`` when configured). JWT claims:
    ``sub`` is the principal id, ``tenant`` and ``roles`` (list) give the rest.
    """

    def __init__(
        self,
        tokens: Mapping[str, Principal],
        *,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self._tokens = [(t.encode(), p) for t, p in tokens.items()]
        self._issuer = issuer
        self._audience = audience
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300) if jwks_url else None

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
        given = token.encode()
        found: Principal | None = None
        for known, principal in self._tokens:
            # Check every entry so timing does not reveal which prefix matched.
            if hmac.compare_digest(known, given):
                found = principal
        if found is not None:
            return found
        if self._jwks is not None and token.count(".") == 2:
            return self._verify_jwt(token)
        raise Unauthenticated("invalid bearer token")

    def _verify_jwt(self, token: str) -> Principal:
        assert self._jwks is not None
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWKClientError as exc:
            raise Unauthenticated(f"cannot verify token: JWKS unavailable ({exc})") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        tenant = claims.get("tenant")
        roles = claims.get("roles", [])
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated("invalid token: missing 'tenant' claim")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("invalid token: 'roles' must be a list of strings")
        return Principal(id=str(claims["sub"]), tenant=tenant, roles=tuple(roles))
