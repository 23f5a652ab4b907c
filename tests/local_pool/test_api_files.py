"""Files on the current contract (`files`, `files/{name}`, `files/{name}/content`)."""

from __future__ import annotations

import pytest

from tests.local_pool.conftest import V2025_02, Api


def upload(api: Api, ident: str, name: str, data: bytes, **params: str) -> dict[str, object]:
    r = api.call(
        "POST", "files", ident, params=params, files={"file": (name, data, "application/octet-stream")}
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_upload_list_metadata_download_delete(py: Api, ident: str) -> None:
    resource = upload(py, ident, "data.csv", b"a,b\n1,2\n")
    assert resource["name"] == "data.csv" and resource["type"] == "File"
    assert resource["sizeInBytes"] == 8 and resource["contentType"] == "text/csv; charset=utf-8"
    assert str(resource["lastModifiedAt"]).endswith("Z")
    assert resource["directory"] == ""

    listed = py.call("GET", "files", ident).json()
    assert listed["nextLink"] is None
    assert [f["name"] for f in listed["value"]] == ["data.csv"]

    meta = py.call("GET", "files/data.csv", ident)
    assert meta.status_code == 200 and meta.json()["sizeInBytes"] == 8

    content = py.call("GET", "files/data.csv/content", ident)
    assert content.status_code == 200
    assert content.content == b"a,b\n1,2\n"
    assert content.headers["content-type"].startswith("text/csv")

    assert py.call("DELETE", "files/data.csv", ident).status_code == 204
    assert py.call("GET", "files/data.csv", ident).status_code == 404
    assert py.call("GET", "files", ident).json()["value"] == []


def test_code_sees_uploads_and_can_modify_them_and_its_files_download(py: Api, ident: str) -> None:
    upload(py, ident, "in.txt", b"from host\n")
    code = (
        "text = open('/mnt/data/in.txt').read()\n"
        "open('/mnt/data/in.txt', 'a').write('appended\\n')\n"
        "open('out.bin', 'wb').write(bytes(range(256)))\n"
        "text"
    )
    assert py.run(ident, code)["result"]["executionResult"] == "from host\n"
    assert py.call("GET", "files/in.txt/content", ident).content == b"from host\nappended\n"
    out = py.call("GET", "files/out.bin/content", ident)
    assert out.content == bytes(range(256))
    assert out.headers["content-type"] == "application/octet-stream"


def test_uploading_again_replaces_the_file(py: Api, ident: str) -> None:
    upload(py, ident, "f.txt", b"one")
    upload(py, ident, "f.txt", b"second")
    assert py.call("GET", "files/f.txt/content", ident).content == b"second"


@pytest.mark.parametrize("path", ["reports/2024", "/mnt/data/reports/2024"])
def test_nested_directories_via_path(py: Api, ident: str, path: str) -> None:
    resource = upload(py, ident, "q1.json", b"{}", path=path)
    assert resource["directory"] == "reports/2024"
    assert py.run(ident, "open('/mnt/data/reports/2024/q1.json').read()")["result"]["executionResult"] == "{}"
    # Folders the host created are the sandbox user's too.
    assert py.run(ident, "open('/mnt/data/reports/2024/new.txt', 'w').write('n')")["status"] == "Succeeded"

    top = py.call("GET", "files", ident).json()["value"]
    assert [(f["name"], f["type"], f["sizeInBytes"]) for f in top] == [("reports", "Directory", 4096)]
    inner = py.call("GET", "files", ident, params={"path": "reports/2024"}).json()["value"]
    assert [f["name"] for f in inner] == ["new.txt", "q1.json"]  # sorted by name
    assert py.call("GET", "files/q1.json/content", ident, params={"path": path}).content == b"{}"
    assert py.call("GET", "files/q1.json", ident).status_code == 404  # not at the top level

    deep = py.call("GET", "files", ident, params={"path": "/mnt/data", "recursive": "true"}).json()["value"]
    assert {(f["directory"], f["name"]) for f in deep} == {
        ("", "reports"),
        ("reports", "2024"),
        ("reports/2024", "new.txt"),
        ("reports/2024", "q1.json"),
    }

    assert py.call("DELETE", "files/reports", ident).status_code == 204  # a whole folder
    assert py.call("GET", "files", ident).json()["value"] == []


def test_path_as_a_form_field(py: Api, ident: str) -> None:
    r = py.call("POST", "files", ident, data={"path": "sub"}, files={"file": ("x.txt", b"x")})
    assert r.status_code == 200
    assert py.call("GET", "files/x.txt/content", ident, params={"path": "sub"}).content == b"x"


def test_directory_field_and_recursive_only_on_2025_10(py: Api, ident: str) -> None:
    upload(py, ident, "a.txt", b"a", path="d")
    old = py.call("GET", "files", ident, version=V2025_02, params={"recursive": "true"}).json()["value"]
    assert [f["name"] for f in old] == ["d"]  # recursive is ignored before 2025-10
    assert "directory" not in old[0]


def test_unknown_files_are_404(py: Api, ident: str) -> None:
    for method, path in [
        ("GET", "files/nope.txt"),
        ("GET", "files/nope.txt/content"),
        ("DELETE", "files/nope.txt"),
    ]:
        r = py.call(method, path, ident)
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "FileNotFound"
    assert py.call("GET", "files", ident, params={"path": "no/such/dir"}).status_code == 404


@pytest.mark.parametrize("path", ["..", "../x", "a/../../b", "/etc", "/mnt/database", "/mnt"])
def test_paths_outside_mnt_data_are_refused(py: Api, ident: str, path: str) -> None:
    r = py.call("POST", "files", ident, params={"path": path}, files={"file": ("evil.txt", b"evil")})
    assert r.status_code == 400, r.text
    assert py.call("GET", "files", ident, params={"path": path}).status_code == 400


@pytest.mark.parametrize("filename", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt", "."])
def test_upload_filenames_outside_mnt_data_are_refused(py: Api, ident: str, filename: str) -> None:
    r = py.call("POST", "files", ident, files={"file": (filename, b"evil")})
    assert r.status_code == 400, r.text
    assert not list(py.data_dir.rglob("evil.txt"))


def test_name_segment_cannot_smuggle_traversal(py: Api, ident: str) -> None:
    assert py.call("GET", "files/%2E%2E/content", ident).status_code == 400
    assert py.call("GET", "files/..%2Fetc%2Fpasswd/content", ident).status_code == 400


def test_multipart_errors_are_400(py: Api, ident: str) -> None:
    no_file = py.call("POST", "files", ident, data={"other": "x"}, files={"notfile": ("a.txt", b"a")})
    assert no_file.status_code == 400 and "named 'file'" in no_file.json()["error"]["message"]
    not_multipart = py.call("POST", "files", ident, content=b"raw", headers={"content-type": "text/plain"})
    assert not_multipart.status_code == 400
    truncated = py.call(
        "POST",
        "files",
        ident,
        content=b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert truncated.status_code == 400
    assert py.call("GET", "files", ident).json()["value"] == []  # nothing half-written
