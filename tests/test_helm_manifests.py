"""What a reviewer checks in the rendered manifests: hardening on every container, the OPA
sidecar, gRPC health probes, Services, NetworkPolicy egress, Secrets, and that editing the
Rego (then `helm upgrade`) rolls the pods."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from gateway.audit.telemetry import AuditSettings
from gateway.models import BackendSettings
from gateway.policy.base import PolicySettings
from gateway.policy.bundle import load_bundle
from gateway.policy.embedded import Evaluator
from gateway.sandbox.types import SandboxSettings
from gateway.tools.idempotency import IdempotencySettings
from tests.helm_support import (
    CHART_DIR,
    RELEASE,
    REPO_ROOT,
    VALID_SCENARIOS,
    Rendered,
    all_containers,
    decode_secret,
    gateway_config,
    load_scenario,
    pod_specs,
    render,
)

FULLNAME = f"{RELEASE}-switchboard"


@pytest.fixture(scope="module")
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


@pytest.fixture(scope="module")
def scenarios(chart: helm_python.Chart) -> dict[str, Rendered]:
    return {name: render(chart, load_scenario(name)) for name in VALID_SCENARIOS}


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
def test_every_container_is_hardened(scenarios: dict[str, Rendered], scenario: str) -> None:
    rendered = scenarios[scenario]
    for where, pod in pod_specs(rendered):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        assert "hostNetwork" not in pod and "hostPID" not in pod, where
        for c in all_containers(pod):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc["runAsUser"] == 10001, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["privileged"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (where, c["name"])
            assert c["resources"]["limits"]["memory"], (where, c["name"])
            image = c["image"]
            assert ":" in image.split("/")[-1] and not image.endswith(":latest"), image
    sa = rendered.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_writable_paths_are_volumes(scenarios: dict[str, Rendered]) -> None:
    rendered = scenarios["default-values.yaml"]
    mounts = {m["mountPath"]: m for m in rendered.container("gateway")["volumeMounts"]}
    assert set(mounts) >= {"/tmp", "/var/lib/switchboard", "/etc/switchboard/config.yaml",
                           "/etc/switchboard/secrets"}
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/var/lib/switchboard"]["name"]]
    for path in ("/etc/switchboard/config.yaml", "/etc/switchboard/secrets"):
        assert mounts[path]["readOnly"] is True
    env = {e["name"]: e for e in rendered.container("gateway")["env"]}
    assert env["DENO_DIR"]["value"].startswith("/tmp/")


def test_opa_is_a_native_sidecar_by_default(scenarios: dict[str, Rendered]) -> None:
    rendered = scenarios["default-values.yaml"]
    init = {c["name"]: c for c in rendered.pod["initContainers"]}
    opa = init["opa"]
    assert opa["restartPolicy"] == "Always"
    assert re.fullmatch(r"openpolicyagent/opa:\d+\.\d+\.\d+(-static)?", opa["image"])
    assert "run" in opa["args"] and "--server" in opa["args"]
    # The REST API (which can also write policies) is reachable from inside the pod only.
    assert "--addr=127.0.0.1:8181" in opa["args"]
    assert "--ignore=.*" in opa["args"] and opa["args"][-1] == "/policies"
    assert opa["startupProbe"]["httpGet"]["path"] == "/health"
    assert [p["containerPort"] for p in opa["ports"]] == [8282]
    assert set(_policy_tree(rendered, "opa", "/policies")) == {
        "switchboard/data.json", "switchboard/routing.rego"}
    assert [c["name"] for c in rendered.pod["containers"]] == ["gateway"]
    config = gateway_config(rendered)
    assert config["policy"]["engine"] == "opa"
    assert config["policy"]["opa_url"] == "http://127.0.0.1:8181"


def test_embedded_engine_has_no_sidecar(scenarios: dict[str, Rendered]) -> None:
    rendered = scenarios["embedded-values.yaml"]
    names = [c["name"] for c in all_containers(rendered.pod)]
    assert names == ["gateway"]
    assert not [o for o in rendered.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-opa")]
    tree = _policy_tree(rendered, "gateway", "/etc/switchboard/policies")
    assert "switchboard/routing.rego" in tree and "switchboard/data.json" in tree
    config = gateway_config(rendered)
    assert config["policy"] == {"engine": "embedded", "path": "/etc/switchboard/policies",
                                "timeout_ms": 500, "workers": 2}


def test_opa_bundle_replaces_the_policies_configmap(scenarios: dict[str, Rendered]) -> None:
    rendered = scenarios["opa-bundle-values.yaml"]
    assert [o["metadata"]["name"] for o in rendered.of_kind("ConfigMap")
            if o["metadata"]["name"].endswith("-policies")] == []
    opa = rendered.container("opa")
    assert "restartPolicy" not in opa  # a regular sidecar container in this scenario
    assert "/policies" not in opa["args"]
    assert opa["readinessProbe"]["httpGet"]["path"] == "/health?bundles"
    opa_config = yaml.safe_load(rendered.one("ConfigMap", f"{FULLNAME}-opa")["data"]["config.yaml"])
    assert opa_config["services"]["bundle-server"]["url"] == "https://bundles.example.com"
    assert opa_config["services"]["bundle-server"]["credentials"]["bearer"]["token_path"] == (
        "/var/run/secrets/opa-bundle/token")
    bundle = opa_config["bundles"]["switchboard"]
    assert bundle["resource"] == "/switchboard/bundle.tar.gz"
    assert bundle["polling"] == {"min_delay_seconds": 10, "max_delay_seconds": 60}
    assert opa_config["decision_logs"] == {"console": True}


def test_opa_never_ships_decisions_to_the_bundle_server(chart: helm_python.Chart) -> None:
    """With a bundle service and decision logs off, OPA must get no decision_logs section:
    one without console output makes OPA upload every decision to its first service."""
    values = load_scenario("opa-bundle-values.yaml")
    values["opa"]["decisionLogs"] = False
    rendered = render(chart, values)
    opa_config = yaml.safe_load(rendered.one("ConfigMap", f"{FULLNAME}-opa")["data"]["config.yaml"])
    assert "decision_logs" not in opa_config and "bundles" in opa_config
    default = render(chart)
    text = default.one("ConfigMap", f"{FULLNAME}-opa")["data"]["config.yaml"]
    assert yaml.safe_load(text) == {}


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
def test_gateway_probes_are_grpc_health(scenarios: dict[str, Rendered], scenario: str) -> None:
    gw = scenarios[scenario].container("gateway")
    grpc_port = next(p["containerPort"] for p in gw["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(gw[probe]) & {"httpGet", "exec", "tcpSocket"} == set(), probe
        assert gw[probe]["grpc"]["port"] == grpc_port, probe
    assert gw["livenessProbe"]["grpc"]["service"] == ""
    assert gw["readinessProbe"]["grpc"]["service"] == "switchboard.v1.Gateway"
    assert gw["args"] == ["serve", "--config", "/etc/switchboard/config.yaml"]
    sleep = gw["lifecycle"]["preStop"]["exec"]["command"]
    grace = scenarios[scenario].pod["terminationGracePeriodSeconds"]
    assert sleep[0] == "sleep" and int(sleep[1]) + 10 < grace


def test_services_and_ports(scenarios: dict[str, Rendered]) -> None:
    svc = scenarios["default-values.yaml"].one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "grpc", "port": 50051, "targetPort": "grpc",
                                     "protocol": "TCP", "appProtocol": "grpc"}]
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"
    embedded = scenarios["embedded-values.yaml"]
    assert [p["name"] for p in embedded.one("Service")["spec"]["ports"]] == ["grpc", "mcp"]
    assert [p["name"] for p in embedded.container("gateway")["ports"]] == ["grpc", "mcp"]
    assert gateway_config(embedded)["mcp"] == {"enabled": True, "listen": "0.0.0.0:8765",
                                               "max_connections_per_address": 64,
                                               "max_connections": 1024}


def test_helm_test_pod_checks_grpc_health(scenarios: dict[str, Rendered]) -> None:
    pod = scenarios["default-values.yaml"].one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    commands = [c["command"] for c in pod["spec"]["containers"]]
    addr = f"-addr={FULLNAME}.agents.svc:50051"
    assert all(addr in cmd for cmd in commands)
    assert sorted(next(a for a in cmd if a.startswith("-service=")) for cmd in commands) == [
        "-service=", "-service=switchboard.v1.Gateway"]


def test_production_scales_out_safely(scenarios: dict[str, Rendered]) -> None:
    rendered = scenarios["production-values.yaml"]
    assert "replicas" not in rendered.deployment["spec"]  # the HPA owns the replica count
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"] == rendered.deployment["spec"]["selector"][
        "matchLabels"]
    assert rendered.of_kind("Secret") == []  # existingSecret
    config = gateway_config(rendered)
    assert config["idempotency"]["dsn"] == "${SWITCHBOARD_IDEMPOTENCY_DSN}"
    assert config["audit"]["otlp_endpoint"] == "http://otel-collector.observability.svc:4317"
    assert config["identity"]["jwt"]["jwks_url"] == "${SWITCHBOARD_JWKS_URL}"
    assert "@sha256:" in rendered.container("gateway")["image"]


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
def test_every_config_env_reference_is_provided(
    scenarios: dict[str, Rendered], scenario: str
) -> None:
    """Each ${VAR} in the config is set on the gateway container (else the gateway refuses
    to start); secret-backed ones point at the Secret the chart uses."""
    rendered = scenarios[scenario]
    text = rendered.one("ConfigMap", FULLNAME)["data"]["config.yaml"]
    env = {e["name"]: e for e in rendered.container("gateway")["env"]}
    secret_name = load_scenario(scenario).get("secrets", {}).get("existingSecret") or FULLNAME
    for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
        assert var in env, var
        if var.startswith("SWITCHBOARD_"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == secret_name


def test_networkpolicy_limits_egress(scenarios: dict[str, Rendered]) -> None:
    rendered = scenarios["production-values.yaml"]
    np = rendered.one("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["podSelector"]["matchLabels"] == rendered.deployment["spec"]["selector"][
        "matchLabels"]
    [ingress] = np["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE,
                                            "app.kubernetes.io/component": "helm-test"}}
            } in ingress["from"]
    egress = np["spec"]["egress"]
    for rule in egress:  # no allow-all rule: every rule names its peers and its ports
        assert rule.get("to") and rule.get("ports"), rule
        for peer in rule["to"]:
            assert peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0"), peer
    ports = sorted({p["port"] for r in egress for p in r["ports"]})
    assert ports == [53, 443, 4317, 8080]
    ledger = next(r for r in egress if {"port": 8080, "protocol": "TCP"} in r["ports"])
    assert ledger["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}},
        "podSelector": {"matchLabels": {"app": "ledger"}}}]
    collector = next(r for r in egress if r["ports"] == [{"port": 4317, "protocol": "TCP"}])
    assert collector["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "observability"}
    assert scenarios["default-values.yaml"].of_kind("NetworkPolicy") == []


def test_secret_carries_the_token_table(chart: helm_python.Chart) -> None:
    tokens = {"tok-1": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]}}
    rendered = render(chart, {"secrets": {"tokens": tokens, "jwksUrl": "https://idp/jwks",
                                          "idempotencyDsn": "postgresql://u:p@db/sb"},
                              "identity": {"jwt": {"enabled": True}},
                              "idempotency": {"fromSecret": True}})
    secret = rendered.one("Secret")
    assert yaml.safe_load(decode_secret(secret, "tokens.yaml")) == tokens
    assert decode_secret(secret, "jwks-url") == "https://idp/jwks"
    assert decode_secret(secret, "idempotency-dsn") == "postgresql://u:p@db/sb"
    config_text = rendered.one("ConfigMap", FULLNAME)["data"]["config.yaml"]
    assert "postgresql://" not in config_text and "tok-1" not in config_text


def test_the_audit_digest_key_comes_from_the_secret(chart: helm_python.Chart) -> None:
    key = "0123456789abcdef" * 4
    rendered = render(chart, {"secrets": {"auditDigestKey": key},
                              "audit": {"digestKey": {"fromSecret": True}}})
    assert decode_secret(rendered.one("Secret"), "audit-digest-key") == key
    env = {e["name"]: e for e in rendered.container("gateway")["env"]}
    assert env["SWITCHBOARD_AUDIT_DIGEST_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME, "key": "audit-digest-key"}
    assert key not in rendered.one("ConfigMap", FULLNAME)["data"]["config.yaml"]
    # Off by default: no variable, no key in the Secret (the gateway warns and uses its own).
    plain = render(chart, {})
    assert "SWITCHBOARD_AUDIT_DIGEST_KEY" not in {
        e["name"] for e in plain.container("gateway")["env"]}
    assert "audit-digest-key" not in (plain.one("Secret").get("data") or {})


def _policy_tree(rendered: Rendered, container: str = "opa",
                 root: str = "/policies") -> dict[str, str]:
    """The policy files a container sees: relative path -> content, from its mounts."""
    cm = rendered.one("ConfigMap", f"{FULLNAME}-policies")
    volume = next(v for v in rendered.pod["volumes"] if v["name"] == "policies")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    tree = {}
    for m in rendered.container(container)["volumeMounts"]:
        if m["name"] != "policies":
            continue
        # One file per mount (real directories, no ..data symlinks to walk through).
        assert m["readOnly"] is True and m["subPath"] in cm["data"], m
        assert m["mountPath"].startswith(root + "/"), m
        tree[m["mountPath"][len(root) + 1:]] = cm["data"][m["subPath"]]
    return tree


def test_policies_configmap_reproduces_policies_dir(scenarios: dict[str, Rendered]) -> None:
    tree = _policy_tree(scenarios["default-values.yaml"])
    root = REPO_ROOT / "policies"
    expected = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*")
                if p.is_file() and not p.name.endswith("_test.rego")}
    assert tree == expected  # byte-exact, same layout (data.json stays under switchboard/)
    assert "switchboard/routing.rego" in tree


def _checksums(rendered: Rendered) -> dict[str, str]:
    annotations: dict[str, str] = rendered.deployment["spec"]["template"]["metadata"][
        "annotations"]
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


def test_editing_rego_rolls_the_pods(tmp_path: Path) -> None:
    """Edit a policy in a copy of the chart: only checksum/policies changes, so `helm upgrade`
    replaces the pods and the new Rego takes effect."""
    copy = tmp_path / "switchboard"
    shutil.copytree(CHART_DIR, copy)
    with helm_python.Chart.load(copy) as before_chart:
        before = render(before_chart)
    rego = copy / "policies" / "switchboard" / "routing.rego"
    rego.write_text(rego.read_text() + "\n# tightened by security\n")
    with helm_python.Chart.load(copy) as after_chart:
        after = render(after_chart)
    b, a = _checksums(before), _checksums(after)
    assert set(b) == {"checksum/config", "checksum/policies", "checksum/secret"}
    assert a["checksum/policies"] != b["checksum/policies"]
    assert a["checksum/config"] == b["checksum/config"]
    assert a["checksum/secret"] == b["checksum/secret"]
    assert _policy_tree(after)["switchboard/routing.rego"].endswith("# tightened by security\n")


def test_checksums_follow_values(chart: helm_python.Chart) -> None:
    base = _checksums(render(chart))
    extra_policy = _checksums(render(chart, {"policy": {"files": {
        "switchboard/extra.rego": "package switchboard.extra\n"}}}))
    assert extra_policy["checksum/policies"] != base["checksum/policies"]
    config = _checksums(render(chart, {"policy": {"timeoutMs": 250}}))
    assert config["checksum/config"] != base["checksum/config"]
    assert config["checksum/policies"] == base["checksum/policies"]
    secret = _checksums(render(chart, {"secrets": {"tokens": {"t": {"id": "a", "tenant": "b"}}}}))
    assert secret["checksum/secret"] != base["checksum/secret"]


def test_policy_files_value_adds_files(chart: helm_python.Chart) -> None:
    values: dict[str, Any] = {"policy": {"files": {
        "switchboard/extra.rego": "package switchboard.extra\n"}}}
    tree = _policy_tree(render(chart, values))
    assert tree["switchboard/extra.rego"] == "package switchboard.extra\n"
    assert "switchboard/routing.rego" in tree


def _materialize(tree: dict[str, str], root: Path) -> Path:
    """Lay the files out as the kubelet's per-file subPath mounts do."""
    for rel, content in tree.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return root


