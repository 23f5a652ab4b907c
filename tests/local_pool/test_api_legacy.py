"""The legacy contract (2024-02-02-preview, 2024-08-02-preview): `code/execute` and `files/...`."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.local_pool.conftest import LATEST, LEGACY, LEGACY_08, Api

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def legacy_run(api: Api, ident: str, code: str, version: str = LEGACY, **props: Any) -> dict[str, Any]:
    body = {"properties": {"codeInputType": "inline", "executionType": "synchronous", "code": code, **props}}
    r = api.call("POST", "code/execute", ident, version=version, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["X-Ms-Session-Guid"]
    result: dict[str, Any] = r.json()
    assert result["$id"] == "1" and result["properties"]["$id"] == "2"
    properties: dict[str, Any] = result["properties"]
    return properties


@pytest.mark.parametrize("version", [LEGACY, LEGACY_08])
def test_execute_shape_and_state(py: Api, ident: str, version: str) -> None:
    props = legacy_run(py, ident, "print('hello world')\nvalue = 1 + 1\nvalue", version)
    assert props["status"] == "Success"
    assert props["stdout"] == "hello world\n" and props["stderr"] == ""
    assert props["result"] == 2
    assert isinstance(props["executionTimeInMilliseconds"], int)
    assert legacy_run(py, ident, "value * 10", version)["result"] == 20


def test_no_value_is_empty_string_and_errors_are_failure(py: Api, ident: str) -> None:
    assert legacy_run(py, ident, "x = 3")["result"] == ""
    props = legacy_run(py, ident, "raise ValueError('bad')")
    assert props["status"] == "Failure"
    assert "ValueError: bad" in props["stderr"]


def test_extra_fields_and_odd_casing_are_accepted(py: Api, ident: str) -> None:
    props = legacy_run(
        py,
        ident,
        "'ok'",
        executionType="Synchronous",
        codeInputType="Inline",
        identifier="ignored",
        timeoutInSeconds=100,
    )
    assert props["result"] == "ok"


def test_figure_is_an_image_result(py: Api, ident: str) -> None:
    code = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.show()"
    result = legacy_run(py, ident, code, timeoutInSeconds=120)["result"]
    assert result["type"] == "image" and result["format"] == "png"
    assert base64.b64decode(result["base64_data"]).startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "body",
    [
        {"code": "1"},  # no properties envelope
        {"properties": {"codeInputType": "inline"}},
        {"properties": {"code": "1", "executionType": "asynchronous"}},
        {"properties": {"code": ["1"]}},
    ],
)
def test_bad_bodies_are_400(py: Api, ident: str, body: dict[str, Any]) -> None:
    r = py.call("POST", "code/execute", ident, version=LEGACY, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == r.headers["x-ms-error-code"]


@pytest.mark.parametrize("filename", ["notes.txt", "/mnt/data/notes.txt"])
def test_upload_download_list(py: Api, ident: str, filename: str) -> None:
    r = py.call(
        "POST", "files/upload", ident, version=LEGACY, files={"file": (filename, b"sixteen bytes!!\n")}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["$id"] == "1"
    props = body["value"][0]["properties"]
    assert props["filename"] == "notes.txt" and props["size"] == 16
    assert props["lastModifiedTime"].endswith("Z")

    assert legacy_run(py, ident, "open('/mnt/data/notes.txt').read()")["result"] == "sixteen bytes!!\n"

    content = py.call("GET", "files/content/notes.txt", ident, version=LEGACY)
    assert content.status_code == 200 and content.content == b"sixteen bytes!!\n"
    assert content.headers["content-type"].startswith("text/plain")

    listed = py.call("GET", "files", ident, version=LEGACY).json()
    assert [v["properties"]["filename"] for v in listed["value"]] == ["notes.txt"]


def test_subdirectories_and_top_level_listing(py: Api, ident: str) -> None:
    r = py.call("POST", "files/upload", ident, version=LEGACY, files={"file": ("/mnt/data/out/r.txt", b"r")})
    assert r.status_code == 200 and r.json()["value"][0]["properties"]["filename"] == "out/r.txt"
    assert py.call("GET", "files/content/out/r.txt", ident, version=LEGACY).content == b"r"
    legacy_run(py, ident, "open('top.txt', 'w').write('t')")
    listed = py.call("GET", "files", ident, version=LEGACY).json()["value"]
    assert [v["properties"]["filename"] for v in listed] == ["top.txt"]  # files only, top level


def test_legacy_download_refuses_traversal_and_unknown(py: Api, ident: str) -> None:
    assert py.call("GET", "files/content/%2E%2E/%2E%2E/etc/passwd", ident, version=LEGACY).status_code == 400
    assert py.call("GET", "files/content/missing.txt", ident, version=LEGACY).status_code == 404


def test_routes_are_gated_by_api_version(py: Api, ident: str) -> None:
    # Current-contract routes do not exist on legacy versions, and vice versa.
    assert py.execute(ident, version=LEGACY, code="1").status_code == 404
    assert py.call("GET", "files/x.txt/content", ident, version=LEGACY).status_code == 404
    body = {"properties": {"code": "1"}}
    assert py.call("POST", "code/execute", ident, version=LATEST, json=body).status_code == 404
    # files/{name} exists on the current contract, for GET and DELETE only
    upload = py.call("POST", "files/upload", ident, version=LATEST, files={"file": ("a", b"a")})
    assert upload.status_code == 405
    assert py.call("GET", "session", ident, version=LEGACY).status_code == 404
