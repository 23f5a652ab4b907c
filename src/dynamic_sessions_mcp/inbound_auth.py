"""Who is calling /mcp: API keys or Entra ID tokens, checked in front of the MCP app.

The verified principal lands where the SDK puts its own (`scope["user"]` and the auth contextvar),
so `get_access_token()` names the caller inside tools and 2025-era sessions stay bound to the
principal that opened them. A refusal is a 401 whose `WWW-Authenticate` points at the RFC 9728
protected resource metadata document, as the MCP authorization spec asks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dynamic_sessions_mcp.config import InboundAuth, Settings

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource"
RESOURCE_NAME = "dynamic-sessions-mcp"
MIN_KEY_LENGTH = 16
_KEY_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: it travels in a header
_ENTRA_AUTHORITY = "https://login.microsoftonline.com/{tenant}/v2.0"


class AuthConfigError(ValueError):
    """Inbound auth settings that cannot work; str() says what to set."""


class Rejected(Exception):
    """The credential is not acceptable. `reason` labels metrics; `description` goes to the caller."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class VerifierUnavailable(Exception):
    """The credential cannot be checked right now (e.g. the signing keys cannot be fetched)."""


class Verifier(Protocol):
    async def verify(self, credential: str) -> AccessToken:
        """The principal behind `credential`; raises Rejected or VerifierUnavailable."""
        ...


@dataclass(frozen=True)
class EntraConfig:
    issuers: list[str]
    audiences: list[str]
    jwks_url: str
    authority: str  # the authorization server named in the resource metadata


@dataclass(frozen=True)
class AuthConfig:
    """Inbound auth, checked once at start-up."""

    mode: InboundAuth
    public_url: str | None = None
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    entra: EntraConfig | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthConfig:
        public_url = _public_url(settings.public_url)
        if settings.auth is InboundAuth.API_KEY:
            return cls(settings.auth, public_url, api_keys=_load_api_keys(settings))
        if settings.auth is InboundAuth.ENTRA:
            return cls(settings.auth, public_url, entra=_entra_config(settings))
        return cls(settings.auth, public_url)

    @property
    def scopes_supported(self) -> list[str]:
        """Entra: the `.default` scope of the first audience, which a client asks its token for."""
        if self.entra is None:
            return []
        return [self.entra.audiences[0].rstrip("/") + "/.default"]


