"""Outbound auth against a real loopback server; the Azure credential is a counting test double."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dynamic_sessions_mcp.pools.base import PoolError, PoolErrorKind
from dynamic_sessions_mcp.pools.credentials import (
    DYNAMIC_SESSIONS_SCOPE,
    EntraTokenAuth,
    StaticTokenAuth,
    entra_credential,
)
from tests.support.serve import serve_in_thread

pytestmark = pytest.mark.anyio


@dataclass
class BearerRecorder:
    """A tiny pool stand-in: records the bearer of each request, answers 401 to refused tokens."""

    refused: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def endpoint(self, request: Request) -> Response:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        with self.lock:
            self.seen.append(bearer)
            refused = bearer in self.refused
        if refused:
            return Response(status_code=401)
        return JSONResponse({"ok": True})

    def reset(self) -> None:
        with self.lock:
            self.refused.clear()
            self.seen.clear()


@dataclass(frozen=True)
class FakeAccessToken:
    token: str
    expires_on: int


class CountingCredential:
    """Stands in for an azure.identity.aio credential: numbered tokens, slow enough to pile up on."""

    def __init__(self, lifetimes_s: list[float] | None = None, fail: Exception | None = None) -> None:
        self.lifetimes_s = lifetimes_s or [3600.0]
        self.fail = fail
        self.calls = 0
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: object) -> FakeAccessToken:
        self.calls += 1
        self.scopes.append(scopes)
        await asyncio.sleep(0.05)
        if self.fail is not None:
            raise self.fail
        lifetime = self.lifetimes_s[min(self.calls, len(self.lifetimes_s)) - 1]
        return FakeAccessToken(f"token-{self.calls}", int(time.time() + lifetime))

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def recorder_server() -> Iterator[tuple[BearerRecorder, str]]:
    recorder = BearerRecorder()
    app = Starlette(routes=[Route("/ping", recorder.endpoint, methods=["GET", "POST"])])
    with serve_in_thread(app) as url:
        yield recorder, url + "/ping"


@pytest.fixture
def server(recorder_server: tuple[BearerRecorder, str]) -> Iterator[tuple[BearerRecorder, str]]:
    recorder_server[0].reset()
    yield recorder_server


async def test_concurrent_requests_share_one_token_fetch(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    credential = CountingCredential()
    auth = EntraTokenAuth(credential)
    async with httpx.AsyncClient(auth=auth) as client:
        responses = await asyncio.gather(*(client.get(url) for _ in range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert credential.calls == 1
    assert credential.scopes == [(DYNAMIC_SESSIONS_SCOPE,)]
    assert recorder.seen == ["token-1"] * 100


async def test_a_token_within_the_refresh_margin_is_refreshed(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    credential = CountingCredential(lifetimes_s=[100.0, 3600.0])  # the first expires within 300 s
    auth = EntraTokenAuth(credential, refresh_margin_s=300)
    async with httpx.AsyncClient(auth=auth) as client:
        for _ in range(3):
            assert (await client.get(url)).status_code == 200
    assert recorder.seen == ["token-1", "token-2", "token-2"]
    assert credential.calls == 2


async def test_waiters_share_one_fetch_even_of_a_short_lived_token(
    server: tuple[BearerRecorder, str],
) -> None:
    recorder, url = server
    credential = CountingCredential(lifetimes_s=[60.0])  # always within the 300 s margin
    async with httpx.AsyncClient(auth=EntraTokenAuth(credential)) as client:
        responses = await asyncio.gather(*(client.get(url) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert credential.calls == 1
    assert recorder.seen == ["token-1"] * 20


async def test_a_401_refreshes_once_and_retries(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    recorder.refused.add("token-1")
    credential = CountingCredential()
    async with httpx.AsyncClient(auth=EntraTokenAuth(credential)) as client:
        response = await client.post(url, json={"code": "print(1)"})
    assert response.status_code == 200
    assert recorder.seen == ["token-1", "token-2"]
    assert credential.calls == 2


async def test_concurrent_401s_share_one_refresh(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    recorder.refused.add("token-1")
    credential = CountingCredential()
    async with httpx.AsyncClient(auth=EntraTokenAuth(credential)) as client:
        responses = await asyncio.gather(*(client.get(url) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert credential.calls == 2
    assert sorted(set(recorder.seen)) == ["token-1", "token-2"]


async def test_a_token_refused_twice_gives_the_401_back(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    recorder.refused.update({"token-1", "token-2", "token-3"})
    credential = CountingCredential()
    async with httpx.AsyncClient(auth=EntraTokenAuth(credential)) as client:
        response = await client.get(url)
    assert response.status_code == 401
    assert recorder.seen == ["token-1", "token-2"]


async def test_a_failing_credential_is_an_auth_error(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    credential = CountingCredential(fail=RuntimeError("ManagedIdentityCredential: no identity endpoint"))
    async with httpx.AsyncClient(auth=EntraTokenAuth(credential)) as client:
        with pytest.raises(PoolError) as caught:
            await client.get(url)
    assert caught.value.kind is PoolErrorKind.AUTH
    assert "no identity endpoint" in caught.value.message
    assert "DSMCP_POOL_AUTH" in caught.value.message
    assert recorder.seen == []


async def test_aclose_closes_the_credential() -> None:
    credential = CountingCredential()
    await EntraTokenAuth(credential).aclose()
    assert credential.closed


async def test_static_token_is_sent_as_bearer(server: tuple[BearerRecorder, str]) -> None:
    recorder, url = server
    async with httpx.AsyncClient(auth=StaticTokenAuth("local-pool-token")) as client:
        assert (await client.get(url)).status_code == 200
    assert recorder.seen == ["local-pool-token"]


@pytest.mark.parametrize("client_id", [None, "00000000-0000-0000-0000-000000000001"])
async def test_entra_credential_works_without_aiohttp(
    server: tuple[BearerRecorder, str], client_id: str | None
) -> None:
    """The real azure-identity credential, end to end: a token reaches the server, or (on machines
    without any Azure identity, like CI) the failure is an AUTH error explaining the chain."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    recorder, url = server
    credential = entra_credential(client_id)
    expected = ManagedIdentityCredential if client_id else DefaultAzureCredential
    assert isinstance(credential, expected)
    auth = EntraTokenAuth(credential)
    try:
        async with httpx.AsyncClient(auth=auth) as client:
            response = await asyncio.wait_for(client.get(url), 60)
    except PoolError as exc:
        assert exc.kind is PoolErrorKind.AUTH
        assert (
            "Credential" in exc.message
        )  # e.g. "ClientAuthenticationError: DefaultAzureCredential failed ..."
        assert recorder.seen == []
    else:
        assert response.status_code == 200
        assert len(recorder.seen) == 1 and recorder.seen[0]
    finally:
        await auth.aclose()
