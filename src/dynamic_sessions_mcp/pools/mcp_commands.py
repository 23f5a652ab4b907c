"""What the MCP-endpoint backend runs inside an environment, and how it reads the answers.

The endpoint's run tools return only stdout and stderr. So every execution ends by printing a
report line after a random marker: the exit code of a shell command; for Python, whether the code
raised, the value of its last expression (as JSON, or its repr) and the images it displayed or left
open. File operations are shell commands too, with fixed answer tokens (`dsmcp-ok`, ...) and
base64 for bytes. Every command starts in /mnt/data when it exists (else in the working directory),
and names files by relative paths, `./`-prefixed and shell-quoted.
"""

from __future__ import annotations

import json
import math
import secrets
import shlex
from dataclasses import dataclass, field
from typing import Any

OK = "dsmcp-ok"
MISSING = "dsmcp-missing"
NOT_A_FILE = "dsmcp-notfile"
MISMATCH = "dsmcp-mismatch"
_IN_DATA = "cd /mnt/data 2>/dev/null; "
TIMEOUT_EXIT_CODE = 124  # what coreutils `timeout` exits with when it killed the command


def new_marker() -> str:
    return f"__dsmcp_{secrets.token_hex(8)}__:"


def quoted(path: str) -> str:
    """A relative pool path (already confined by paths.to_pool_path) as a shell word."""
    return shlex.quote("./" + path if path else ".")


# ---- executions ---------------------------------------------------------------------------

# Runs in its own namespace; the user's code runs in the caller's globals (the kernel's namespace
# on Python pools, so variables persist) and nothing of ours is left behind there. `conv` gives the
# last value the JSON form the local pool's kernel gives `executionResult` (the bridge may not
# import local_pool), so a value looks the same over either backend.
_PYTHON_RUNNER = r"""
import ast, base64, builtins, io, json, linecache, math, signal, sys, threading, traceback
user, src, marker, limit = __dsmcp_args

def conv(o, depth=0):
    if depth > 100:
        raise ValueError("too deep")
    if o is None or type(o) in (bool, str, int):
        return o
    if type(o) is float:
        return o if math.isfinite(o) else repr(o)
    if type(o) is list:
        return [conv(x, depth + 1) for x in o]
    if type(o) is dict and all(type(k) is str for k in o):
        return {k: conv(v, depth + 1) for k, v in o.items()}
    raise TypeError("not JSON")

def value_of(v):
    try:
        return conv(v)
    except Exception:
        try:
            return repr(v)
        except Exception as exc:
            return f"<unprintable {type(v).__name__}: {exc}>"

report = {"ok": True}
images = []
shell = getattr(builtins, "get_ipython", lambda: None)()
pub = getattr(shell, "display_pub", None)
if pub is not None:
    forward = pub.publish

    def publish(data, *args, **kwargs):
        if isinstance(data, dict):
            for mime, fmt in (("image/png", "png"), ("image/jpeg", "jpeg")):
                if isinstance(data.get(mime), str):
                    images.append([fmt, data[mime].replace("\n", "")])
        return forward(data, *args, **kwargs)

    pub.publish = publish

def on_alarm(signum, frame):
    raise TimeoutError(f"execution exceeded its timeout of {limit:g} s")

timer = limit > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
if timer:
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
name = "<cell-" + marker[8:16] + ">"
try:
    if shell is not None:
        src = shell.transform_cell(src)
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    tree = ast.parse(src, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), user)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), user)
        if value is not None:
            report["value"] = value_of(value)
except BaseException as exc:
    report["ok"] = False
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == "<dsmcp>":
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        lines = traceback.format_exception_only(type(exc), exc)
    else:
        lines = traceback.format_exception(type(exc), exc, tb)
    sys.stderr.write("".join(lines))
finally:
    if timer:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if pub is not None:
        pub.publish = forward
plt = sys.modules.get("matplotlib.pyplot")
if plt is not None:
    try:
        for number in plt.get_fignums():
            buffer = io.BytesIO()
            plt.figure(number).savefig(buffer, format="png", bbox_inches="tight")
            images.append(["png", base64.b64encode(buffer.getvalue()).decode()])
        plt.close("all")
    except Exception as exc:
        sys.stderr.write(f"could not render the open figures: {exc}\n")
report["images"] = images
sys.stdout.flush()
sys.stderr.flush()
sys.stdout.write("\n" + marker + json.dumps(report) + "\n")
sys.stdout.flush()
"""


def python_runner(code: str, marker: str, timeout_s: float) -> str:
    """Python source that runs `code` like a notebook cell and ends with the report line."""
    args = f"(globals(), {code!r}, {marker!r}, {float(timeout_s)!r})"
    return (
        "__import__('builtins').exec(__import__('builtins').compile("
        f"{_PYTHON_RUNNER!r}, '<dsmcp>', 'exec'), {{'__dsmcp_args': {args}}})"
    )


def shell_runner(command: str, marker: str, timeout_s: float) -> str:
    """A shell command line that runs `command` with bash in /mnt/data, stdin closed, killed after
    `timeout_s`, and ends with the report line carrying its exit code."""
    seconds = max(1, math.ceil(timeout_s))
    return (
        f"{_IN_DATA}timeout -k 5 {seconds} bash -c {shlex.quote(command)} </dev/null; "
        f"printf '\\n{marker}%d\\n' \"$?\""
    )


