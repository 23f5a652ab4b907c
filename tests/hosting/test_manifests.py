"""The deployment kit, checked offline: Kubernetes objects against the Kubernetes schemas, the MCP
registry and MCPB manifests against the rules their specs state (written here as small JSON
schemas: the published schema files are not fetched into this repo and CI has no network), and
every manifest against the code it deploys (settings names, probe paths, tools, versions, non-root)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dynamic_sessions_mcp import __version__
from dynamic_sessions_mcp.config import Settings
from dynamic_sessions_mcp.inbound_auth import AuthConfigError, parse_api_keys

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
# The rules of the MCP registry's server.json (2025-12-11) that a registry submission trips on.
SERVER_JSON_RULES: dict[str, Any] = {
    "type": "object",
    "required": ["$schema", "name", "description", "version"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$", "maxLength": 200},
        "description": {"type": "string", "minLength": 1, "maxLength": 100},
        "version": {"type": "string", "maxLength": 255, "not": {"const": "latest"}},
        "packages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["registryType", "identifier", "version", "transport"],
                "properties": {
                    "version": {"type": "string", "not": {"const": "latest"}},
                    "transport": {"type": "object", "required": ["type"]},
                    "environmentVariables": {
                        "type": "array",
                        "items": {"type": "object", "required": ["name"]},
                    },
                },
            },
        },
        "remotes": {"type": "array", "items": {"type": "object", "required": ["type", "url"]}},
    },
}
# The MCPB manifest's required shape (manifest spec 0.4).
MCPB_RULES: dict[str, Any] = {
    "type": "object",
    "required": ["manifest_version", "name", "version", "description", "author", "server"],
    "properties": {
        "author": {"type": "object", "required": ["name"]},
        "server": {
            "type": "object",
            "required": ["type", "entry_point", "mcp_config"],
            "properties": {
                "type": {"enum": ["python", "node", "binary", "uv"]},
                "mcp_config": {"type": "object", "required": ["command"]},
            },
        },
        "tools": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "user_config": {"type": "object"},
    },
}
KUBERNETES_VERSION = "1.30.0"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETTINGS_ENV = {f"DSMCP_{name.upper()}" for name in Settings.model_fields}
TOOLS = {tool["name"] for tool in json.loads((ROOT / "tests/bridge/tools_list.snapshot.json").read_text())}


def kubernetes_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((MANIFESTS / "kubernetes").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in kubernetes_objects() if doc["kind"] == kind]
    return found


def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("doc", kubernetes_objects(), ids=lambda d: f"{d['kind']}")
def test_kubernetes_objects_match_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_kit_is_complete_and_consistent() -> None:
    kinds = {doc["kind"] for doc in kubernetes_objects()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= kinds
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    env = {item["name"]: item for item in container["env"]}
    assert env["DSMCP_AUTH"]["value"] != "none" and set(env) <= SETTINGS_ENV
    secret = by_kind("Secret")
    assert env["DSMCP_SESSION_SECRET"]["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]
    for selector in (
        by_kind("Service")["spec"]["selector"],
        by_kind("PodDisruptionBudget")["spec"]["selector"],
    ):
        labels = selector.get("matchLabels", selector)
        assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert (
        by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    )


def test_placeholder_secrets_cannot_go_live() -> None:
    secret = by_kind("Secret")["stringData"]
    with pytest.raises(AuthConfigError):
        parse_api_keys(secret["api-keys"], "api-keys")
    assert len(secret["session-secret"].encode()) < 16  # SessionIdentity refuses it at start


def test_registry_server_json_matches_its_schema_and_the_package() -> None:
    server = json.loads((MANIFESTS / "server.json").read_text())
    validator(SERVER_JSON_RULES).validate(server)
    assert server["$schema"].endswith("/2025-12-11/server.schema.json")
    assert server["version"] == __version__
    (package,) = server["packages"]
    assert (package["identifier"], package["version"]) == (PROJECT["name"], __version__)
    assert {variable["name"] for variable in package["environmentVariables"]} <= SETTINGS_ENV


def test_server_json_rules_reject_what_the_registry_rejects() -> None:
    check = validator(SERVER_JSON_RULES)
    good = json.loads((MANIFESTS / "server.json").read_text())
    for bad in (
        {**good, "name": "no-namespace"},
        {**good, "description": "x" * 101},
        {**good, "packages": [{**good["packages"][0], "version": "latest"}]},
        {**good, "remotes": [{"type": "streamable-http"}]},
    ):
        assert not check.is_valid(bad)


def test_mcpb_manifest_matches_its_schema_and_the_server() -> None:
    manifest = json.loads((MANIFESTS / "mcpb" / "manifest.json").read_text())
    validator(MCPB_RULES).validate(manifest)
    assert manifest["version"] == __version__ and manifest["name"] == PROJECT["name"]
    assert {tool["name"] for tool in manifest["tools"]} == TOOLS
    assert set(manifest["server"]["mcp_config"]["env"]) <= SETTINGS_ENV
    assert (ROOT / manifest["server"]["entry_point"]).is_file()
    used = set(re.findall(r"\$\{user_config\.(\w+)\}", json.dumps(manifest["server"])))
    assert used == set(manifest["user_config"])


@pytest.mark.parametrize("path", sorted((MANIFESTS / "claude-desktop").glob("*.json")), ids=lambda p: p.name)
def test_claude_desktop_examples(path: Path) -> None:
    servers = json.loads(path.read_text())["mcpServers"]
    for server in servers.values():
        assert isinstance(server["command"], str) and all(isinstance(a, str) for a in server.get("args", []))
        assert {name for name in server.get("env", {}) if name.startswith("DSMCP_")} <= SETTINGS_ENV


def test_dockerfile_runs_the_bridge_as_non_root() -> None:
    dockerfile = (MANIFESTS / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\S+)", final_stage, re.M)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', final_stage, re.M)
    assert entrypoint and entrypoint.group(1) in PROJECT["scripts"]
    port = re.search(r"DSMCP_PORT=(\d+)", final_stage)
    assert port and f"EXPOSE {port.group(1)}" in final_stage and "/healthz" in final_stage
    assert "slim" in final_stage.splitlines()[0]


def test_bicep_grants_session_executor_and_configures_the_bridge() -> None:
    bicep = (MANIFESTS / "azure" / "main.bicep").read_text()
    for resource_type in ("Microsoft.App/sessionPools@", "Microsoft.App/containerApps@", "roleAssignments@"):
        assert resource_type in bicep
    assert "'0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0'" in bicep  # Azure ContainerApps Session Executor
    assert "scope: pool" in bicep and "principalId: identity.properties.principalId" in bicep
    assert "path: '/healthz'" in bicep and "path: '/readyz'" in bicep


def test_every_setting_a_manifest_names_exists() -> None:
    named = {
        name
        for path in MANIFESTS.rglob("*")
        if path.is_file()
        for name in re.findall(r"\bDSMCP_[A-Z0-9_]+", path.read_text())
    }
    assert named and named <= SETTINGS_ENV, named - SETTINGS_ENV
