"""Session identity: (caller, scope) -> pool identifier, derived with an HMAC and never stored.

Every scope is a *handle* the server minted: `h-<body><tag>`, where the tag is an HMAC of the
body, so a handle the model made up is refused instead of silently opening an empty sandbox.
The pool identifier mixes the caller in, so a handle replayed by another caller reaches a
different sandbox, and any replica holding the same secret derives the same identifier.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

HANDLE_PREFIX = "h-"
_BODY_LEN = 16  # base32 chars: 80 bits of randomness
_TAG_LEN = 8  # base32 chars: 40 bits of authentication
IDENTIFIER_PREFIX = "dsmcp-"


class InvalidHandle(ValueError):
    """The `session` argument is not a handle this server minted."""


class SessionBusy(RuntimeError):
    """Another call holds the sandbox longer than the bounded wait."""


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


class SessionIdentity:
    """Mints and checks handles and derives pool identifiers from one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        # Every call derives these again from the same few inputs: 3 HMACs, ~80 us here.
        self.connection_handle = functools.lru_cache(maxsize=4096)(self._connection_handle)
        self.pool_identifier = functools.lru_cache(maxsize=4096)(self._pool_identifier)

    def _mac(self, purpose: str, *parts: str) -> bytes:
        msg = "\0".join((purpose, *parts)).encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def _handle_from_body(self, body: str) -> str:
        return HANDLE_PREFIX + body + _b32(self._mac("handle", body))[:_TAG_LEN]

    def mint_handle(self) -> str:
        return self._handle_from_body(_b32(secrets.token_bytes(10))[:_BODY_LEN])

    def _connection_handle(self, connection_id: str) -> str:
        """The fixed handle of a connection (an Mcp-Session-Id), the same on every replica."""
        return self._handle_from_body(_b32(self._mac("connection", connection_id))[:_BODY_LEN])

    def check_handle(self, handle: str) -> str:
        """Return the handle if this server minted it; raise InvalidHandle otherwise."""
        body = handle[len(HANDLE_PREFIX) : len(HANDLE_PREFIX) + _BODY_LEN]
        if (
            not handle.startswith(HANDLE_PREFIX)
            or len(handle) != len(HANDLE_PREFIX) + _BODY_LEN + _TAG_LEN
            or not hmac.compare_digest(self._handle_from_body(body), handle)
        ):
            raise InvalidHandle(handle)
        return handle

    def _pool_identifier(self, caller: str, handle: str) -> str:
        """The pool's session identifier: `[a-z0-9-]`, 38 chars, meaningless without the secret."""
        return IDENTIFIER_PREFIX + _b32(self._mac("identifier", caller, handle))[:32]


def log_id(identifier: str) -> str:
    """A short, stable, non-reversible name for an identifier in logs."""
    return hashlib.sha256(identifier.encode()).hexdigest()[:10]


class SandboxLocks:
    """One execution at a time per sandbox, with a bounded wait; locks vanish when unused."""

    def __init__(self, wait_s: float) -> None:
        self._wait_s = wait_s
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, identifier: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(identifier, (asyncio.Lock(), 0))
        self._locks[identifier] = (lock, users + 1)
        try:
            try:
                await asyncio.wait_for(lock.acquire(), self._wait_s)
            except TimeoutError:
                raise SessionBusy(identifier) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[identifier]
            if users == 1:
                del self._locks[identifier]
            else:
                self._locks[identifier] = (lock, users - 1)


class SandboxTracker:
    """Remembers which sandbox last served each identifier, to notice that the pool recycled it.

    Bounded (LRU) and per process: a replica that never saw an identifier cannot tell, which
    only means that replica's first answer carries no reset notice.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, str] = OrderedDict()

    def observe(self, identifier: str, sandbox_id: str | None) -> bool:
        """Record the sandbox; return True when it differs from the one seen before."""
        if sandbox_id is None:
            return False
        previous = self._seen.pop(identifier, None)
        self._seen[identifier] = sandbox_id
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return previous is not None and previous != sandbox_id

    def forget(self, identifier: str) -> None:
        self._seen.pop(identifier, None)