def _decide(evaluator: Evaluator, roles: list[str], kind: str, operation: str) -> str:
    backend = operation.split(".")[0]
    tags = ["payments"] if operation == "ledger.create_transfer" else []
    decision = evaluator.decide({
        "principal": {"id": "p1", "tenant": "demo", "roles": roles},
        "action": {"kind": kind, "operation": operation},
        "operation": {"name": operation, "backend": backend, "tags": tags,
                      "method": "POST", "path": "/x"},
        "context": {"time_ns": 0, "labels": {}},
    })
    return decision.route


def test_embedded_engine_routes_with_the_mounted_policies(
    scenarios: dict[str, Rendered], tmp_path: Path
) -> None:
    """The files exactly as the gateway container sees them load into the real embedded
    engine (data.json under data.switchboard) and route as the policy says."""
    tree = _policy_tree(scenarios["embedded-values.yaml"], "gateway", "/etc/switchboard/policies")
    evaluator = Evaluator(load_bundle(_materialize(tree, tmp_path / "policies")))
    assert _decide(evaluator, ["agent", "finance"], "tool", "ledger.create_transfer") == "tool"
    assert _decide(evaluator, ["agent"], "tool", "ledger.create_transfer") == "deny"
    assert _decide(evaluator, ["agent"], "host_call", "ledger.create_transfer") == "deny"
    assert _decide(evaluator, ["agent"], "code", "") == "code"


