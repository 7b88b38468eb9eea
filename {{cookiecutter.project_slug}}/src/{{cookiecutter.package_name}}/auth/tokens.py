"""Verify a bearer JWT: signature by a known key, algorithm from an allow-list, issuer, audience,
expiry with a small leeway, and a subject.

The algorithm is never taken from the token: the token's ``alg`` header must be on the allow-list
(asymmetric algorithms only, so never ``none`` and never an HMAC keyed with a public key) and equal
the algorithm of the key its ``kid`` names. Every failure is one ``InvalidTokenError`` whose
message is safe to show the client; the reason in detail goes to the log only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from .jwks import JwksCache

# Signature algorithms a resource server can verify with a public key. HS* is absent on purpose:
# with HS256 the "secret" is whatever key the verifier holds, and the JWKS is public.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
# The scope that lets a caller act on every user and create users (space-separated `scope`
# claim, RFC 8693 section 4.2; `scp` as a list is accepted too).
ADMIN_SCOPE = "admin"


class InvalidTokenError(Exception):
    """The token cannot be accepted; ``error`` is the RFC 6750 error code for the header."""

    def __init__(self, description: str, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.error = error


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, as the verified token says."""

    subject: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def may_act_on(self, user_id: int) -> bool:
        """A caller acts on its own user (``sub`` is the user's id in decimal) or, with the
        admin scope, on any user."""
        return self.is_admin or self.subject == str(user_id)


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    listed = claims.get("scp")
    if isinstance(listed, list):
        return frozenset(item for item in listed if isinstance(item, str))
    return frozenset()


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    keys: JwksCache
    issuer: str
    audience: str
    algorithms: frozenset[str]
    leeway: float

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidTokenError("the token is malformed") from error
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise InvalidTokenError("the token's algorithm is not accepted")
        if not isinstance(kid, str):
            raise InvalidTokenError("the token names no signing key")
        key = self.keys.key_for(kid)
        if key is None or key.algorithm_name != alg:
            raise InvalidTokenError("the token is signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
            )
        except jwt.ExpiredSignatureError as error:
            raise InvalidTokenError("the token has expired") from error
        except jwt.PyJWTError as error:
            raise InvalidTokenError("the token is not valid") from error
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidTokenError("the token has no subject")
        return Caller(subject=subject, scopes=_scopes(claims))
