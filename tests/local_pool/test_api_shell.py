"""Shell pools: a fresh sandboxed bash per command, exit code as `status`, state only in files."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.local_pool.conftest import LEGACY, V2025_02, Api


def test_shell_command_reports_exit_code_and_streams(sh: Api, sh_ident: str) -> None:
    r = sh.execute(sh_ident, shellCommand="echo out; echo err >&2; exit 3", codeInputType="Inline")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "3"
    assert body["result"]["stdout"] == "out\n" and body["result"]["stderr"] == "err\n"
    assert "executionResult" not in body["result"]
    assert r.headers["X-Ms-Session-Guid"] == sh.session(sh_ident).json()["etag"]


def test_exec_command_and_args_with_stdin(sh: Api, sh_ident: str) -> None:
    body = sh.execute(
        sh_ident, execCommandAndArgs=["/bin/sh", "-c", "read LINE; echo got:$LINE"], stdin="abc\n"
    )
    assert body.json()["status"] == "0" and body.json()["result"]["stdout"] == "got:abc\n"
    spec_example = 'read LINE;first_input="$LINE";echo first_input:$first_input'
    r = sh.execute(
        sh_ident, shellCommand=spec_example, stdin="testinputlineline", outputStreamsMaxLength=4096
    )
    assert r.json()["result"]["stdout"] == "first_input:testinputlineline\n"


def test_state_lives_only_in_files(sh: Api, sh_ident: str) -> None:
    assert (
        sh.execute(sh_ident, shellCommand="export GONE=1; cd /tmp; echo kept > /mnt/data/f.txt").json()[
            "status"
        ]
        == "0"
    )
    body = sh.execute(sh_ident, shellCommand='echo "[$GONE]"; pwd; cat f.txt').json()
    assert body["result"]["stdout"] == "[]\n/mnt/data\nkept\n"
    assert sh.call("GET", "files/f.txt/content", sh_ident).content == b"kept\n"


def test_identifiers_are_isolated(sh: Api, sh_ident: str) -> None:
    other = f"{sh_ident}-other"
    try:
        sh.execute(sh_ident, shellCommand="echo mine > mine.txt")
        body = sh.execute(other, shellCommand="ls -A /mnt/data; cat mine.txt").json()
        assert body["result"]["stdout"] == "" and body["status"] != "0"
    finally:
        sh.end(other)


def test_timeout_kills_the_command(sh: Api, sh_ident: str) -> None:
    started = time.monotonic()
    body = sh.execute(sh_ident, shellCommand="sleep 60", timeoutInSeconds=1).json()
    assert time.monotonic() - started < 15
    assert body["status"] == "124" and body["error"]["code"] == "ExecutionTimedOut"


def test_langchain_style_bare_shell_command_on_2025_02(sh: Api, sh_ident: str) -> None:
    r = sh.execute(sh_ident, version=V2025_02, shellCommand="echo $((6*7))")
    assert r.status_code == 200 and r.json()["result"]["stdout"] == "42\n"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"code": "print(1)"}, "Shell pool"),
        ({"codeInputType": "Inline"}, "exactly one"),
        ({"shellCommand": "ls", "execCommandAndArgs": ["ls"]}, "exactly one"),
        ({"execCommandAndArgs": []}, "non-empty"),
        ({"execCommandAndArgs": ["ls", 3]}, "list of strings"),
        ({"shellCommand": "ls", "stdin": 5}, "'stdin'"),
    ],
)
def test_bad_shell_bodies_are_400(sh: Api, sh_ident: str, body: dict[str, Any], fragment: str) -> None:
    r = sh.execute(sh_ident, **body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_legacy_code_runs_as_bash(sh: Api, sh_ident: str) -> None:
    body = {
        "properties": {"codeInputType": "inline", "executionType": "synchronous", "code": "echo hi; false"}
    }
    props = sh.call("POST", "code/execute", sh_ident, version=LEGACY, json=body).json()["properties"]
    assert props["status"] == "Failure" and props["stdout"] == "hi\n" and props["result"] == ""


def test_files_and_metadata(sh: Api, sh_ident: str) -> None:
    r = sh.call(
        "POST", "files", sh_ident, params={"path": "/mnt/data"}, files={"file": ("in.txt", b"1\n2\n")}
    )
    assert r.status_code == 200
    assert sh.execute(sh_ident, shellCommand="wc -l < in.txt").json()["result"]["stdout"].strip() == "2"
    meta = sh.call("GET", "metadata").json()
    assert meta["poolType"] == "shell" and meta["isolation"] == "bubblewrap"
    assert [rt["name"] for rt in meta["runtimes"]] == ["bash", "python"]
    assert meta["jupyterKernel"] is None
