"""The sandbox's seccomp filter, assembled here as classic BPF (no libseccomp binding needed).

The filter allows everything except the syscalls of shared/reference/local-sandbox.md §2.3, which
are the kernel attack surface and the escape hatches a sandboxed process never needs. Denied calls
fail with EPERM, except `clone3`, which fails with ENOSYS so that glibc falls back to `clone`
(whose namespace flags can be checked; with EPERM, threads and `posix_spawn` break).

Two profiles:
- namespaces (tier A, bubblewrap): passed to `bwrap --seccomp FD`. IPv4/IPv6 sockets stay allowed:
  the empty network namespace blocks egress, and ipykernel needs a loopback TCP pipe for output
  from forked children.
- no namespaces (tier B, Landlock): the sandbox shares the host's network, IPC, processes and
  filesystem (Landlock only restricts opening files), so it additionally denies:
  - IPv4/IPv6/packet sockets (Landlock cannot stop UDP), `connect` (with inet denied it could only
    reach host Unix sockets: docker.sock, another session's kernel) and Unix datagram sockets
    (which reach host sockets with `sendto`);
  - `setsid` (a sandbox's processes stay in its session, so all of them can be found and killed),
    `kill(-1)`, and `prlimit`, `setpriority`, `ioprio_set` and `migrate_pages` on any process but
    the caller;
  - System V IPC (shared with the host without an IPC namespace);
  - the metadata calls Landlock does not cover, on paths: `chown`, the `*xattr` setters, `truncate`
    (before Landlock ABI 3), and `chmod` and `utime*`, which become no-ops that report success
    (so `shutil.copy` still works; files keep their modes and times). The fd-based variants stay:
    their fds come from opens Landlock checked.

Socket families are allowlisted, never AF_NETLINK-denied: libzmq aborts without netlink.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_OFF_NR = 0
_OFF_ARCH = 4


def _arg(i: int) -> int:
    """Offset of the low 32 bits of argument i (little-endian hosts only)."""
    return 16 + 8 * i


# Classic BPF opcodes.
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCK_DGRAM = 2
_SOCK_TYPE_MASK = 0xF
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
# (CLONE_NEWTIME shares its bit with the exit signal in clone(2); only unshare/clone3 take it.)
CLONE_NEW_MASK = 0x7E020000
_X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Arch:
    name: str
    audit: int  # AUDIT_ARCH_* as seccomp reports it
    syscalls: Mapping[str, int]


_COMMON = {  # numbers shared by x86_64 and aarch64 (the unified table of newer syscalls)
    "fchmodat2": 452,
    "setxattrat": 463,
    "removexattrat": 466,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "mount_setattr": 442,
}

X86_64 = Arch(
    "x86_64",
    0xC000003E,
    {
        **_COMMON,
        "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "unshare": 272, "setns": 308, "clone": 56, "keyctl": 250, "add_key": 248,
        "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "process_vm_readv": 310, "process_vm_writev": 311,
        "open_by_handle_at": 304, "socket": 41, "connect": 42, "setsid": 112, "kill": 62,
        "prlimit64": 302, "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "msgget": 68,
        "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "semget": 64, "semop": 65, "semctl": 66,
        "semtimedop": 220, "chmod": 90, "fchmodat": 268, "chown": 92, "lchown": 94, "fchownat": 260,
        "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280, "setxattr": 188,
        "lsetxattr": 189, "removexattr": 197, "lremovexattr": 198, "truncate": 76, "setpriority": 141,
        "ioprio_set": 251, "migrate_pages": 256,
    },
)  # fmt: skip

AARCH64 = Arch(
    "aarch64",
    0xC00000B7,
    {
        **_COMMON,
        "ptrace": 117, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "unshare": 97, "setns": 268, "clone": 220, "keyctl": 219, "add_key": 217,
        "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "process_vm_readv": 270, "process_vm_writev": 271,
        "open_by_handle_at": 265, "socket": 198, "connect": 203, "setsid": 157, "kill": 129,
        "prlimit64": 261, "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197,
        "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "semget": 190, "semop": 193,
        "semctl": 191, "semtimedop": 192, "fchmodat": 53, "fchownat": 54, "utimensat": 88,
        "setxattr": 5, "lsetxattr": 6, "removexattr": 14, "lremovexattr": 15, "truncate": 45,
        "setpriority": 140, "ioprio_set": 30, "migrate_pages": 238,
    },
)  # fmt: skip

ARCHES = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}

# local-sandbox.md §2.3, plus the rest of each family (the new mount API, kexec_file_load,
# delete_module, the other io_uring calls) and open_by_handle_at (the classic container escape).
DENIED_EPERM = (
    "ptrace", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "process_vm_readv", "process_vm_writev", "open_by_handle_at",
)  # fmt: skip
DENIED_WITHOUT_NAMESPACES = (
    "connect", "setsid", "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv",
    "msgctl", "semget", "semop", "semctl", "semtimedop", "chown", "lchown", "fchownat",
    "setxattr", "lsetxattr", "removexattr", "lremovexattr", "setxattrat", "removexattrat",
)  # fmt: skip
NOOP_WITHOUT_NAMESPACES = ("chmod", "fchmodat", "fchmodat2", "utime", "utimes", "futimesat", "utimensat")
# Calls whose first argument names a process: allowed only for the caller itself (0).
# (Not the sched_set* calls: libzmq and OpenMP set their own threads' scheduling by thread id.)
SELF_ONLY_WITHOUT_NAMESPACES = ("prlimit64", "migrate_pages")
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1


class Profile(enum.Enum):
    NAMESPACES = "namespaces"  # tier A: bubblewrap provides the netns, pidns and ipcns
    NO_NAMESPACES = "no-namespaces"  # tier B: Landlock only, so seccomp also guards the network


class UnsupportedArch(Exception):
    """No syscall table for this machine: the sandbox cannot build its seccomp filter."""


def native_arch() -> Arch:
    machine = platform.machine().lower()
    arch = ARCHES.get(machine)
    if arch is None or struct.pack("=I", 1) != struct.pack("<I", 1):
        raise UnsupportedArch(f"no seccomp syscall table for {machine!r}; supported: x86_64, aarch64")
    return arch


class _Assembler:
    """A forward-only classic-BPF assembler: jump targets are labels resolved at the end."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self._code.append((_LD_W_ABS, 0, 0, offset))

    def and_(self, mask: int) -> None:
        self._code.append((_ALU_AND_K, 0, 0, mask))

    def jump(self, op: int, k: int, true: str | int = 0, false: str | int = 0) -> None:
        self._code.append((op, true, false, k))

    def ret(self, value: int) -> None:
        self._code.append((_RET_K, 0, 0, value))

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"duplicate label {name}")
        self._labels[name] = len(self._code)

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, true, false, k) in enumerate(self._code):
            out += struct.pack("<HBBI", code, self._offset(index, true), self._offset(index, false), k)
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"jump to {target} out of range ({offset})")
        return offset


