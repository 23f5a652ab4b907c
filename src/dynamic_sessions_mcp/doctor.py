"""`dynamic-sessions-mcp doctor`: check the setup end to end and say how to fix what fails.

Configuration, then the pool credential (an Entra token is actually fetched), then the pool's
reachability with that credential, then a probe execution (6*7) in a throwaway session. Secrets
are never shown: key names, token lengths and expiries only.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TextIO

import httpx

from dynamic_sessions_mcp.config import InboundAuth, PoolAuth, Settings
from dynamic_sessions_mcp.http_app import is_loopback
from dynamic_sessions_mcp.inbound_auth import AuthConfig, AuthConfigError
from dynamic_sessions_mcp.pools.base import Pool, PoolError, PoolErrorKind, PoolType
from dynamic_sessions_mcp.pools.credentials import (
    DYNAMIC_SESSIONS_SCOPE,
    AsyncTokenCredential,
    EntraTokenAuth,
    StaticTokenAuth,
    entra_credential,
)
from dynamic_sessions_mcp.server import PoolTarget, connect_pool

STEP_TIMEOUT_S = 60.0
ROLE = "Azure ContainerApps Session Executor"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "FAIL" | "skip"
    detail: str
    fix: str = ""


class Report:
    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        self._out.write(f"  {status:<5} {name:<16} {detail}\n")
        if fix:
            self._out.write(f"  {'':<5} {'':<16} fix: {fix}\n")
        self._out.flush()

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)


def _check_configuration(settings: Settings, host: str, report: Report) -> None:
    try:
        auth = AuthConfig.from_settings(settings)
    except AuthConfigError as exc:
        report.add("inbound auth", "FAIL", "the settings cannot work", str(exc))
    else:
        if auth.api_keys:
            detail = f"api-key: {len(auth.api_keys)} key(s) named {', '.join(sorted(auth.api_keys))}"
        elif auth.entra is not None:
            detail = f"entra: audience {', '.join(auth.entra.audiences)}; keys from {auth.entra.jwks_url}"
        else:
            detail = "none (loopback only)"
        if settings.auth is InboundAuth.NONE and not is_loopback(host):
            report.add(
                "inbound auth",
                "FAIL",
                f"none, but the HTTP bind address {host} is not loopback",
                "set DSMCP_AUTH=api-key with DSMCP_API_KEYS, or DSMCP_AUTH=entra, or bind 127.0.0.1",
            )
        else:
            report.add("inbound auth", "ok", detail)
    secret = settings.session_secret.get_secret_value() if settings.session_secret else None
    if secret is None:
        report.add(
            "session secret",
            "warn",
            "unset: a random one per process, so handles die with the process",
            "set DSMCP_SESSION_SECRET (the same value on every replica) to keep sessions across "
            "restarts and replicas",
        )
    elif len(secret.encode()) < 16:
        report.add("session secret", "FAIL", "shorter than 16 bytes", "use 32 random bytes or more")
    else:
        report.add("session secret", "ok", "set")


async def _pool_auth(target: PoolTarget, report: Report) -> tuple[bool, httpx.Auth | None]:
    """Build the outbound credential; for Entra, fetch a token now to prove it works."""
    if target.auth is PoolAuth.TOKEN:
        if not target.token:
            report.add(
                "pool credential", "FAIL", "DSMCP_POOL_AUTH=token without a token", "set DSMCP_POOL_TOKEN"
            )
            return False, None
        report.add("pool credential", "ok", f"static bearer token ({len(target.token)} characters)")
        return True, StaticTokenAuth(target.token)
    if target.auth is PoolAuth.NONE:
        report.add("pool credential", "ok", "none (DSMCP_POOL_AUTH=none)")
        return True, None
    if target.auth is PoolAuth.API_KEY:
        if not target.api_key:
            report.add(
                "pool credential", "FAIL", "DSMCP_POOL_AUTH=api-key without a key", "set DSMCP_POOL_API_KEY"
            )
            return False, None
        report.add("pool credential", "ok", f"MCP endpoint API key ({len(target.api_key)} characters)")
        return True, None
    credential: AsyncTokenCredential = entra_credential(target.managed_identity_client_id)
    who = (
        f"managed identity {target.managed_identity_client_id}"
        if target.managed_identity_client_id
        else "DefaultAzureCredential"
    )
    try:
        token = await asyncio.wait_for(credential.get_token(DYNAMIC_SESSIONS_SCOPE), STEP_TIMEOUT_S)
    except Exception as exc:
        await credential.close()
        detail = " ".join(str(exc).split())[:300]
        report.add(
            "pool credential",
            "FAIL",
            f"no Entra token from {who}: {type(exc).__name__}: {detail}",
            "on a workstation run `az login`; on Azure give the app a managed identity and set "
            "DSMCP_MANAGED_IDENTITY_CLIENT_ID to its client id; or use DSMCP_POOL_AUTH=token",
        )
        return False, None
    minutes = (token.expires_on - time.time()) / 60
    report.add("pool credential", "ok", f"Entra token from {who}, valid for {minutes:.0f} more minutes")
    return True, EntraTokenAuth(credential)


def _fix(exc: PoolError, target: PoolTarget) -> str:
    if exc.kind is PoolErrorKind.CONNECTION:
        return (
            f"check DSMCP_POOL_ENDPOINT ({target.endpoint}) and that this machine reaches it "
            "(DNS, firewall, HTTPS_PROXY); for the local pool, check that it is running"
        )
    if exc.kind is PoolErrorKind.AUTH and target.auth is PoolAuth.TOKEN:
        return "the pool refused the token: set DSMCP_POOL_TOKEN to the token the pool expects"
    if exc.kind is PoolErrorKind.AUTH and target.auth is PoolAuth.API_KEY:
        return exc.message
    if exc.kind in (PoolErrorKind.AUTH, PoolErrorKind.FORBIDDEN):
        return (
            f'give the identity the "{ROLE}" role on the pool: az role assignment create --role "{ROLE}" '
            "--assignee <principal id> --scope <pool resource id> (it takes a few minutes to apply)"
        )
    if exc.kind is PoolErrorKind.CAPACITY:
        return "the pool is full: raise its maxConcurrentSessions or end idle sessions"
    if exc.kind is PoolErrorKind.TIMEOUT:
        return "the pool is slow or unreachable; check its health, then DSMCP_POOL_REQUEST_TIMEOUT_S"
    return exc.message


async def _probe(pool: Pool, report: Report) -> None:
    identifier = "dsmcp-doctor-" + secrets.token_hex(8)
    started = time.monotonic()
    try:
        if pool.pool_type is PoolType.PYTHON:
            execution = await pool.run_python(identifier, "6*7", 60)
            answer = execution.result
        else:
            execution = await pool.run_shell(identifier, "echo $((6*7))", 60)
            answer = execution.stdout.strip()
    except PoolError as exc:
        report.add("probe execution", "FAIL", exc.message, "see the pool check above; then retry")
        return
    finally:
        with contextlib.suppress(PoolError):  # if not, the pool's cooldown reaps it
            await pool.end_session(identifier)
    elapsed = time.monotonic() - started
    if answer in (42, "42"):
        report.add("probe execution", "ok", f"6*7 = 42 in {elapsed:.1f} s ({pool.pool_type.value} pool)")
    else:
        report.add(
            "probe execution",
            "FAIL",
            f"6*7 gave {answer!r} (stderr: {execution.stderr.strip()[:200]!r})",
            "the pool runs code but not correctly: check its container type (DSMCP_POOL_TYPE)",
        )


async def _check_pool(settings: Settings, target: PoolTarget, report: Report) -> None:
    usable, auth = await _pool_auth(target, report)
    if not usable:
        report.add("pool", "skip", "(no credential)")
        report.add("probe execution", "skip", "(no credential)")
        return
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(settings.pool_request_timeout_s)) as http:
            try:
                quick = settings.model_copy(
                    update={"pool_retry_budget_s": min(settings.pool_retry_budget_s, 3.0)}
                )
                pool = await connect_pool(quick, target, http, auth)
                await asyncio.wait_for(pool.end_session("dsmcp-doctor-reachability"), STEP_TIMEOUT_S)
            except PoolError as exc:
                report.add("pool", "FAIL", exc.message, _fix(exc, target))
                report.add("probe execution", "skip", "(the pool is not usable)")
                return
            except TimeoutError:
                report.add("pool", "FAIL", "no answer in time", "check the pool's health and the network")
                report.add("probe execution", "skip", "(the pool is not usable)")
                return
            report.add(
                "pool",
                "ok",
                f"{pool.pool_type.value} pool at {target.endpoint} (api-version {target.api_version}) "
                "accepts the credential",
            )
            await _probe(pool, report)
    finally:
        if isinstance(auth, EntraTokenAuth):
            await auth.aclose()


async def run_doctor(
    settings: Settings,
    host: str,
    open_target: Callable[[], AbstractAsyncContextManager[PoolTarget]],
    out: TextIO,
) -> bool:
    """Run every check, writing a line per check (and a fix per failure); True when none failed."""
    out.write("dynamic-sessions-mcp doctor\n")
    report = Report(out)
    _check_configuration(settings, host, report)
    try:
        async with open_target() as target:
            await _check_pool(settings, target, report)
    except Exception as exc:  # e.g. the embedded pool cannot start: its message says how to fix it
        report.add("pool", "FAIL", "cannot start or reach the configured pool", str(exc))
    out.write("all checks passed\n" if not report.failed else "some checks failed: see the fixes above\n")
    return not report.failed
