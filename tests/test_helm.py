"""The Helm chart lints and renders with the real Helm v4 engine for every ci/ scenario, every
rendered object is valid against the Kubernetes schemas, and bad values are refused with a
message naming the key."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm_support import (
    CHART_DIR,
    INVALID_SCENARIOS,
    KUBE_VERSIONS,
    NAMESPACE,
    REPO_ROOT,
    VALID_SCENARIOS,
    gateway_config,
    load_scenario,
    render,
)

# What each invalid scenario must be refused for: (exception, text the message must contain).
EXPECTED_REJECTIONS: dict[str, tuple[type[Exception], str]] = {
    "invalid-unknown-key.yaml": (helm_python.HelmValuesError,
                                 "additional properties 'replicas' not allowed"),
    "invalid-nested-unknown-key.yaml": (helm_python.HelmValuesError,
                                        "at '/opa/bundle': additional properties 'uri'"),
    "invalid-wrong-type.yaml": (helm_python.HelmValuesError,
                                "at '/replicaCount': got string, want integer"),
    "invalid-bad-enum.yaml": (helm_python.HelmValuesError,
                              "at '/policy/engine': value must be one of 'opa', 'embedded'"),
    "invalid-latest-tag.yaml": (helm_python.HelmValuesError, "at '/opa/image/tag'"),
    "invalid-sqlite-replicas.yaml": (helm_python.HelmRenderError,
                                     "several replicas need a shared idempotency store"),
}


@pytest.fixture(scope="module")
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


def test_scenarios_are_present() -> None:
    assert {"default-values.yaml", "embedded-values.yaml", "opa-bundle-values.yaml",
            "production-values.yaml"} <= set(VALID_SCENARIOS)
    assert set(INVALID_SCENARIOS) == set(EXPECTED_REJECTIONS)


def test_chart_metadata(chart: helm_python.Chart) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "switchboard"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert chart.schema is not None


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
def test_lint_strict(scenario: str) -> None:
    report = helm_python.lint(CHART_DIR, load_scenario(scenario), strict=True,
                              namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendered_objects_validate_against_kubernetes(
    chart: helm_python.Chart, scenario: str, kube: str
) -> None:
    rendered = render(chart, load_scenario(scenario))
    kinds = []
    for obj in rendered.k8s_objects():
        kubernetes_validate.validate(obj, kube, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE
        kinds.append(obj["kind"])
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Pod"} <= set(kinds)
    assert rendered.notes.strip(), "NOTES.txt rendered empty"


@pytest.mark.parametrize("scenario", INVALID_SCENARIOS)
def test_invalid_values_are_rejected(chart: helm_python.Chart, scenario: str) -> None:
    exc_type, text = EXPECTED_REJECTIONS[scenario]
    with pytest.raises(exc_type) as info:
        render(chart, load_scenario(scenario))
    assert text in str(info.value)


@pytest.mark.parametrize(
    "scenario",
    [s for s in INVALID_SCENARIOS if EXPECTED_REJECTIONS[s][0] is helm_python.HelmValuesError],
)
def test_lint_reports_invalid_values(scenario: str) -> None:
    # Helm's lint mode only logs `fail` from templates, so it can flag schema violations only.
    report = helm_python.lint(CHART_DIR, load_scenario(scenario), strict=True,
                              namespace=NAMESPACE, kube_version="v1.33.0")
    assert report["errors"], f"lint accepted {scenario}"


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ({"podLabels": {"app.kubernetes.io/component": "x"}}, "/podLabels"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"secrets": {"tokens": {"t": {"id": "a"}}}}, "/secrets/tokens/t"),
        ({"backends": [{"name": "Ledger", "openapi": "x.json"}]}, "/backends/0/name"),
        ({"backends": [{"name": "ledger"}]}, "/backends/0"),
        ({"audit": {"otlp": {"protocol": "thrift"}}}, "/audit/otlp/protocol"),
        ({"audit": {"digestKey": {"fromSecret": "yes"}}}, "/audit/digestKey/fromSecret"),
        ({"secrets": {"auditDigestKey": "too-short"}}, "/secrets/auditDigestKey"),
        ({"gateway": {"resources": {"limits": {"gpu": 1}}}}, "/gateway/resources/limits"),
        ({"networkPolicy": {"dns": {"podSelector": {"matchLabel": {}}}}},
         "/networkPolicy/dns/podSelector"),
    ],
)
def test_schema_rejects_more_bad_values(
    chart: helm_python.Chart, values: dict[str, Any], text: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.validate_schema(values)
    assert text in str(info.value)


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ({"autoscaling": {"enabled": True}}, "several replicas need a shared idempotency store"),
        ({"identity": {"tokens": {"enabled": False}}}, "enable identity.tokens or identity.jwt"),
        ({"identity": {"jwt": {"enabled": True}}}, "identity.jwt.enabled needs secrets.jwksUrl"),
        ({"idempotency": {"fromSecret": True}}, "needs secrets.idempotencyDsn"),
        ({"audit": {"digestKey": {"fromSecret": True}}}, "needs secrets.auditDigestKey"),
        ({"secrets": {"create": False}}, "set secrets.create=true or secrets.existingSecret"),
        ({"terminationGracePeriodSeconds": 12}, "terminationGracePeriodSeconds must exceed"),
        ({"policy": {"engine": "embedded"}, "opa": {"bundle": {"url": "https://b.example/x"}}},
         "opa.bundle.url needs policy.engine=opa"),
        ({"networkPolicy": {"enabled": True},
          "backends": [{"name": "ledger", "openapi": "http://l:8080/openapi.json"}]},
         'networkPolicy.enabled blocks backend "ledger"'),
        ({"networkPolicy": {"enabled": True}, "audit": {"otlp": {"endpoint": "http://c:4317"}}},
         "networkPolicy.enabled blocks the OTLP export"),
    ],
)
def test_render_refuses_unworkable_values(
    chart: helm_python.Chart, values: dict[str, Any], text: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as info:
        render(chart, values)
    assert text in str(info.value)


def _walk_schema(node: Any, path: str = "") -> list[str]:
    """Paths of object schemas that list properties but do not forbid others."""
    loose = []
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False:
            loose.append(path or "/")
        for key, child in node.items():
            loose += _walk_schema(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            loose += _walk_schema(child, f"{path}/{i}")
    return loose


def test_schema_is_strict_everywhere() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert _walk_schema(schema) == []
    assert schema["properties"]["policy"]["properties"]["engine"]["enum"] == ["opa", "embedded"]


def test_default_values_pass_the_schema(chart: helm_python.Chart) -> None:
    chart.validate_schema(chart.values)
    assert chart.values["policy"]["engine"] == "opa"


def test_every_values_key_is_commented() -> None:
    """Each key in values.yaml has a comment on the line above (except inside pass-through
    Kubernetes objects such as resources and label selectors)."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if "resources" in parents or "matchLabels" in (*parents, key):
            continue
        if not lines[i - 1].strip().startswith("#"):
            missing.append(".".join([*parents, key]))
    assert missing == []


