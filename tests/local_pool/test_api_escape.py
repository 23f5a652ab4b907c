"""Escape attempts through the API: sandboxed code must not reach the host, and what it plants in
/mnt/data (symlinks, FIFOs) must not trick the host-side file API."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.local_pool.conftest import LEGACY, Api


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "host-secret.txt"
    secret.write_text(f"HOST-SECRET-{uuid.uuid4()}")
    return secret


def test_code_cannot_read_host_files(py: Api, ident: str, host_secret: Path) -> None:
    body = py.run(ident, f"open({str(host_secret)!r}).read()")
    assert body["status"] == "Failed" and "FileNotFoundError" in body["result"]["stderr"]
    assert host_secret.read_text() not in str(body)
    # Only the sandbox's own synthetic passwd is visible, and no shadow file at all.
    passwd = py.run(ident, "open('/etc/passwd').read()")["result"]["executionResult"]
    assert "root:" not in passwd
    assert py.run(ident, "import os; os.path.exists('/etc/shadow')")["result"]["executionResult"] is False


def test_code_has_no_network(py: Api, ident: str) -> None:
    pool_port = urlparse(py.url).port
    code = (
        "import socket\n"
        "def attempt(addr):\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=3).close()\n"
        "        return 'connected'\n"
        "    except OSError as exc:\n"
        "        return type(exc).__name__\n"
        f"[attempt(('127.0.0.1', {pool_port})), attempt(('1.1.1.1', 443)), attempt(('10.0.0.1', 80))]"
    )
    results = py.run(ident, code)["result"]["executionResult"]
    assert "connected" not in results, results


def test_code_cannot_write_outside_mnt_data(py: Api, ident: str) -> None:
    marker = f"escape-{uuid.uuid4().hex}"
    code = (
        "import os\n"
        "written = []\n"
        f"paths = ['/usr/{marker}', '/etc/{marker}', '/mnt/data/../{marker}', '/{marker}', '/tmp/{marker}']\n"
        "for path in paths:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        written.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "written"
    )
    py.run(ident, code)
    # Whatever the sandbox could write landed in its own private tmpfs, never on the host.
    for host_dir in (Path("/usr"), Path("/etc"), Path("/"), Path("/tmp"), Path("/mnt")):
        assert not (host_dir / marker).exists()
    assert not list(py.data_dir.rglob(marker))


def test_planted_symlink_is_not_followed_by_downloads(py: Api, ident: str, host_secret: Path) -> None:
    py.run(ident, f"import os\nos.symlink({str(host_secret)!r}, 'x')\nos.symlink('/etc/passwd', 'y')")
    secret = host_secret.read_text()
    for name in ("x", "y"):
        for r in (
            py.call("GET", f"files/{name}/content", ident),
            py.call("GET", f"files/content/{name}", ident, version=LEGACY),
            py.call("GET", f"files/{name}", ident),
        ):
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "UnsupportedFileType"
            assert secret not in r.text and "root:" not in r.text
    assert py.call("GET", "files", ident).json()["value"] == []  # symlinks are not listed


def test_planted_directory_symlink_is_not_followed(py: Api, ident: str, tmp_path: Path) -> None:
    py.run(ident, f"import os\nos.symlink({str(tmp_path)!r}, 'd')\nos.symlink('/etc', 'e')")
    for path in ("d", "e"):
        upload = py.call("POST", "files", ident, params={"path": path}, files={"file": ("planted.txt", b"x")})
        assert upload.status_code == 400, upload.text
        assert py.call("GET", "files", ident, params={"path": path}).status_code == 400
    assert not (tmp_path / "planted.txt").exists()
    assert py.call("GET", "files/passwd/content", ident, params={"path": "e"}).status_code == 400
    # Deleting the link removes the link, never what it points to.
    (tmp_path / "keep.txt").write_text("keep")
    assert py.call("DELETE", "files/d", ident).status_code == 204
    assert (tmp_path / "keep.txt").read_text() == "keep"


def test_planted_fifo_is_refused_quickly(py: Api, ident: str) -> None:
    py.run(ident, "import os\nos.mkfifo('pipe')")
    started = time.monotonic()
    r = py.call("GET", "files/pipe/content", ident)
    assert r.status_code == 400 and r.json()["error"]["code"] == "UnsupportedFileType"
    legacy = py.call("GET", "files/content/pipe", ident, version=LEGACY)
    assert legacy.status_code == 400
    assert time.monotonic() - started < 2
