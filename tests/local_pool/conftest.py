"""Local pool API tests: one Python pool and one Shell pool per test session, over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamic_sessions_mcp.local_pool.config import LocalPoolConfig, LocalPoolType
from tests.support.local_pool import local_pool

TOKEN = "local-pool-api-test-token-5d2c"
LATEST = "2025-10-02-preview"
V2025_02 = "2025-02-02-preview"
V2024_10 = "2024-10-02-preview"
LEGACY = "2024-02-02-preview"
LEGACY_08 = "2024-08-02-preview"


def new_identifier() -> str:
    return f"t-{uuid.uuid4()}"


@dataclass(frozen=True)
class Api:
    """A client of one served pool; `data_dir` is where that pool keeps its session directories."""

    client: httpx.Client
    url: str
    data_dir: Path

    def call(
        self,
        method: str,
        path: str,
        identifier: str | None = None,
        *,
        version: str | None = LATEST,
        params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        query: dict[str, Any] = {}
        if version is not None:
            query["api-version"] = version
        if identifier is not None:
            query["identifier"] = identifier
        query.update(params or {})
        return self.client.request(method, path, params=query, **kwargs)

    def execute(self, identifier: str, version: str = LATEST, **body: Any) -> httpx.Response:
        return self.call("POST", "executions", identifier, version=version, json=body)

    def run(self, identifier: str, code: str, **body: Any) -> dict[str, Any]:
        """Execute Python synchronously; assert the HTTP call worked; return the resource."""
        r = self.execute(identifier, code=code, **body)
        assert r.status_code == 200, r.text
        resource: dict[str, Any] = r.json()
        return resource

    def session(self, identifier: str) -> httpx.Response:
        return self.call("GET", "session", identifier)

    def end(self, identifier: str) -> None:
        r = self.call("DELETE", "session", identifier)
        assert r.status_code in (204, 404), r.text


def _served(config: LocalPoolConfig) -> Iterator[Api]:
    assert config.data_dir is not None
    with (
        local_pool(config) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client,
    ):
        yield Api(client, url, config.data_dir)


def serve_pool(tmp: Path, **overrides: Any) -> Iterator[Api]:
    """Serve a pool with this test suite's token and data under `tmp` (for module-scoped pools)."""
    yield from _served(LocalPoolConfig(token=TOKEN, data_dir=tmp, **overrides))


@pytest.fixture(scope="session")
def py(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The shared Python pool (2 warm kernels)."""
    yield from serve_pool(tmp_path_factory.mktemp("py-pool"), warm_sessions=2, max_sessions=100)


@pytest.fixture(scope="session")
def sh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The shared Shell pool."""
    yield from serve_pool(tmp_path_factory.mktemp("sh-pool"), pool_type=LocalPoolType.SHELL, max_sessions=100)


@pytest.fixture
def ident(py: Api) -> Iterator[str]:
    """A fresh identifier on the Python pool; its session is deleted after the test."""
    identifier = new_identifier()
    yield identifier
    py.end(identifier)


@pytest.fixture
def sh_ident(sh: Api) -> Iterator[str]:
    identifier = new_identifier()
    yield identifier
    sh.end(identifier)
