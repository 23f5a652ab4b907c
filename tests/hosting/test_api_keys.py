"""Inbound API keys on /mcp: refusals carry the MCP authorization challenge, both headers work in
both protocol eras, the key's name is the caller, and a handle is worthless to another caller."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dynamic_sessions_mcp.config import InboundAuth
from dynamic_sessions_mcp.inbound_auth import AuthConfig, AuthConfigError
from tests.bridge.helpers import error, ok
from tests.conftest import bridge_settings
from tests.hosting.conftest import ALICE_KEY, BOB_KEY, INIT, MCP_HEADERS, mcp_client

pytestmark = pytest.mark.anyio
ERAS = ["auto", "legacy"]


def origin(url: str) -> str:
    return url.removesuffix("/mcp")


def challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    return response.headers["www-authenticate"]


def test_missing_key_is_refused_with_the_resource_metadata_pointer(api_key_bridge: str) -> None:
    response = httpx.post(api_key_bridge, json=INIT, headers=MCP_HEADERS)
    metadata = f'resource_metadata="{origin(api_key_bridge)}/.well-known/oauth-protected-resource/mcp"'
    assert challenge(response) == f"Bearer {metadata}"
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-key-at-all-0000000"},
        {"X-API-Key": "not-a-key-at-all-0000000"},
        {"Authorization": f"Bearer {ALICE_KEY}x"},
        {"Authorization": f"Basic {ALICE_KEY}"},  # the right key in the wrong scheme is no key
    ],
)
def test_wrong_key_is_refused(api_key_bridge: str, headers: dict[str, str]) -> None:
    response = httpx.post(api_key_bridge, json=INIT, headers={**MCP_HEADERS, **headers})
    header = challenge(response)
    assert "resource_metadata=" in header
    if "Basic" not in headers.get("Authorization", ""):
        assert 'error="invalid_token"' in header


def test_other_methods_on_mcp_need_the_key_too(api_key_bridge: str) -> None:
    assert httpx.get(api_key_bridge, headers={"accept": "text/event-stream"}).status_code == 401
    assert httpx.delete(api_key_bridge, headers={"mcp-session-id": "x"}).status_code == 401


def test_protected_resource_metadata(api_key_bridge: str) -> None:
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        document = httpx.get(origin(api_key_bridge) + path).json()
        assert document == {
            "resource": api_key_bridge,
            "bearer_methods_supported": ["header"],
            "resource_name": "dynamic-sessions-mcp",
        }


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
async def test_right_key_works_in_either_header(api_key_bridge: str, era: str, header: str) -> None:
    value = f"Bearer {ALICE_KEY}" if header == "Authorization" else ALICE_KEY
    async with mcp_client(api_key_bridge, {header: value}, era) as client:
        first = ok(await client.call_tool("run_python", {"code": "n = 20\nn + 1"}))
        second = ok(await client.call_tool("run_python", {"code": "n * 2", "session": first["session"]}))
        assert (first["result"], second["result"]) == (21, 40)


async def test_the_caller_binds_the_sandbox(api_key_bridge: str) -> None:
    alice_headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    async with (
        mcp_client(api_key_bridge, alice_headers) as alice,
        mcp_client(api_key_bridge, {"X-API-Key": BOB_KEY}) as bob,
    ):
        handle = ok(await alice.call_tool("run_python", {"code": "secret_of_alice = 7"}))["session"]
        # Bob replays Alice's handle: a valid handle, but derived with Bob as the caller.
        replay = ok(await bob.call_tool("run_python", {"code": "secret_of_alice", "session": handle}))
        assert replay["status"] == "failed" and "NameError" in replay["stderr"] + str(replay.get("error"))
        assert (
            ok(await alice.call_tool("run_python", {"code": "secret_of_alice", "session": handle}))["result"]
            == 7
        )
        assert "unknown session handle" in error(
            await bob.call_tool("run_python", {"code": "1", "session": "h-madeupmadeupmadeupx"})
        )


async def test_a_2025_session_belongs_to_the_key_that_opened_it(api_key_bridge: str) -> None:
    opened = httpx.post(api_key_bridge, json=INIT, headers={**MCP_HEADERS, "X-API-Key": ALICE_KEY})
    session_id = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    hijack = {
        **MCP_HEADERS,
        "X-API-Key": BOB_KEY,
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-06-18",
    }
    assert httpx.post(api_key_bridge, json=listing, headers=hijack).status_code == 404


def test_key_configuration_is_checked(tmp_path: Path, python_pool: object) -> None:
    def config(**values: object) -> AuthConfig:
        return AuthConfig.from_settings(bridge_settings(python_pool, auth=InboundAuth.API_KEY, **values))  # type: ignore[arg-type]

    with pytest.raises(AuthConfigError, match="needs keys"):
        config()
    with pytest.raises(AuthConfigError, match="at least 16"):
        config(api_keys="alice:short")
    with pytest.raises(AuthConfigError, match="appears twice"):
        config(api_keys=f"a:{ALICE_KEY},a:{BOB_KEY}")
    with pytest.raises(AuthConfigError, match="share one key"):
        config(api_keys=f"a:{ALICE_KEY},b:{ALICE_KEY}")
    with pytest.raises(AuthConfigError, match="name:key"):
        config(api_keys=ALICE_KEY)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# callers\nci:{BOB_KEY}\n\nfoundry-agent:{ALICE_KEY}\n")
    assert dict(config(api_keys_file=keys_file).api_keys) == {"ci": BOB_KEY, "foundry-agent": ALICE_KEY}
    with pytest.raises(AuthConfigError, match="cannot be read"):
        config(api_keys_file=tmp_path / "missing")
    assert ALICE_KEY not in repr(config(api_keys=f"alice:{ALICE_KEY}"))