def shell_via_python(command: str) -> str:
    """Python source that runs a shell command line and relays its output (for endpoints without
    the shell tool); nothing lands in the caller's namespace."""
    body = (
        "import subprocess, sys\n"
        "r = subprocess.run(c, shell=True, executable='/bin/bash', capture_output=True, text=True, "
        "errors='replace')\n"
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
    )
    return f"__import__('builtins').exec({body!r}, {{'c': {command!r}}})"


def python_via_shell(code: str) -> str:
    """A shell command line that runs Python source (for endpoints without the Python tool)."""
    return f"python3 -c {shlex.quote(code)}"


@dataclass(frozen=True)
class PythonReport:
    ok: bool
    has_value: bool
    value: Any
    images: list[tuple[str, str]] = field(default_factory=list)  # (format, base64)


def split_report(stdout: str, marker: str) -> tuple[str, str | None]:
    """The user's stdout and the text after the marker (None when the report never came)."""
    at = stdout.rfind("\n" + marker)
    if at < 0:
        return stdout, None
    return stdout[:at], stdout[at + 1 + len(marker) :].strip()


def parse_python_report(text: str) -> PythonReport | None:
    try:
        report = json.loads(text)
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    images = [
        (str(i[0]), str(i[1]))
        for i in report.get("images") or []
        if isinstance(i, list) and len(i) == 2 and isinstance(i[1], str)
    ]
    return PythonReport(
        ok=report.get("ok") is True, has_value="value" in report, value=report.get("value"), images=images
    )


def parse_exit_code(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# ---- files --------------------------------------------------------------------------------


def stat_file(path: str) -> str:
    """Answers `dsmcp-ok SIZE`, `dsmcp-notfile` or `dsmcp-missing`."""
    p = quoted(path)
    return (
        f"{_IN_DATA}if [ -f {p} ]; then printf '{OK} %s\\n' \"$(wc -c < {p})\"; "
        f"elif [ -e {p} ]; then echo {NOT_A_FILE}; else echo {MISSING}; fi"
    )


def read_chunk(path: str, offset: int, length: int) -> str:
    """`length` bytes from `offset`, as one line of base64."""
    return f"{_IN_DATA}tail -c +{offset + 1} -- {quoted(path)} | head -c {length} | base64 -w0"


def sha256_of(path: str) -> str:
    """Answers `dsmcp-ok SIZE SHA256`."""
    p = quoted(path)
    return f'{_IN_DATA}printf \'{OK} %s %s\\n\' "$(wc -c < {p})" "$(sha256sum < {p} | cut -c1-64)"'


def start_upload(directory: str, part: str) -> str:
    """Create the folders and an empty part file next to the destination."""
    mkdir = f"mkdir -p -- {quoted(directory)} && " if directory else ""
    return f"{_IN_DATA}{mkdir}: > {quoted(part)} && echo {OK}"


def append_chunk(part: str, data_b64: str) -> str:
    return f"{_IN_DATA}printf %s '{data_b64}' | base64 -d >> {quoted(part)} && echo {OK}"


def append_chunk_python(part: str, data_b64: str) -> str:
    """Python source appending to the part file (a kernel gets it as a message: no argv cap)."""
    body = (
        "import base64, os\n"
        "with open(os.path.join('/mnt/data' if os.path.isdir('/mnt/data') else '.', p), 'ab') as f:\n"
        "    f.write(base64.b64decode(d))\n"
        f"print({OK!r})\n"
    )
    return f"__import__('builtins').exec({body!r}, {{'p': {part!r}, 'd': {data_b64!r}}})"


def finish_upload(part: str, path: str, size: int, sha256: str) -> str:
    """Move the part into place only when its size and sha256 are the expected ones; otherwise
    remove it and answer `dsmcp-mismatch SIZE SHA256` (what arrived)."""
    p, dest = quoted(part), quoted(path)
    got = f'"$(wc -c < {p})" "$(sha256sum < {p} | cut -c1-64)"'
    return (
        f'{_IN_DATA}if [ "$(wc -c < {p})" -eq {size} ] && [ "$(sha256sum < {p} | cut -c1-64)" = {sha256} ]; '
        f"then mv -fT -- {p} {dest} && echo {OK}; "
        f"else printf '{MISMATCH} %s %s\\n' {got}; rm -f -- {p}; fi"
    )


def remove_quietly(path: str) -> str:
    return f"{_IN_DATA}rm -f -- {quoted(path)}; echo {OK}"


def list_dir(directory: str, recursive: bool) -> str:
    """Entries as base64 of NUL-separated `TYPE SIZE MTIME RELPATH` records, then `dsmcp-ok`."""
    p = quoted(directory)
    depth = "" if recursive else "-maxdepth 1 "
    return (
        f"{_IN_DATA}if [ -d {p} ]; then find {p} -mindepth 1 {depth}-printf '%y %s %T@ %P\\0' | base64 -w0; "
        f"echo; echo {OK}; else echo {MISSING}; fi"
    )


def delete(path: str) -> str:
    p = quoted(path)
    return f"{_IN_DATA}if [ -e {p} ] || [ -L {p} ]; then rm -rf -- {p} && echo {OK}; else echo {MISSING}; fi"


def wipe_data() -> str:
    """Remove everything under /mnt/data (never anything when the working directory is /)."""
    return f'{_IN_DATA}if [ "$(pwd)" != / ]; then find . -mindepth 1 -delete 2>/dev/null; fi; echo {OK}'
