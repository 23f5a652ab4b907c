"""Session identity: handles, identifiers, locks (pure functions, no pool)."""

from __future__ import annotations

import re

import anyio
import pytest

from dynamic_sessions_mcp.identity import (
    InvalidHandle,
    SandboxLocks,
    SandboxTracker,
    SessionBusy,
    SessionIdentity,
)

pytestmark = pytest.mark.anyio
IDENTIFIER = re.compile(r"^[a-z0-9-]{4,128}$")


def test_minted_handles_check_and_identifiers_are_safe() -> None:
    identity = SessionIdentity(b"k" * 32)
    handle = identity.mint_handle()
    assert identity.check_handle(handle) == handle
    identifier = identity.pool_identifier("alice", handle)
    assert IDENTIFIER.match(identifier) and handle not in identifier


def test_identifier_depends_on_caller_handle_and_secret() -> None:
    a, b = SessionIdentity(b"a" * 32), SessionIdentity(b"b" * 32)
    handle = a.mint_handle()
    assert a.pool_identifier("alice", handle) == a.pool_identifier("alice", handle)
    assert a.pool_identifier("alice", handle) != a.pool_identifier("bob", handle)
    assert a.pool_identifier("alice", handle) != b.pool_identifier("alice", handle)


@pytest.mark.parametrize(
    "bad", ["", "h-", "x" * 26, "h-aaaaaaaaaaaaaaaaaaaaaaaa", "h-AAAAAAAAAAAAAAAA12345678"]
)
def test_handles_not_minted_here_are_refused(bad: str) -> None:
    with pytest.raises(InvalidHandle):
        SessionIdentity(b"k" * 32).check_handle(bad)


def test_handle_from_another_secret_is_refused() -> None:
    with pytest.raises(InvalidHandle):
        SessionIdentity(b"k" * 32).check_handle(SessionIdentity(b"j" * 32).mint_handle())


def test_connection_handles_are_stable_across_replicas() -> None:
    one, two = SessionIdentity(b"s" * 32), SessionIdentity(b"s" * 32)
    assert one.connection_handle("abc") == two.connection_handle("abc") != one.connection_handle("abd")
    assert one.check_handle(one.connection_handle("abc"))


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SessionIdentity(b"short")


async def test_locks_serialise_and_bound_the_wait() -> None:
    locks = SandboxLocks(wait_s=0.1)
    async with locks.hold("s1"):
        with pytest.raises(SessionBusy):
            async with locks.hold("s1"):
                pass
        async with locks.hold("s2"):  # another sandbox is not blocked
            pass
    async with locks.hold("s1"):
        pass
    assert locks._locks == {}  # nothing left behind


async def test_lock_waiters_get_their_turn() -> None:
    locks, order = SandboxLocks(wait_s=5), []

    async def worker(n: int) -> None:
        async with locks.hold("s"):
            order.append(n)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(worker, n)
    assert sorted(order) == list(range(5))


def test_tracker_notices_a_new_sandbox() -> None:
    tracker = SandboxTracker(capacity=2)
    assert tracker.observe("a", "sb1") is False
    assert tracker.observe("a", "sb1") is False
    assert tracker.observe("a", "sb2") is True
    assert tracker.observe("a", None) is False
    tracker.observe("b", "x")
    tracker.observe("c", "y")  # evicts "a"
    assert tracker.observe("a", "sb3") is False
