"""Python pool, current contract (`executions`, session management, metadata)."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.local_pool.conftest import LATEST, V2024_10, V2025_02, Api, new_identifier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_execute_returns_the_last_expression_and_streams(py: Api, ident: str) -> None:
    r = py.execute(ident, codeInputType="Inline", executionType="Synchronous", code="print('hi')\n6*7")
    assert r.status_code == 200
    body = r.json()
    assert body["identifier"] == ident
    assert body["executionType"] == "Synchronous"
    assert body["status"] == "Succeeded"
    assert body["result"]["stdout"] == "hi\n"
    assert body["result"]["stderr"] == ""
    assert body["result"]["executionResult"] == 42
    assert isinstance(body["result"]["executionTimeInMilliseconds"], int)
    # Headers: the execution id, where to find it again, and the sandbox that ran it.
    assert r.headers["operation-id"] == body["id"]
    location = r.headers["Operation-Location"]
    assert location.startswith(f"executions/{body['id']}?")
    assert "api-version=2025-10-02-preview" in location and f"identifier={ident}" in location
    assert r.headers["X-Ms-Session-Guid"] == py.session(ident).json()["etag"]


def test_statement_gives_empty_result_and_enums_are_case_insensitive(py: Api, ident: str) -> None:
    body = py.run(ident, "x = 1", codeInputType="inline", executionType="synchronous")
    assert body["status"] == "Succeeded"
    assert body["result"]["executionResult"] == ""


def test_state_persists_across_executions(py: Api, ident: str) -> None:
    py.run(ident, "counter = 100")
    py.run(ident, "counter += 50")
    assert py.run(ident, "counter")["result"]["executionResult"] == 150


def test_two_identifiers_are_isolated(py: Api, ident: str) -> None:
    other = new_identifier()
    try:
        py.run(ident, "secret = 'mine'\nopen('/mnt/data/private.txt', 'w').write('mine')")
        body = py.run(other, "secret")
        assert body["status"] == "Failed"
        assert "NameError" in body["result"]["stderr"]
        body = py.run(other, "import os; os.listdir('/mnt/data')")
        assert body["result"]["executionResult"] == []
        assert py.call("GET", "files/private.txt/content", other).status_code == 404
        assert py.session(ident).json()["etag"] != py.session(other).json()["etag"]
    finally:
        py.end(other)


def test_exception_fails_with_traceback(py: Api, ident: str) -> None:
    body = py.run(ident, "1/0")
    assert body["status"] == "Failed"
    assert "ZeroDivisionError" in body["result"]["stderr"]
    assert "\x1b[" not in body["result"]["stderr"]  # no ANSI colours


def test_base64_code_input(py: Api, ident: str) -> None:
    code = base64.b64encode(b"'b64' + 'ok'").decode()
    assert py.run(ident, code, codeInputType="InlineBase64")["result"]["executionResult"] == "b64ok"


def test_matplotlib_figure_comes_back_as_an_image(py: Api, ident: str) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    result = py.run(ident, code, timeoutInSeconds=120)["result"]
    image = result["executionResult"]
    assert image["type"] == "image" and image["format"] == "png"
    assert base64.b64decode(image["base64_data"]).startswith(PNG_MAGIC)


def test_operation_id_is_echoed_and_execution_can_be_read_back(py: Api, ident: str) -> None:
    r = py.call("POST", "executions", ident, json={"code": "2+2"}, headers={"operation-id": "op-123"})
    assert r.status_code == 200
    assert r.json()["id"] == "op-123" and r.headers["operation-id"] == "op-123"
    again = py.call("GET", "executions/op-123", ident)
    assert again.status_code == 200
    assert again.json()["result"]["executionResult"] == 4
    missing = py.call("GET", "executions/no-such-op", ident)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == missing.headers["x-ms-error-code"]


def test_kept_executions_are_bounded_by_their_output(py: Api, ident: str) -> None:
    """GET executions/{id} keeps old runs, but not megabytes of output from each (pool memory)."""
    mib = 1 << 20
    body = {"code": f"print('x' * {3 * mib - 1})", "outputStreamsMaxLength": 4 * mib}
    for n in range(1, 5):
        r = py.call("POST", "executions", ident, json=body, headers={"operation-id": f"big-{n}"})
        assert r.status_code == 200 and len(r.json()["result"]["stdout"]) == 3 * mib
    kept = [py.call("GET", f"executions/big-{n}", ident).status_code for n in range(1, 5)]
    assert kept == [404, 404, 200, 200]  # 8 MiB of output kept: the two newest runs
    assert len(py.call("GET", "executions/big-4", ident).json()["result"]["stdout"]) == 3 * mib


def test_asynchronous_execution_runs_in_the_background(py: Api, ident: str) -> None:
    r = py.execute(ident, executionType="Asynchronous", code="import time\ntime.sleep(1)\nprint('done')\n7")
    assert r.status_code == 200
    started = r.json()
    assert started["status"] == "Running" and started["executionType"] == "Asynchronous"
    location = r.headers["Operation-Location"]
    deadline = time.monotonic() + 30
    while True:
        polled = py.client.get(location)  # the relative Operation-Location works as given
        assert polled.status_code == 200
        if polled.json()["status"] != "Running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    done = polled.json()
    assert done["id"] == started["id"]
    assert done["status"] == "Succeeded"
    assert done["result"]["stdout"] == "done\n" and done["result"]["executionResult"] == 7


def test_ending_a_session_mid_run_leaves_the_pool_responsive(py: Api, ident: str) -> None:
    """Ending a session whose code is still running stops the run; the pool answers meanwhile."""
    r = py.execute(ident, executionType="Asynchronous", code="while True:\n    pass", timeoutInSeconds=60)
    assert r.status_code == 200
    time.sleep(0.5)  # the loop is running in the kernel
    assert py.call("DELETE", "session", ident).status_code in (200, 204)
    slowest = 0.0
    for _ in range(20):
        started = time.monotonic()
        assert py.client.get("metadata", params={"api-version": LATEST}).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    assert slowest < 1.0, slowest
    assert py.session(ident).status_code == 404


def test_runaway_loop_is_killed_by_its_timeout_and_the_session_is_reset(py: Api, ident: str) -> None:
    py.run(ident, "kept = 1")
    etag = py.session(ident).json()["etag"]
    started = time.monotonic()
    body = py.run(ident, "while True:\n    pass", timeoutInSeconds=1)
    assert time.monotonic() - started < 15
    assert body["status"] == "Failed"
    assert body["error"]["code"] == "ExecutionTimedOut"
    assert "timeout" in body["result"]["stderr"]
    # The next call gets a fresh session: new sandbox, no state.
    after = py.run(ident, "kept")
    assert after["status"] == "Failed" and "NameError" in after["result"]["stderr"]
    assert py.session(ident).json()["etag"] != etag


def test_output_streams_are_truncated_on_2025_10(py: Api, ident: str) -> None:
    code = "print('x' * 10000)"
    assert len(py.run(ident, code)["result"]["stdout"]) == 4096  # the default
    assert len(py.run(ident, code, outputStreamsMaxLength=100)["result"]["stdout"]) == 100
    full = py.execute(ident, version=V2025_02, code=code).json()
    assert len(full["result"]["stdout"]) == 10001


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"shellCommand": "ls"}, "Python pool"),
        ({"code": "1", "execCommandAndArgs": ["ls"]}, "Python pool"),
        ({"codeInputType": "Inline"}, "'code' is required"),
        ({"code": 1}, "'code' must be"),
        ({"code": "1", "timeoutInSeconds": "5"}, "timeoutInSeconds"),
        ({"code": "1", "timeoutInSeconds": 10_000}, "at most 220"),
        ({"code": "1", "executionType": "Sometimes"}, "executionType"),
        ({"code": "1", "outputStreamsMaxLength": -1}, "outputStreamsMaxLength"),
        ({"code": "!!!", "codeInputType": "InlineBase64"}, "base64"),
    ],
)
def test_bad_execution_bodies_are_400(py: Api, ident: str, body: dict[str, Any], fragment: str) -> None:
    r = py.execute(ident, **body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]
    assert r.headers["x-ms-error-code"] == r.json()["error"]["code"]


def test_session_resource_and_list(py: Api, ident: str) -> None:
    assert py.session(ident).status_code == 404  # no call yet: no session
    py.run(ident, "1")
    session = py.session(ident).json()
    assert session["identifier"] == ident
    assert set(session) == {"identifier", "createdAt", "lastAccessedAt", "expireAt", "etag"}
    assert session["createdAt"].endswith("Z") and session["expireAt"] > session["lastAccessedAt"]
    listed = py.call("GET", "listSessions").json()["sessions"]
    assert ident in [s["identifier"] for s in listed]


def test_delete_session_then_get_is_404_and_next_call_is_fresh(py: Api, ident: str) -> None:
    py.run(ident, "v = 5")
    etag = py.session(ident).json()["etag"]
    assert py.call("DELETE", "session", ident).status_code == 204
    assert py.session(ident).status_code == 404
    assert py.call("DELETE", "session", ident).status_code == 404
    assert ident not in [s["identifier"] for s in py.call("GET", "listSessions").json()["sessions"]]
    assert "NameError" in py.run(ident, "v")["result"]["stderr"]
    assert py.session(ident).json()["etag"] != etag


def test_stop_session_on_2025_10(py: Api, ident: str) -> None:
    py.run(ident, "1")
    r = py.call("POST", ".management/stopSession", ident)
    assert r.status_code == 200
    assert r.json() == f"Session {ident} in session pool local stopped."
    assert py.session(ident).status_code == 404
    assert py.call("POST", ".management/stopSession", ident, version=V2025_02).status_code == 404


def test_metadata_reports_the_sandbox_runtime(py: Api) -> None:
    r = py.call("GET", "metadata")
    assert r.status_code == 200
    meta = r.json()
    assert meta["poolType"] == "python" and meta["isolation"] == "bubblewrap"
    assert meta["runtimes"][0]["name"] == "python"
    names = {p["name"].lower() for p in meta["preInstalledPackages"]}
    assert {"ipykernel", "numpy", "pandas", "matplotlib"} <= names
    assert meta["jupyterKernel"]["name"] == "python3" and meta["jupyterKernel"]["version"]
    assert meta["createdAt"].endswith("Z")


def test_session_routes_do_not_exist_before_2025_02(py: Api, ident: str) -> None:
    for path in ("session", "listSessions", "metadata"):
        r = py.call("GET", path, ident, version=V2024_10)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "NotFound"


def test_2024_10_executes_too(py: Api, ident: str) -> None:
    r = py.execute(ident, version=V2024_10, code="'old'")
    assert r.status_code == 200 and r.json()["result"]["executionResult"] == "old"
    assert py.execute(ident, version=LATEST, code="1").status_code == 200


def test_warm_pool_refills_after_a_hand_out(py: Api, ident: str) -> None:
    py.run(ident, "1")  # takes a warm kernel
    deadline = time.monotonic() + 60
    while py.call("GET", "metadata").json()["readySessions"] < 2:
        assert time.monotonic() < deadline, "the warm pool was not refilled"
        time.sleep(0.1)


def test_a_kernel_that_dies_resets_the_session(py: Api, ident: str) -> None:
    py.run(ident, "x = 1")
    etag = py.session(ident).json()["etag"]
    died = py.run(ident, "import os\nos.kill(os.getpid(), 9)")
    assert died["status"] == "Failed" and died["error"]["code"] == "SessionTerminated"
    assert "NameError" in py.run(ident, "x")["result"]["stderr"]
    second = py.session(ident).json()["etag"]
    assert second != etag
    # Dying while idle (between calls): the next call quietly gets a fresh session.
    py.run(ident, "import os, threading\nthreading.Timer(0.3, os.kill, (os.getpid(), 9)).start()\ny = 2")
    time.sleep(2.5)
    after = py.run(ident, "'y' in globals()")
    assert after["status"] == "Succeeded" and after["result"]["executionResult"] is False
    assert py.session(ident).json()["etag"] not in (etag, second)
