"""Clerk session tokens for the emulator: an RS256 key pair, the JWKS it serves, and minted tokens.

Tokens carry Clerk's claims in either shape: session token v2 (``"v": 2`` and the active organization
in ``"o": {"id", "rol", "slg", …}``) or v1 (``org_id``, ``org_role``, ``org_slug``). Keys are generated
on first use (RSA generation is the only slow step), and ``rotate_key`` adds a new one the way Clerk
rotates instance keys: the JWKS then lists both, and new tokens use the new ``kid``.
"""

import base64
import secrets
import threading
import time
from typing import Any, TypedDict

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_ISSUER = "https://clerk.orgsync.test"
DEFAULT_AUTHORIZED_PARTY = "http://localhost:3000"

Json = dict[str, Any]


class TokenOptions(TypedDict, total=False):
    """The options of :meth:`SessionTokenMinter.mint` besides the user and the organization (for callers that
    pass them on; the defaults are ``mint``'s)."""

    version: int
    azp: str | None
    expires_in: int
    issued_at: int | None
    kid: str | None


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SessionTokenMinter:
    """Signs Clerk-shaped session tokens and publishes the public keys as a JWKS."""

    def __init__(self, issuer: str = DEFAULT_ISSUER) -> None:
        self.issuer = issuer
        self._lock = threading.Lock()
        self._keys: dict[str, rsa.RSAPrivateKey] = {}  # kid -> key, oldest first
        self._current: str | None = None

    def rotate_key(self) -> str:
        """Add a new signing key (kept in the JWKS with the old ones) and make it current; returns its kid."""
        with self._lock:
            return self._add_key()

    @property
    def current_kid(self) -> str:
        """The kid new tokens are signed with (the first key is generated on first use)."""
        with self._lock:
            return self._current if self._current is not None else self._add_key()

    def jwks(self) -> Json:
        """``GET /v1/jwks``: every public key, as Clerk serves them."""
        with self._lock:
            if self._current is None:
                self._add_key()
            keys = list(self._keys.items())
        return {"keys": [_public_jwk(kid, key) for kid, key in keys]}

    def _add_key(self) -> str:
        """Generate a key and make it current; the caller holds the lock."""
        kid = f"ins_{secrets.token_hex(12)}"
        self._keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._current = kid
        return kid

    def public_key_pem(self, kid: str | None = None) -> str:
        """The PEM public key (what Clerk's dashboard shows as the JWT public key, ``CLERK_JWT_KEY``)."""
        key = self._key(kid or self.current_kid)
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def mint(
        self,
        user_id: str,
        *,
        org: Json | None = None,
        version: int = 2,
        azp: str | None = DEFAULT_AUTHORIZED_PARTY,
        expires_in: int = 60,
        issued_at: int | None = None,
        kid: str | None = None,
    ) -> str:
        """A signed session token for ``user_id``; ``org`` (``{"id", "role", "slug"}``) is the active
        organization. ``issued_at`` (Unix seconds) defaults to now; ``exp`` is ``issued_at + expires_in``."""
        if version not in (1, 2):
            raise ValueError("Clerk session tokens are version 1 or 2")
        kid = kid or self.current_kid
        iat = int(time.time()) if issued_at is None else issued_at
        claims: Json = {
            "sub": user_id,
            "sid": f"sess_{secrets.token_hex(12)}",
            "iss": self.issuer,
            "iat": iat,
            "nbf": iat - 10,
            "exp": iat + expires_in,
            "fva": [0, -1],
        }
        if azp is not None:
            claims["azp"] = azp
        claims.update(_org_claims(org, version))
        return jwt.encode(claims, self._key(kid), algorithm="RS256", headers={"kid": kid})

    def _key(self, kid: str) -> rsa.RSAPrivateKey:
        with self._lock:
            key = self._keys.get(kid)
        if key is None:
            raise KeyError(f"the emulator has no signing key {kid!r}")
        return key


def _org_claims(org: Json | None, version: int) -> Json:
    if version == 1:
        if org is None:
            return {}
        return {
            "org_id": org["id"],
            "org_role": org.get("role"),
            "org_slug": org.get("slug"),
            "org_permissions": [],
        }
    claims: Json = {"v": 2}
    if org is not None:
        role = org.get("role") or ""
        claims["o"] = {
            "id": org["id"],
            "rol": role.removeprefix("org:"),
            "slg": org.get("slug"),
            "per": "",
            "fpm": "",
        }
    return claims


def _public_jwk(kid: str, key: rsa.RSAPrivateKey) -> Json:
    numbers = key.public_key().public_numbers()
    return {
        "use": "sig",
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }
