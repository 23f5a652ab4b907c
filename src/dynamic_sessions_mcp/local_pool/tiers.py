"""Isolation tiers, what may be asked for, and the advice shown when a tier cannot run here.

- **bubblewrap** (tier A, the default): namespaces + seccomp + cgroups/rlimits.
- **landlock** (tier B): for machines without user namespaces; see `confinement.py` for what it
  does and does not isolate.
- **none** (tier C): no isolation; only by explicit opt-in, with a loud warning.

`auto` uses bubblewrap when its self-test passes and falls back to Landlock when bubblewrap is
installed but cannot create namespaces (the cases local-sandbox.md §6 lists). A missing bwrap
binary is not a reason to fall back: installing it is the fix, so that is what the error says.
"""

from __future__ import annotations

import enum

ISOLATION_CHOICES = ("auto", "bubblewrap", "landlock", "none")


class Tier(enum.StrEnum):
    BUBBLEWRAP = "bubblewrap"
    LANDLOCK = "landlock"
    NONE = "none"


class SandboxUnavailable(Exception):
    """No isolation tier can run here; the message says how to fix it or how to opt out."""


class NamespacesUnavailable(SandboxUnavailable):
    """bubblewrap is installed but cannot create its namespaces: `auto` may fall back to Landlock."""


OPT_OUT = (
    "To run sessions without any isolation instead (development only, unsafe), start the local pool "
    "with the explicit opt-in --unsafe-no-sandbox."
)
LANDLOCK_HINT = (
    "Where user namespaces cannot be enabled, the weaker Landlock tier can be chosen explicitly "
    "(isolation 'landlock')."
)
_APPARMOR = (
    "Unprivileged user namespaces are restricted (Ubuntu >= 23.10 AppArmor): install an AppArmor "
    "profile for /usr/bin/bwrap (Ubuntu 25.04 ships `bwrap-userns-restrict`) or run "
    "`sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`."
)
_CONTAINER = (
    "Namespaces are blocked, typically by a container's seccomp profile (Docker, Kubernetes): run the "
    "container with `--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (and possibly "
    "`--cap-add SYS_ADMIN`)."
)
_DISABLED = (
    "User namespaces are disabled: check that `sysctl user.max_user_namespaces` is above 0 "
    "(and `kernel.unprivileged_userns_clone=1` where that setting exists)."
)


def bwrap_missing(path: str) -> str:
    return (
        f"bubblewrap ({path!r}) was not found. Install it: `apt-get install bubblewrap` (Debian/Ubuntu), "
        f"`dnf install bubblewrap` (Fedora) or `pacman -S bubblewrap` (Arch). {LANDLOCK_HINT}"
    )


def explain_bwrap_failure(stderr: str) -> str:
    """Turn known bubblewrap failures into advice a user can follow."""
    detail = f"bubblewrap self-test failed: {stderr or 'no error output'}."
    if "uid map" in stderr or "RTM_NEWADDR" in stderr or "setting up" in stderr:
        advice = _APPARMOR
    elif "No permissions to create new namespace" in stderr or "Operation not permitted" in stderr:
        advice = _CONTAINER
    elif "No space left on device" in stderr:  # max_user_namespaces = 0
        advice = _DISABLED
    else:
        advice = "Check that `bwrap --unshare-all --ro-bind /usr /usr -- /usr/bin/true` works for this user."
    return f"{detail} {advice}"


def explain_landlock_failure(detail: str) -> str:
    return (
        f"the Landlock tier cannot run here: {detail}. It needs Linux >= 5.13 with Landlock enabled "
        "(`lsm=...,landlock` on the kernel command line) and, in containers, a seccomp profile that "
        "allows the landlock_* syscalls."
    )
