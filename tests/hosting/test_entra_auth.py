"""Inbound Entra ID tokens: RS256 keys minted here, their JWKS served on loopback, the bridge
verifying signature, issuer, audience and expiry; the caller is tid/oid."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dynamic_sessions_mcp.config import InboundAuth
from dynamic_sessions_mcp.entra_tokens import EntraVerifier, JwksCache
from dynamic_sessions_mcp.identity import SessionIdentity
from dynamic_sessions_mcp.inbound_auth import EntraConfig, Rejected, VerifierUnavailable
from tests.bridge.helpers import ok
from tests.conftest import SESSION_SECRET, PoolServer, bridge_settings, serve_bridge
from tests.hosting.conftest import INIT, MCP_HEADERS, mcp_client
from tests.support.serve import free_port, serve_in_thread

pytestmark = pytest.mark.anyio
TENANT = "7c1e5a8e-0000-4000-8000-000000000001"
ISSUER = f"https://login.example.test/{TENANT}/v2.0"
AUDIENCE = "api://dsmcp-test"


class KeyServer:
    """A JWKS endpoint on loopback whose keys the test can rotate; counts its hits."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.hits = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/keys", self._jwks)])

    def add_key(self) -> str:
        kid = uuid.uuid4().hex[:12]
        with self._lock:
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    async def _jwks(self, _: Request) -> JSONResponse:
        with self._lock:
            self.hits += 1
            keys = [
                {
                    **RSAAlgorithm.to_jwk(key.public_key(), as_dict=True),
                    "kid": kid,
                    "use": "sig",
                    "alg": "RS256",
                }
                for kid, key in self.keys.items()
            ]
        return JSONResponse({"keys": keys})

    def token(self, kid: str, *, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "tid": TENANT,
            "oid": "oid-alice",
            "iat": now,
            "exp": now + 600,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def key_server() -> Iterator[tuple[KeyServer, str]]:
    server = KeyServer()
    server.add_key()
    with serve_in_thread(server.app) as url:
        yield server, url + "/keys"


@pytest.fixture(scope="module")
def entra_bridge(python_pool: PoolServer, key_server: tuple[KeyServer, str]) -> Iterator[str]:
    settings = bridge_settings(
        python_pool,
        auth=InboundAuth.ENTRA,
        entra_audience=[AUDIENCE],
        entra_issuer=[ISSUER],
        entra_jwks_url=key_server[1],
    )
    yield from serve_bridge(settings)


def refusal(url: str, headers: dict[str, str]) -> tuple[str, str]:
    response = httpx.post(url, json=INIT, headers={**MCP_HEADERS, **headers})
    assert response.status_code == 401, response.text
    return response.headers["www-authenticate"], response.json()["error_description"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_missing_token_gets_the_challenge_with_scope_and_metadata(entra_bridge: str) -> None:
    header, _ = refusal(entra_bridge, {})
    metadata = entra_bridge.removesuffix("/mcp") + "/.well-known/oauth-protected-resource/mcp"
    assert header == f'Bearer scope="{AUDIENCE}/.default", resource_metadata="{metadata}"'
    document = httpx.get(metadata).json()
    assert document["resource"] == entra_bridge
    assert document["authorization_servers"] == [ISSUER]
    assert document["scopes_supported"] == [f"{AUDIENCE}/.default"]


def test_bad_tokens_are_refused(entra_bridge: str, key_server: tuple[KeyServer, str]) -> None:
    keys, _ = key_server
    kid = next(iter(keys.keys))
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    cases = {
        "expired": keys.token(kid, iat=now - 7200, exp=now - 3600),
        "another audience": keys.token(kid, aud="api://someone-else"),
        "untrusted issuer": keys.token(kid, iss="https://login.example.test/other-tenant/v2.0"),
        "signature does not verify": keys.token(kid, key=forger),
        "does not trust": keys.token("unknown-kid", key=forger),
        "lacks a required claim": keys.token(kid, oid=None),
        "not a JWT": "definitely-not-a-jwt",
    }
    for expected, token in cases.items():
        header, description = refusal(entra_bridge, bearer(token))
        assert expected in description
        assert 'error="invalid_token"' in header and "resource_metadata=" in header
    # API keys are not an Entra credential: X-API-Key is not read in this mode.
    refusal(entra_bridge, {"X-API-Key": keys.token(kid)})


async def test_valid_tokens_work_and_the_caller_is_tid_oid(
    entra_bridge: str, key_server: tuple[KeyServer, str], python_pool: PoolServer
) -> None:
    keys, _ = key_server
    kid = next(iter(keys.keys))
    identity = SessionIdentity(SESSION_SECRET.encode())
    async with mcp_client(entra_bridge, bearer(keys.token(kid, azp="app-one"))) as alice:
        handle = ok(await alice.call_tool("run_python", {"code": "v = 'alice'"}))["session"]
    assert python_pool.session_exists(identity.pool_identifier(f"{TENANT}/oid-alice", handle))
    # The same principal through another app's token reaches the same sandbox...
    async with mcp_client(entra_bridge, bearer(keys.token(kid, azp="app-two")), "legacy") as again:
        assert ok(await again.call_tool("run_python", {"code": "v", "session": handle}))["result"] == "alice"
    # ...another principal with the same handle does not.
    async with mcp_client(entra_bridge, bearer(keys.token(kid, oid="oid-bob"))) as bob:
        assert ok(await bob.call_tool("run_python", {"code": "v", "session": handle}))["status"] == "failed"


async def test_jwks_cache_refetches_on_rotation_but_not_for_every_unknown_key(
    key_server: tuple[KeyServer, str],
) -> None:
    keys, url = key_server
    async with httpx.AsyncClient() as http:
        cache = JwksCache(url, http, min_refetch_s=0.3)
        first = next(iter(keys.keys))
        await cache.key(first)
        hits = keys.hits
        await cache.key(first)
        assert keys.hits == hits  # cached
        rotated = keys.add_key()
        time.sleep(0.35)
        await cache.key(rotated)  # an unknown kid after the refetch interval: fetched and found
        assert keys.hits == hits + 1
        for _ in range(5):
            with pytest.raises(Rejected):
                await cache.key("forged-kid")
        assert keys.hits == hits + 1  # refetch rate-limited
        time.sleep(0.35)
        with pytest.raises(Rejected):
            await cache.key("forged-kid")
        assert keys.hits == hits + 2


async def test_unreachable_jwks_makes_the_verifier_unavailable(key_server: tuple[KeyServer, str]) -> None:
    keys, _ = key_server
    kid = next(iter(keys.keys))
    config = EntraConfig([ISSUER], [AUDIENCE], f"http://127.0.0.1:{free_port()}/keys", ISSUER)
    async with httpx.AsyncClient() as http:
        with pytest.raises(VerifierUnavailable):
            await EntraVerifier(config, http).verify(keys.token(kid))