def test_policy_override_changes_routing(chart: helm_python.Chart, tmp_path: Path) -> None:
    """A Rego change shipped through the chart (policy.files) changes the decisions."""
    data = json.loads((REPO_ROOT / "policies" / "switchboard" / "data.json").read_text())
    data["channels"]["code"] = ["code-runner"]  # agents lose the code channel
    rendered = render(chart, {"policy": {"engine": "embedded", "files": {
        "switchboard/data.json": json.dumps(data)}}})
    tree = _policy_tree(rendered, "gateway", "/etc/switchboard/policies")
    evaluator = Evaluator(load_bundle(_materialize(tree, tmp_path / "policies")))
    assert _decide(evaluator, ["agent"], "code", "") == "deny"
    assert _decide(evaluator, ["code-runner"], "code", "") == "code"


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
def test_rendered_config_keys_are_gateway_settings(
    scenarios: dict[str, Rendered], scenario: str
) -> None:
    """The gateway rejects unknown config keys: every key the chart writes must be a field
    of the settings the gateway builds from that section."""
    config = gateway_config(scenarios[scenario])
    assert set(config) <= {"listen", "max_message_bytes", "max_concurrent_rpcs", "identity",
                           "policy", "backends", "sandbox", "idempotency", "audit", "mcp"}
    sections: dict[str, type] = {"policy": PolicySettings, "sandbox": SandboxSettings,
                                 "idempotency": IdempotencySettings, "audit": AuditSettings}
    for section, settings in sections.items():
        assert set(config[section]) <= {f.name for f in fields(settings)}, section
    for backend in config["backends"]:
        assert set(backend) <= {f.name for f in fields(BackendSettings)}, backend
    assert set(config["identity"]) <= {"tokens", "tokens_file", "jwt"}
    assert set(config["identity"].get("jwt", {})) <= {"jwks_url", "issuer", "audience"}
    assert set(config["mcp"]) == {"enabled", "listen", "max_connections_per_address",
                                  "max_connections"}
    assert config["policy"]["engine"] in ("opa", "embedded")
    assert config["audit"].get("otlp_protocol", "grpc") in ("grpc", "http/protobuf")
