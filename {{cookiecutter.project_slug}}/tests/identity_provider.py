"""A test identity provider: real signing keys, real tokens, a JWKS served over real HTTP.

The keys are generated here with ``cryptography`` (RSA for RS256, P-256 for ES256); tokens are
signed with pyjwt exactly as a provider would sign them. The JWKS is served by a small HTTP/1.1
server on 127.0.0.1 that can be slowed down or taken down, and that counts every fetch, which is
how a test sees whether the service went to the network and when.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

KeyKind = Literal["RS256", "ES256"]
ISSUER = "https://idp.example.test/"
AUDIENCE = "orders-api"


@dataclass
class SigningKey:
    kid: str
    algorithm: KeyKind
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        jwk = (
            RSAAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, rsa.RSAPublicKey)
            else ECAlgorithm.to_jwk(public, as_dict=True)
        )
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}


def new_key(algorithm: KeyKind = "RS256", kid: str | None = None) -> SigningKey:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return SigningKey(kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}", algorithm, private)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class IdentityProvider:
    """Publishes ``published`` keys at ``jwks_url``; signs tokens with any key it holds."""

    issuer: str = ISSUER
    audience: str = AUDIENCE
    published: list[SigningKey] = field(default_factory=list)
    # "up": 200 with the JWKS; "down": 503; "slow": the answer comes after ``delay`` seconds.
    mode: Literal["up", "down", "slow"] = "up"
    delay: float = 0.0
    fetches: int = 0  # every JWKS request received, answered or not
    fetch_times: list[float] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __aenter__(self) -> IdentityProvider:
        if not self.published:
            self.published.append(new_key("RS256"))
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def jwks_url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/.well-known/jwks.json"

    def settings(self, **overrides: object) -> dict[str, object]:
        """The AUTH_* settings of a service that trusts this provider."""
        return {
            "auth_issuer": self.issuer,
            "auth_audience": self.audience,
            "auth_jwks_url": self.jwks_url,
            **overrides,
        }

    @property
    def key(self) -> SigningKey:
        return self.published[0]

    def token(
        self,
        subject: str = "1",
        *,
        key: SigningKey | None = None,
        scope: str | None = None,
        expires_in: float = 300.0,
        issuer: str | None = None,
        audience: str | None = None,
        kid: str | None = None,
    ) -> str:
        """A token as the provider would issue it; every argument bends one claim or header."""
        signer = key or self.key
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + int(expires_in),
        }
        if scope is not None:
            claims["scope"] = scope
        return jwt.encode(
            claims, signer.private, algorithm=signer.algorithm, headers={"kid": kid or signer.kid}
        )

    def admin_token(self) -> str:
        return self.token("admin-console", scope="admin")

    def unsigned_token(self, subject: str = "1") -> str:
        """``alg: none``: a token anyone can write, which a verifier must never accept."""
        now = int(time.time())
        header = {"alg": "none", "typ": "JWT", "kid": self.key.kid}
        claims = {"iss": self.issuer, "aud": self.audience, "sub": subject, "iat": now,
                  "exp": now + 300}  # fmt: skip
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.published]}

    async def wait_for_fetches(self, count: int, within: float = 5.0) -> int:
        """Wait until at least ``count`` JWKS requests arrived (bounded: fails after ``within``)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.fetches >= count)
        return self.fetches

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            async with self._changed:
                self.fetches += 1
                self.fetch_times.append(time.monotonic())
                self._changed.notify_all()
            if self.mode == "slow":
                await asyncio.sleep(self.delay)
            status, body = (
                ("503 Service Unavailable", b'{"error": "down"}')
                if self.mode == "down"
                else ("200 OK", json.dumps(self.jwks()).encode())
            )
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
