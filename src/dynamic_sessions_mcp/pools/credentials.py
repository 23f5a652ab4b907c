"""Outbound auth to the session pool as `httpx.Auth`: Entra ID tokens (cached) or a static bearer.

Tokens never reach logs or error messages; only the `Authorization` header carries them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind

logger = logging.getLogger(__name__)

DYNAMIC_SESSIONS_SCOPE = "https://dynamicsessions.io/.default"


class AccessTokenLike(Protocol):
    """What azure-identity's `AccessToken` offers: the token and its expiry (epoch seconds)."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> float: ...


class AsyncTokenCredential(Protocol):
    """The slice of an `azure.identity.aio` credential this module uses."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _CachedToken:
    token: str
    expires_on: float


class EntraTokenAuth(httpx.Auth):
    """Bearer tokens from an async Entra credential, cached and refreshed once for all waiters.

    A token is refreshed when fewer than `refresh_margin_s` seconds remain; concurrent requests
    share one refresh. A 401 answer invalidates the token (roles or keys may have changed) and the
    request is sent once more with a fresh one.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        scope: str = DYNAMIC_SESSIONS_SCOPE,
        refresh_margin_s: float = 300.0,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._refresh_margin_s = refresh_margin_s
        self._cached: _CachedToken | None = None
        self._generation = 0  # bumped on every fetch
        self._lock = asyncio.Lock()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("EntraTokenAuth works only with httpx.AsyncClient")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            await response.aread()  # release the connection before sending again
            token = await self._token(refused=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def _token(self, refused: str | None = None) -> str:
        cached = self._usable(refused)
        if cached is not None:
            return cached
        generation = self._generation
        async with self._lock:
            cached = self._usable(refused)
            if cached is None and self._generation != generation:
                # Refreshed while this request waited: take that token even if it is short-lived.
                latest = self._cached
                if latest is not None and latest.token != refused and latest.expires_on > time.time():
                    cached = latest.token
            if cached is not None:
                return cached
            self._cached = await self._fetch()
            self._generation += 1
            return self._cached.token

    def _usable(self, refused: str | None) -> str | None:
        cached = self._cached
        if cached is None or cached.token == refused:
            return None
        if cached.expires_on - time.time() < self._refresh_margin_s:
            return None
        return cached.token

    async def _fetch(self) -> _CachedToken:
        started = time.monotonic()
        try:
            access = await self._credential.get_token(self._scope)
        except Exception as exc:
            # azure-identity messages name the credential chain and what failed; no secrets.
            detail = " ".join(str(exc).split())[:300]
            raise PoolError(
                PoolErrorKind.AUTH,
                "The bridge could not obtain an Entra ID token for the session pool "
                f"({type(exc).__name__}: {detail}). This is a server configuration problem: check "
                "DSMCP_POOL_AUTH and the identity it uses (managed identity client id, az login, "
                "environment credentials).",
            ) from exc
        if not access.token:
            raise PoolError(
                PoolErrorKind.AUTH,
                "The Entra ID credential returned an empty token for the session pool; check "
                "DSMCP_POOL_AUTH and the identity it uses.",
            )
        logger.debug(
            "obtained a session pool token in %.0f ms, valid for %.0f s",
            (time.monotonic() - started) * 1000,
            access.expires_on - time.time(),
        )
        return _CachedToken(access.token, float(access.expires_on))

    async def aclose(self) -> None:
        await self._credential.close()


def entra_credential(managed_identity_client_id: str | None) -> AsyncTokenCredential:
    """A user-assigned managed identity when its client id is given, else the default chain.

    azure.identity.aio's default transport needs aiohttp, which the bridge does not depend on;
    azure-core's requests transport (requests is azure-core's own dependency) runs token fetches,
    which happen about once an hour, in a worker thread instead.
    """
    transport = AsyncioRequestsTransport()
    if managed_identity_client_id:
        credential: AsyncTokenCredential = ManagedIdentityCredential(
            client_id=managed_identity_client_id, transport=transport
        )
    else:
        credential = DefaultAzureCredential(transport=transport)
    return credential


class StaticTokenAuth(httpx.Auth):
    """A fixed bearer token (a local pool's token, or one minted outside the bridge)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request