def test_policies_copy_in_chart_is_in_sync() -> None:
    """helm/switchboard/policies mirrors policies/ (helm/sync-policies.sh keeps it so)."""
    src = REPO_ROOT / "policies"
    dst = CHART_DIR / "policies"

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert tree(src), "policies/ is empty"
    assert tree(dst) == tree(src), "stale chart copy: run helm/sync-policies.sh"
    check = subprocess.run([str(REPO_ROOT / "helm" / "sync-policies.sh"), "--check"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr


def test_sync_script_detects_and_repairs_drift(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "helm").mkdir(parents=True)
    script = repo / "helm" / "sync-policies.sh"
    script.write_bytes((REPO_ROOT / "helm" / "sync-policies.sh").read_bytes())
    script.chmod(0o755)
    (repo / "policies" / "switchboard").mkdir(parents=True)
    (repo / "policies" / "switchboard" / "routing.rego").write_text("package switchboard.routing\n")
    (repo / "helm" / "switchboard").mkdir()

    stale = subprocess.run([str(script), "--check"], capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "run helm/sync-policies.sh" in stale.stderr
    subprocess.run([str(script)], check=True, capture_output=True)
    copied = repo / "helm" / "switchboard" / "policies" / "switchboard" / "routing.rego"
    assert copied.read_text() == "package switchboard.routing\n"
    ok = subprocess.run([str(script), "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr


def test_rendered_config_is_yaml_with_the_gateway_keys(chart: helm_python.Chart) -> None:
    config = gateway_config(render(chart))
    assert set(config) == {"listen", "max_message_bytes", "identity", "policy", "backends",
                           "sandbox", "idempotency", "audit", "mcp"}
    assert config["listen"] == "0.0.0.0:50051"
    assert config["policy"] == {"engine": "opa", "opa_url": "http://127.0.0.1:8181",
                                "timeout_ms": 500}
    assert config["identity"] == {"tokens_file": "/etc/switchboard/secrets/tokens.yaml"}
    assert config["idempotency"]["dsn"] == "sqlite:////var/lib/switchboard/idempotency.db"
    assert config["audit"]["file"] == "/var/lib/switchboard/audit.jsonl"
    assert "otlp_endpoint" not in config["audit"]
    assert config["sandbox"] == {"workers": 2, "session_idle_s": 300, "max_sessions": 4,
                                 "max_sessions_per_principal": 2,
                                 "max_queued_per_principal": 64}
    assert yaml.safe_load(yaml.safe_dump(config)) == config


def test_gateway_processes_is_rendered_as_server_processes(chart: helm_python.Chart) -> None:
    """gateway.processes is the config's server.processes (left out at 1, the gateway's
    default); the chart's schema refuses 0 as the gateway's would."""
    from gateway.config import SCHEMA

    assert "server" not in gateway_config(render(chart))
    rendered = gateway_config(render(chart, {"gateway": {"processes": 3}}))["server"]
    assert rendered == {"processes": 3}
    jsonschema.Draft202012Validator(SCHEMA["properties"]["server"]).validate(rendered)
    with pytest.raises(helm_python.HelmValuesError):
        render(chart, {"gateway": {"processes": 0}})


def test_mcp_settings_are_rendered_into_the_config(chart: helm_python.Chart) -> None:
    """The chart's mcp.* values are gateway/config.py's mcp settings (McpSettings): each one
    set is rendered under its config name, each one left empty is left out (the gateway's
    default), and the rendered block passes the gateway's own config schema."""
    from gateway.config import SCHEMA, McpSettings

    default = gateway_config(render(chart))["mcp"]
    # The connection caps are always rendered: the chart's defaults are the gateway's.
    caps = McpSettings()
    assert default == {"enabled": False, "listen": "0.0.0.0:8765",
                       "max_connections_per_address": caps.max_connections_per_address,
                       "max_connections": caps.max_connections}
    values = {"mcp": {"enabled": True, "port": 9000,
                      "allowedHosts": ["switchboard.example.com:*", "10.0.0.7:9000"],
                      "allowedOrigins": ["https://app.example.com"],
                      "resourceUrl": "https://switchboard.example.com/mcp",
                      "maxConnectionsPerAddress": 0, "maxConnections": 4096}}
    mcp = gateway_config(render(chart, values))["mcp"]
    assert mcp == {"enabled": True, "listen": "0.0.0.0:9000",
                   "allowed_hosts": ["switchboard.example.com:*", "10.0.0.7:9000"],
                   "allowed_origins": ["https://app.example.com"],
                   "resource_url": "https://switchboard.example.com/mcp",
                   "max_connections_per_address": 0, "max_connections": 4096}
    # Every McpSettings field has a chart value, and nothing else is rendered.
    assert set(mcp) == set(McpSettings.__dataclass_fields__)
    assert set(mcp) == set(SCHEMA["properties"]["mcp"]["properties"])
    jsonschema.Draft202012Validator(SCHEMA["properties"]["mcp"]).validate(mcp)


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ({"mcp": {"allowedHosts": "host:*"}}, "at '/mcp/allowedHosts'"),
        ({"mcp": {"allowedHosts": ["has space"]}}, "at '/mcp/allowedHosts/0'"),
        ({"mcp": {"allowedOrigins": ["app.example.com"]}}, "at '/mcp/allowedOrigins/0'"),
        ({"mcp": {"resourceUrl": "switchboard/mcp"}}, "at '/mcp/resourceUrl'"),
        ({"mcp": {"maxConnections": 0}}, "at '/mcp/maxConnections'"),
        ({"mcp": {"maxConnectionsPerAddress": -1}}, "at '/mcp/maxConnectionsPerAddress'"),
        ({"mcp": {"protocolVersion": "2025-11-25"}}, "additional properties 'protocolVersion'"),
    ],
)
def test_schema_rejects_bad_mcp_values(
    chart: helm_python.Chart, values: dict[str, Any], text: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.validate_schema(values)
    assert text in str(info.value)


def test_mcp_origins_without_hosts_are_refused(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError) as info:
        render(chart, {"mcp": {"allowedOrigins": ["https://app.example.com"]}})
    assert "mcp.allowedOrigins needs mcp.allowedHosts" in str(info.value)


def test_packaged_chart_ships_policies_without_tests(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    """`helm package` keeps the Rego and data but drops *_test.rego (.helmignore), and the
    archive renders exactly like the directory."""
    archive = helm_python.package(CHART_DIR, destination=tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "switchboard/policies/switchboard/routing.rego" in names
    assert "switchboard/policies/switchboard/data.json" in names
    assert "switchboard/values.schema.json" in names
    assert not [n for n in names if n.endswith("_test.rego")]
    with helm_python.Chart.load(archive) as packaged:
        values = load_scenario("production-values.yaml")
        assert packaged.render(values, name="sb", namespace=NAMESPACE) == chart.render(
            values, name="sb", namespace=NAMESPACE)


def test_policy_workers_is_rendered_for_the_embedded_engine_only(
        chart: helm_python.Chart) -> None:
    """policy.workers is the config's policy.workers with engine embedded (the gateway's own
    schema accepts what is rendered); with opa it is not rendered (the sidecar decides); the
    chart's schema refuses what the gateway's would (0, 17, a string)."""
    from gateway.config import SCHEMA

    assert "workers" not in gateway_config(render(chart))["policy"]
    embedded = gateway_config(render(chart, {"policy": {"engine": "embedded"}}))["policy"]
    assert embedded["workers"] == 2
    four = gateway_config(render(chart, {"policy": {"engine": "embedded", "workers": 4}}))
    assert four["policy"]["workers"] == 4
    jsonschema.Draft202012Validator(SCHEMA["properties"]["policy"]).validate(four["policy"])
    for bad in (0, 17, "2", 2.5):
        with pytest.raises(helm_python.HelmValuesError) as info:
            chart.validate_schema({"policy": {"engine": "embedded", "workers": bad}})
        assert "/policy/workers" in str(info.value)
