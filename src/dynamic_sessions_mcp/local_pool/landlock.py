"""Landlock through its three syscalls (444-446, the same on x86_64 and aarch64), via ctypes.

A ruleset is built in the server (opening each allowed path there), then the child of a fork
enforces it on itself with `landlock_restrict_self` right before exec. Whatever this kernel's
Landlock ABI can express is handled: filesystem access (v1), cross-directory links and renames
(v2), truncation (v3), TCP bind/connect (v4, handled with no allow rule: all denied), device ioctls
(v5), and signal and abstract Unix socket scoping (v6). Older ABIs simply restrict less; `abi`
tells the caller what it got.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import os
import stat
from pathlib import Path

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class Fs(enum.IntFlag):
    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13  # ABI 2
    TRUNCATE = 1 << 14  # ABI 3
    IOCTL_DEV = 1 << 15  # ABI 5


# Rights that apply to a file (as opposed to a directory's entries); a rule on a file takes only these.
_FILE_RIGHTS = Fs.EXECUTE | Fs.WRITE_FILE | Fs.READ_FILE | Fs.TRUNCATE | Fs.IOCTL_DEV

READ = Fs.READ_FILE | Fs.READ_DIR
READ_EXEC = READ | Fs.EXECUTE
READ_WRITE = Fs((1 << 16) - 1) & ~(Fs.MAKE_CHAR | Fs.MAKE_BLOCK | Fs.IOCTL_DEV)

_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what} failed: {errno.errorcode.get(code, code)}")


def abi_version() -> int:
    """This kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    result = _syscall(
        _SYS_CREATE_RULESET,
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
    )
    return int(result) if result > 0 else 0


def handled_fs(abi: int) -> Fs:
    rights = Fs(0)
    for right in Fs:
        needed = {Fs.REFER: 2, Fs.TRUNCATE: 3, Fs.IOCTL_DEV: 5}.get(right, 1)
        if abi >= needed:
            rights |= right
    return rights


class Ruleset:
    """An allowlist: every filesystem access not granted by `allow` is denied, and so are TCP
    bind/connect (ABI >= 4), signals and abstract sockets leaving the domain (ABI >= 6)."""

    def __init__(self, abi: int) -> None:
        if abi < 1:
            raise OSError(errno.EOPNOTSUPP, "Landlock is not available on this kernel")
        self.handled = handled_fs(abi)
        attr = _RulesetAttr(int(self.handled), 0, 0)
        size = 8
        if abi >= 4:
            attr.handled_access_net, size = _NET_BIND_TCP | _NET_CONNECT_TCP, 16
        if abi >= 6:
            attr.scoped, size = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL, 24
        fd = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if fd < 0:
            _raise("landlock_create_ruleset")
        self.fd = int(fd)
        os.set_inheritable(self.fd, False)

    def allow(self, path: str | Path, rights: Fs) -> bool:
        """Grant `rights` beneath `path` (only the file rights when it is a file); False when the
        path does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            allowed = rights & self.handled
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                allowed &= _FILE_RIGHTS
            rule = _PathBeneathAttr(int(allowed), fd)
            if _syscall(_SYS_ADD_RULE, ctypes.c_int(self.fd), ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:  # fmt: skip
                _raise(f"landlock_add_rule({path})")
        finally:
            os.close(fd)
        return True

    def restrict_self(self) -> None:
        """Enforce the ruleset on the calling process (in a child, after PR_SET_NO_NEW_PRIVS)."""
        if _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(self.fd), ctypes.c_uint32(0)) != 0:
            _raise("landlock_restrict_self")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
