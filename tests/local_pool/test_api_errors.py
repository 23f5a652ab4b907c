"""Errors: auth, api-version, identifier, unknown routes, capacity (404) and upload size (413)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dynamic_sessions_mcp.local_pool.config import LocalPoolType
from tests.local_pool.conftest import LATEST, LEGACY, TOKEN, Api, new_identifier, serve_pool


def assert_azure_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    assert r.headers["x-ms-error-code"] == error["code"]
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer wrong-token"},
    ],
)
def test_requests_without_the_right_bearer_are_401(sh: Api, headers: dict[str, str]) -> None:
    r = httpx.post(
        f"{sh.url}/executions",
        params={"api-version": LATEST, "identifier": new_identifier()},
        json={"shellCommand": "true"},
        headers=headers,
    )
    assert_azure_error(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{sh.url}/metadata", params={"api-version": LATEST}, headers=headers).status_code == 401


def test_the_right_bearer_is_accepted(sh: Api) -> None:
    r = httpx.get(
        f"{sh.url}/metadata", params={"api-version": LATEST}, headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert r.status_code == 200


def test_api_version_is_required_and_must_be_known(sh: Api, sh_ident: str) -> None:
    assert_azure_error(sh.call("GET", "files", sh_ident, version=None), 400, "MissingApiVersionParameter")
    assert_azure_error(sh.call("GET", "files", sh_ident, version="2023-01-01"), 400, "UnsupportedApiVersion")


@pytest.mark.parametrize("identifier", [None, "", "abc", "x" * 129, "has space", "back\\slash", "ünï"])
def test_identifier_is_required_and_validated(sh: Api, identifier: str | None) -> None:
    for method, path in [("GET", "files"), ("POST", "executions"), ("GET", "session")]:
        r = sh.call(method, path, identifier, json={"shellCommand": "true"})
        assert_azure_error(r, 400, "InvalidSessionIdentifier")


def test_identifier_may_use_documented_punctuation(sh: Api) -> None:
    identifier = "a|b-c&d^e%f$g#h(i)j{k}l[m];n<o>"
    try:
        r = sh.execute(identifier, shellCommand="echo ok")
        assert r.status_code == 200 and r.json()["identifier"] == identifier
        assert sh.session(identifier).status_code == 200
    finally:
        sh.end(identifier)


def test_invalid_json_is_400(sh: Api, sh_ident: str) -> None:
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = sh.call(
            "POST", "executions", sh_ident, content=content, headers={"content-type": "application/json"}
        )
        assert_azure_error(r, 400)


def test_unknown_routes_and_methods(sh: Api, sh_ident: str) -> None:
    assert_azure_error(sh.call("GET", "nope", sh_ident), 404, "NotFound")
    assert_azure_error(sh.call("GET", "", sh_ident), 404, "NotFound")
    assert_azure_error(sh.call("PUT", "executions", sh_ident), 405, "MethodNotAllowed")
    # stopSession only exists on 2025-10-02-preview
    assert_azure_error(sh.call("POST", ".management/stopSession", sh_ident, version=LEGACY), 404)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A Shell pool with one session slot and a 1000-byte upload limit."""
    yield from serve_pool(
        tmp_path_factory.mktemp("tiny-pool"),
        pool_type=LocalPoolType.SHELL,
        max_sessions=1,
        max_upload_bytes=1000,
    )


def test_pool_at_capacity_is_404_until_a_session_ends(tiny: Api) -> None:
    first, second = new_identifier(), new_identifier()
    try:
        assert tiny.execute(first, shellCommand="true").status_code == 200
        refused = tiny.execute(second, shellCommand="true")
        assert_azure_error(refused, 404, "SessionPoolAtCapacity")
        assert "capacity" in refused.json()["error"]["message"]
        assert_azure_error(tiny.call("GET", "files", second), 404)
        assert tiny.execute(first, shellCommand="true").status_code == 200  # the live one still works
        tiny.end(first)
        assert tiny.execute(second, shellCommand="true").status_code == 200
    finally:
        tiny.end(first)
        tiny.end(second)


def test_upload_over_the_limit_is_413(tiny: Api) -> None:
    ident = new_identifier()
    try:
        ok = tiny.call("POST", "files", ident, files={"file": ("ok.bin", b"x" * 1000)})
        assert ok.status_code == 200
        # Refused on Content-Length, before the body is read.
        big = tiny.call("POST", "files", ident, files={"file": ("big.bin", b"x" * 200_000)})
        assert_azure_error(big, 413, "FileTooLarge")
        # Refused while streaming: no Content-Length, and just over the limit.
        body = (
            b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="chunked.bin"\r\n\r\n'
            + b"y" * 1001
            + b"\r\n--bnd--\r\n"
        )

        def chunks() -> Iterator[bytes]:
            yield from (body[i : i + 100] for i in range(0, len(body), 100))

        streamed = tiny.call(
            "POST",
            "files",
            ident,
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=bnd"},
        )
        assert_azure_error(streamed, 413, "FileTooLarge")
        names = [f["name"] for f in tiny.call("GET", "files", ident).json()["value"]]
        assert names == ["ok.bin"]
        assert not list(tiny.data_dir.rglob("up-*"))  # nothing left in staging
    finally:
        tiny.end(ident)
