"""Entra ID access tokens for HTTP callers: RS256 signature via the tenant's JWKS, issuer,
audience, expiry. The caller is `tid/oid`, the same principal whichever app asked for the token.

Signing keys are cached; an unknown `kid` (Entra rotates keys) triggers one refetch, at most
once a minute, so a flood of forged tokens cannot turn into a flood of JWKS requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt
from mcp.server.auth.provider import AccessToken

from dynamic_sessions_mcp.inbound_auth import EntraConfig, Rejected, VerifierUnavailable

logger = logging.getLogger(__name__)

ALGORITHMS = ["RS256"]
CLOCK_SKEW_S = 60.0


class JwksCache:
    """The signing keys at `url`, refreshed after `max_age_s` or on an unknown key id."""

    def __init__(
        self, url: str, http: httpx.AsyncClient, *, max_age_s: float = 3600.0, min_refetch_s: float = 60.0
    ) -> None:
        self._url = url
        self._http = http
        self._max_age_s = max_age_s
        self._min_refetch_s = min_refetch_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        if self._usable(kid):
            return self._keys[kid]
        async with self._lock:
            if not self._usable(kid) and time.monotonic() - self._fetched_at >= self._min_refetch_s:
                await self._refresh(kid)
        if kid in self._keys:
            return self._keys[kid]
        raise Rejected("unknown_key", "the token is signed with a key this server does not trust")

    def _usable(self, kid: str) -> bool:
        return kid in self._keys and time.monotonic() - self._fetched_at < self._max_age_s

    async def _refresh(self, kid: str) -> None:
        try:
            response = await self._http.get(self._url)
            response.raise_for_status()
            keys = _parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            if kid in self._keys:  # keep verifying with the keys we have while the source is down
                logger.warning("could not refresh the Entra signing keys (%s); using cached ones", exc)
                return
            raise VerifierUnavailable(
                f"could not fetch the Entra signing keys: {type(exc).__name__}"
            ) from exc
        self._keys = keys
        self._fetched_at = time.monotonic()
        logger.debug("fetched %d Entra signing keys", len(keys))


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("kid"), str)
            or entry.get("use", "sig") != "sig"
        ):
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256")
        except jwt.PyJWKError:
            continue  # a key type we do not use
    return keys


_CLAIM_ERRORS: list[tuple[type[jwt.InvalidTokenError], str, str]] = [
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "audience", "the token was issued for another audience"),
    (jwt.InvalidIssuerError, "issuer", "the token was issued by an untrusted issuer"),
    (jwt.InvalidSignatureError, "signature", "the token's signature does not verify"),
    (jwt.MissingRequiredClaimError, "claims", "the token lacks a required claim (exp, iss, aud, tid, oid)"),
]


class EntraVerifier:
    """Verifies Entra ID access tokens against one configuration."""

    def __init__(self, config: EntraConfig, http: httpx.AsyncClient) -> None:
        self._config = config
        self._jwks = JwksCache(config.jwks_url, http)

    async def verify(self, credential: str) -> AccessToken:
        try:
            header = jwt.get_unverified_header(credential)
        except jwt.InvalidTokenError:
            raise Rejected("malformed", "the bearer token is not a JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("alg") not in ALGORITHMS:
            raise Rejected("malformed", "the token names no RS256 signing key")
        key = await self._jwks.key(kid)
        try:
            claims = jwt.decode(
                credential,
                key=key,
                algorithms=ALGORITHMS,
                audience=self._config.audiences,
                issuer=self._config.issuers,
                leeway=CLOCK_SKEW_S,
                options={"require": ["exp", "iss", "aud", "tid", "oid"]},
            )
        except jwt.InvalidTokenError as exc:
            for kind, reason, description in _CLAIM_ERRORS:
                if isinstance(exc, kind):
                    raise Rejected(reason, description) from None
            raise Rejected("invalid", "the token is not valid") from None
        caller = f"{claims['tid']}/{claims['oid']}"
        roles = claims.get("roles")
        scopes = str(claims.get("scp", "")).split() + (
            [str(r) for r in roles] if isinstance(roles, list) else []
        )
        return AccessToken(
            # A label: the bearer token itself stays out of objects that might be logged.
            token="entra",  # noqa: S106
            client_id=caller,
            subject=str(claims["oid"]),
            scopes=scopes,
            expires_at=int(claims["exp"]),
            claims={"iss": claims["iss"], "tid": claims["tid"], "oid": claims["oid"]},
        )