def _public_url(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise AuthConfigError(
            f"DSMCP_PUBLIC_URL must be the server's external origin, like https://mcp.example.com "
            f"(got {value!r}); the MCP endpoint is then https://mcp.example.com/mcp"
        )
    return f"{parts.scheme}://{parts.netloc}"


def parse_api_keys(text: str, source: str) -> dict[str, str]:
    """`name:key` entries separated by commas or newlines; `#` starts a comment line."""
    keys: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, key = entry.partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not _KEY_NAME.match(name):
            raise AuthConfigError(
                f"{source}: each entry must be name:key with a name of letters, digits, '.', '_', '@' or '-'"
            )
        if len(key) < MIN_KEY_LENGTH or not _KEY_CHARS.match(key):
            raise AuthConfigError(
                f"{source}: the key of {name!r} must be at least {MIN_KEY_LENGTH} printable characters "
                "without spaces (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if name in keys:
            raise AuthConfigError(f"{source}: the name {name!r} appears twice; each key needs its own name")
        keys[name] = key
    return keys


def _load_api_keys(settings: Settings) -> dict[str, str]:
    keys: dict[str, str] = {}
    if settings.api_keys is not None:
        keys.update(parse_api_keys(settings.api_keys.get_secret_value(), "DSMCP_API_KEYS"))
    if settings.api_keys_file is not None:
        try:
            text = settings.api_keys_file.read_text()
        except OSError as exc:
            raise AuthConfigError(
                f"DSMCP_API_KEYS_FILE cannot be read ({exc.strerror}): {settings.api_keys_file}"
            ) from None
        for name, key in parse_api_keys(text, "DSMCP_API_KEYS_FILE").items():
            if name in keys:
                raise AuthConfigError(
                    f"the key name {name!r} is in both DSMCP_API_KEYS and DSMCP_API_KEYS_FILE"
                )
            keys[name] = key
    if not keys:
        raise AuthConfigError(
            "DSMCP_AUTH=api-key needs keys: set DSMCP_API_KEYS=name:key[,name2:key2] or DSMCP_API_KEYS_FILE"
        )
    if len(set(keys.values())) != len(keys):
        raise AuthConfigError("two API key names share one key; give every caller its own key")
    return keys


def _entra_config(settings: Settings) -> EntraConfig:
    tenant = (settings.entra_tenant_id or "").strip()
    if not settings.entra_audience:
        raise AuthConfigError(
            "DSMCP_AUTH=entra needs DSMCP_ENTRA_AUDIENCE: the application ID URI (api://...) and/or "
            "client id of the app registration that represents this server"
        )
    issuers = settings.entra_issuer or (
        [_ENTRA_AUTHORITY.format(tenant=tenant), f"https://sts.windows.net/{tenant}/"] if tenant else []
    )
    jwks_url = settings.entra_jwks_url or (
        f"https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys" if tenant else ""
    )
    if not issuers or not jwks_url:
        raise AuthConfigError(
            "DSMCP_AUTH=entra needs DSMCP_ENTRA_TENANT_ID "
            "(or both DSMCP_ENTRA_ISSUER and DSMCP_ENTRA_JWKS_URL)"
        )
    authority = _ENTRA_AUTHORITY.format(tenant=tenant) if tenant else issuers[0]
    return EntraConfig(issuers, list(settings.entra_audience), jwks_url, authority)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyVerifier:
    """Named static keys; every key is compared, in constant time, so timing tells nothing."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._digests = [(name, _digest(key)) for name, key in keys.items()]

    async def verify(self, credential: str) -> AccessToken:
        presented = _digest(credential)
        caller: str | None = None
        for name, digest in self._digests:
            if hmac.compare_digest(digest, presented):
                caller = name
        if caller is None:
            raise Rejected("unknown_key", "the API key is not valid")
        # The token field holds a label, not the key, in case anything ever logs the AccessToken.
        return AccessToken(token=f"api-key:{caller}", client_id=caller, subject=caller, scopes=[])


def resource_url(config: AuthConfig, scope: Scope) -> str:
    """The MCP endpoint's public URL: DSMCP_PUBLIC_URL, or what this request was addressed to."""
    if config.public_url:
        return config.public_url + MCP_PATH
    headers = Headers(scope=scope)
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    return f"{scope.get('scheme', 'http')}://{host}{MCP_PATH}"


def metadata_url(resource: str) -> str:
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{METADATA_PATH}{parts.path}"


def protected_resource_metadata(config: AuthConfig, resource: str) -> dict[str, object]:
    """RFC 9728 document. API keys have no authorization server, so none is named."""
    document: dict[str, object] = {
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": RESOURCE_NAME,
    }
    if config.entra is not None:
        document["authorization_servers"] = [config.entra.authority]
        document["scopes_supported"] = config.scopes_supported
    return document


def metadata_endpoint(config: AuthConfig) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def endpoint(request: Request) -> JSONResponse:
        document = protected_resource_metadata(config, resource_url(config, request.scope))
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    return endpoint


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InboundAuthMiddleware:
    """Require a verified caller on /mcp; pass everything else (health, metrics, metadata) through."""

    def __init__(
        self,
        app: ASGIApp,
        config: AuthConfig,
        verifier: Verifier,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.verifier = verifier
        self.on_refused = on_refused
        self.accepts_x_api_key = config.mode is InboundAuth.API_KEY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == MCP_PATH or path.startswith(MCP_PATH + "/")):
            await self.app(scope, receive, send)
            return
        credential = self._credential(Headers(scope=scope))
        if credential is None:
            await self._refuse(scope, send, Rejected("missing", "authentication required"))
            return
        try:
            token = await self.verifier.verify(credential)
        except Rejected as rejected:
            await self._refuse(scope, send, rejected)
            return
        except VerifierUnavailable as exc:
            logger.warning("cannot verify a caller's token now: %s", exc)
            response = JSONResponse(
                {"error": "temporarily_unavailable", "error_description": "cannot verify tokens right now"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
            await response(scope, receive, send)
            return
        user = AuthenticatedUser(token)
        reset = auth_context_var.set(user)
        try:
            await self.app({**scope, "user": user, "auth": AuthCredentials(token.scopes)}, receive, send)
        finally:
            auth_context_var.reset(reset)

    def _credential(self, headers: Headers) -> str | None:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if self.accepts_x_api_key and (key := headers.get("x-api-key", "").strip()):
            return key
        return None

    async def _refuse(self, scope: Scope, send: Send, rejected: Rejected) -> None:
        logger.info("refused %s %s: %s", scope.get("method"), scope.get("path"), rejected.reason)
        if self.on_refused is not None:
            self.on_refused(rejected.reason)
        challenge = []
        error = "unauthorized" if rejected.reason == "missing" else "invalid_token"
        if rejected.reason != "missing":  # RFC 6750 §3.1: no error code when no credential was sent
            challenge += [f"error={_quoted(error)}", f"error_description={_quoted(rejected.description)}"]
        if self.config.scopes_supported:
            challenge.append(f"scope={_quoted(' '.join(self.config.scopes_supported))}")
        challenge.append(f"resource_metadata={_quoted(metadata_url(resource_url(self.config, scope)))}")
        body = json.dumps({"error": error, "error_description": rejected.description}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", ("Bearer " + ", ".join(challenge)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
