"""Helpers for the Helm chart tests: render with the real Helm v4 engine (helm-python-sdk),
split the manifests into objects, and find pods/containers in them."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

__all__ = [
    "CHART_DIR",
    "CI_DIR",
    "INVALID_SCENARIOS",
    "KUBE_VERSIONS",
    "NAMESPACE",
    "RELEASE",
    "REPO_ROOT",
    "VALID_SCENARIOS",
    "Rendered",
    "all_containers",
    "decode_secret",
    "gateway_config",
    "load_scenario",
    "materialize",
    "pod_specs",
    "render",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "helm" / "switchboard"
CI_DIR = CHART_DIR / "ci"
RELEASE = "sb"
NAMESPACE = "agents"
# The chart's floor (native sidecars) and a current release.
KUBE_VERSIONS = ("1.29", "1.33")

VALID_SCENARIOS = sorted(p.name for p in CI_DIR.glob("*-values.yaml"))
INVALID_SCENARIOS = sorted(p.name for p in CI_DIR.glob("invalid-*.yaml"))


def load_scenario(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CI_DIR / name).read_text())
    return data or {}


class Rendered:
    """The objects of one render, addressable by kind (and name)."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.manifests = manifests
        self.objects: list[dict[str, Any]] = []
        self.notes = ""
        for template, text in sorted(manifests.items()):
            if template.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__template__", template)
                    self.objects.append(doc)

    def k8s_objects(self) -> Iterator[dict[str, Any]]:
        for obj in self.objects:
            yield {k: v for k, v in obj.items() if k != "__template__"}

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind)
                 if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        for c in all_containers(self.pod):
            if c["name"] == name:
                return c
        raise AssertionError(f"no container {name!r} in the gateway pod")


def render(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> Rendered:
    return Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE))


def pod_specs(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart creates: the Deployment's template and the test pod."""
    specs = [("Deployment", rendered.pod)]
    specs += [(f"Pod/{p['metadata']['name']}", p["spec"]) for p in rendered.of_kind("Pod")]
    return specs


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def gateway_config(rendered: Rendered) -> dict[str, Any]:
    cm = rendered.one("ConfigMap", f"{RELEASE}-switchboard")
    config: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return config


def decode_secret(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def _rebase(text: str, root: Path) -> str:
    """Point the container paths the chart uses into ``root``."""
    pattern = r"(?<![\w.-])(/etc/switchboard|/var/lib/switchboard|/tmp)(?![\w.-])"
    return re.sub(pattern, lambda m: f"{root}{m.group(1)}", text)


def materialize(
    rendered: Rendered,
    root: Path,
    *,
    external_secrets: dict[str, dict[str, str]] | None = None,
    listen: str | None = None,
) -> tuple[Path, dict[str, str], list[str]]:
    """Lay out what the gateway container would see, under ``root``: the config file, the
    secret files and policy files at their mount paths, the state and /tmp volumes, and the
    container's environment (downward API and secretKeyRef values resolved). Returns
    (config path, environment, container args with paths rebased)."""
    secrets: dict[str, dict[str, str]] = dict(external_secrets or {})
    for s in rendered.of_kind("Secret"):
        secrets[s["metadata"]["name"]] = {k: decode_secret(s, k) for k in s.get("data", {})}
    configmaps = {c["metadata"]["name"]: c for c in rendered.of_kind("ConfigMap")}
    pod = rendered.pod
    gw = rendered.container("gateway")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in gw["volumeMounts"]:
        target = Path(f"{root}{m['mountPath']}")
        vol = volumes[m["name"]]
        if "emptyDir" in vol or "persistentVolumeClaim" in vol:
            target.mkdir(parents=True, exist_ok=True)
            continue
        if "configMap" in vol:
            data = configmaps[vol["configMap"]["name"]]["data"]
        else:
            data = secrets[vol["secret"]["secretName"]]
            items = vol["secret"].get("items")
            if items and "subPath" not in m:
                data = {i["path"]: data[i["key"]] for i in items}
        if "subPath" in m:
            files = {target: data[m["subPath"]]}
        else:
            files = {target / key: value for key, value in data.items()}
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            text = _rebase(content, root) if path.name == "config.yaml" else content
            path.write_text(text)
    config = Path(f"{root}/etc/switchboard/config.yaml")
    if listen:
        raw = yaml.safe_load(config.read_text())
        raw["listen"] = listen
        config.write_text(yaml.safe_dump(raw))
    fields = {"metadata.name": "sb-switchboard-7d9f-abcde", "metadata.namespace": NAMESPACE,
              "spec.nodeName": "node-1"}
    env: dict[str, str] = {}
    for e in gw["env"]:
        if "value" in e:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), e["value"])
            env[e["name"]] = _rebase(value, root)
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    env["TMPDIR"] = f"{root}/tmp"
    return config, env, [_rebase(a, root) for a in gw["args"]]