def errno_ret(code: int) -> int:
    return _RET_ERRNO | (code & 0xFFFF)


def build(profile: Profile, arch: Arch | None = None, *, deny_path_truncate: bool = False) -> bytes:
    """The filter program (an array of struct sock_filter) for `profile` on `arch`.
    `deny_path_truncate`: for Landlock ABI < 3, which cannot restrict truncate(2)."""
    arch = arch or native_arch()
    nr = arch.syscalls
    no_ns = profile is Profile.NO_NAMESPACES
    a = _Assembler()
    a.load(_OFF_ARCH)
    a.jump(_JEQ_K, arch.audit, 0, "kill")  # a foreign ABI (i386 via int 0x80) has other numbers
    a.load(_OFF_NR)
    if arch is X86_64:
        a.jump(_JGE_K, _X32_SYSCALL_BIT, "enosys")  # x32 aliases would bypass every rule below
    jumps: dict[str, str] = dict.fromkeys(DENIED_EPERM, "eperm")
    jumps.update({"clone3": "enosys", "clone": "clone", "socket": "socket"})
    if no_ns:
        jumps.update(dict.fromkeys(DENIED_WITHOUT_NAMESPACES, "eperm"))
        jumps.update(dict.fromkeys(NOOP_WITHOUT_NAMESPACES, "noop"))
        jumps.update(dict.fromkeys(SELF_ONLY_WITHOUT_NAMESPACES, "self_only"))
        jumps.update({"kill": "kill_syscall", "setpriority": "setpriority", "ioprio_set": "ioprio_set"})
        if deny_path_truncate:
            jumps["truncate"] = "eperm"
    for name, target in jumps.items():
        if name in nr:  # aarch64 lacks the legacy calls (chmod, chown, utime, ...)
            a.jump(_JEQ_K, nr[name], target)
    a.ret(RET_ALLOW)

    a.label("clone")  # clone(flags, ...): no new namespaces
    a.load(_arg(0))
    a.jump(_JSET_K, CLONE_NEW_MASK, "eperm")
    a.ret(RET_ALLOW)

    a.label("socket")  # socket(family, type, protocol): allowlisted families only
    a.load(_arg(0))
    a.jump(_JEQ_K, AF_UNIX, "unix")
    a.jump(_JEQ_K, AF_NETLINK, "allow")
    if not no_ns:
        a.jump(_JEQ_K, AF_INET, "allow")
        a.jump(_JEQ_K, AF_INET6, "allow")
    a.ret(errno_ret(errno.EPERM))
    a.label("unix")
    if no_ns:  # an unconnected datagram socket reaches any host socket path with sendto
        a.load(_arg(1))
        a.and_(_SOCK_TYPE_MASK)
        a.jump(_JEQ_K, SOCK_DGRAM, "eperm")
    a.label("allow")
    a.ret(RET_ALLOW)

    if no_ns:
        a.label("kill_syscall")  # kill(-1, sig) signals every process the sandbox's uid may signal
        a.load(_arg(0))
        a.jump(_JEQ_K, 0xFFFFFFFF, "eperm")
        a.ret(RET_ALLOW)
        a.label("self_only")  # call(pid, ...): only pid 0, the caller
        a.load(_arg(0))
        a.jump(_JEQ_K, 0, "allow_caller", "eperm")
        a.label("setpriority")  # setpriority(which, who, prio): PRIO_PROCESS of the caller only
        a.load(_arg(0))
        a.jump(_JEQ_K, _PRIO_PROCESS, "who", "eperm")
        a.label("ioprio_set")  # ioprio_set(which, who, prio): IOPRIO_WHO_PROCESS of the caller only
        a.load(_arg(0))
        a.jump(_JEQ_K, _IOPRIO_WHO_PROCESS, "who", "eperm")
        a.label("who")
        a.load(_arg(1))
        a.jump(_JEQ_K, 0, "allow_caller", "eperm")
        a.label("allow_caller")
        a.ret(RET_ALLOW)
        a.label("noop")
        a.ret(errno_ret(0))  # SECCOMP_RET_ERRNO with 0: the call returns success, doing nothing

    a.label("eperm")
    a.ret(errno_ret(errno.EPERM))
    a.label("enosys")
    a.ret(errno_ret(errno.ENOSYS))
    a.label("kill")
    a.ret(RET_KILL_PROCESS)
    return a.assemble()


# ---- installing a filter in the current process (tier B, between fork and exec) ------------

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_libc = ctypes.CDLL(None, use_errno=True)  # resolved at import: a forked child must not dlopen
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prctl_or_raise(option: int, arg2: int, what: str, arg3: int = 0) -> None:
    """prctl(option, arg2, arg3, 0, 0); OSError when it fails."""
    args = (ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if _prctl(option, *args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what} failed: {errno.errorcode.get(code, code)}")


def set_no_new_privs() -> None:
    """Required before loading a filter (or a Landlock domain) without CAP_SYS_ADMIN."""
    prctl_or_raise(_PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


class Installer:
    """A filter ready to load in a child between fork and exec: the buffers are built before the
    fork, so the child makes one prctl call."""

    def __init__(self, program: bytes) -> None:
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.cast(self._buffer, ctypes.c_void_p))
        self._address = ctypes.addressof(self._fprog)

    def install(self) -> None:
        """Load the filter (no_new_privs must already be set); raises OSError on failure."""
        result = _prctl(
            _PR_SET_SECCOMP,
            ctypes.c_ulong(_SECCOMP_MODE_FILTER),
            ctypes.c_void_p(self._address),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
        if result != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"seccomp filter not loaded: {errno.errorcode.get(code, code)}")
